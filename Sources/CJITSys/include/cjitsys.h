/* Small Linux calls the Swift overlay does not expose (eventfd, SO_PEERCRED's struct ucred). */
#ifndef CJITSYS_H
#define CJITSYS_H
#include <sys/types.h>

/** An eventfd, close-on-exec and non-blocking; -1 with errno on failure. */
int cjit_eventfd(void);

/** The peer of a connected Unix socket, as the kernel recorded it at connect(). 0 or -1 with errno. */
int cjit_peercred(int fd, pid_t *pid, uid_t *uid, gid_t *gid);

/** accept4 with SOCK_CLOEXEC; the new fd or -1. */
int cjit_accept(int fd);

/** Writes `len` bytes gzip-compressed to a new file `path` (mode 0600, O_EXCL), fsynced. 0 or -1 with errno. */
int cjit_gz_write_new(const char *path, const void *data, size_t len);

/** Reads a gzip file whole into a malloc'ed buffer (at most `max` bytes). 0 or -1 with errno. */
int cjit_gz_read(const char *path, size_t max, char **out, size_t *outlen);

#endif
