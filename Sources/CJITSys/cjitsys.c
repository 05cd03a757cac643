#define _GNU_SOURCE
#include "cjitsys.h"
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
