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

#endif
