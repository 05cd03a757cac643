#define _GNU_SOURCE
#include "cjitsys.h"
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>
#include <sys/eventfd.h>
#include <stddef.h>
#include <sys/socket.h>

int cjit_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

int cjit_peercred(int fd, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cr;
    socklen_t len = sizeof(cr);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0) return -1;
    if (len != sizeof(cr)) return -1;
    *pid = cr.pid;
    *uid = cr.uid;
    *gid = cr.gid;
    return 0;
}

int cjit_accept(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

int cjit_gz_write_new(const char *path, const void *data, size_t len) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    int keep = dup(fd);
    if (keep < 0) { close(fd); unlink(path); return -1; }
    gzFile gz = gzdopen(fd, "wb9");
    if (gz == NULL) { close(fd); close(keep); unlink(path); errno = ENOMEM; return -1; }
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        unsigned chunk = left > (1u << 30) ? (1u << 30) : (unsigned)left;
        int n = gzwrite(gz, p, chunk);
        if (n <= 0) { gzclose(gz); close(keep); unlink(path); errno = EIO; return -1; }
        p += n;
        left -= (size_t)n;
    }
    if (gzclose(gz) != Z_OK) { close(keep); unlink(path); errno = EIO; return -1; }
    if (fsync(keep) != 0) { int e = errno; close(keep); unlink(path); errno = e; return -1; }
    close(keep);
    return 0;
}

int cjit_gz_read(const char *path, size_t max, char **out, size_t *outlen) {
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    gzFile gz = gzdopen(fd, "rb");
    if (gz == NULL) { close(fd); errno = ENOMEM; return -1; }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    if (buf == NULL) { gzclose(gz); errno = ENOMEM; return -1; }
    for (;;) {
        if (len == cap) {
            if (cap >= max) { free(buf); gzclose(gz); errno = EFBIG; return -1; }
            cap *= 2;
            char *nb = realloc(buf, cap);
            if (nb == NULL) { free(buf); gzclose(gz); errno = ENOMEM; return -1; }
            buf = nb;
        }
        int n = gzread(gz, buf + len, (unsigned)(cap - len));
        if (n < 0) { free(buf); gzclose(gz); errno = EIO; return -1; }
        if (n == 0) break;
        len += (size_t)n;
    }
    gzclose(gz);
    *out = buf;
    *outlen = len;
    return 0;
}
