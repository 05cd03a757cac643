/*
 * jit_client.c - talking to jitd like SSSD's client side talks to sssd:
 * check the socket and the peer are root's, keep the fd off 0-2 with
 * FD_CLOEXEC, bound every step with poll() and a deadline, never raise
 * SIGPIPE, refuse oversized frames. No global state.
 */
#define _GNU_SOURCE /* struct ucred */
#include "jit_client.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	if (err == NULL || errlen == 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int ms_left(long long deadline)
{
	long long left = deadline - now_ms();
	if (left < 0)
		return 0;
	return left > 3600000 + JIT_WAIT_GRACE_MS ? 3600000 + JIT_WAIT_GRACE_MS : (int)left;
}

/* Waits for events on fd until deadline, and for watch (if >= 0) to hang up.
 * 1 ready, 0 timeout, JIT_E_INTR, JIT_E_GONE, or -errno. */
static int wait_fd_watching(int fd, short events, long long deadline, int intr_aborts, int watch)
{
	for (;;) {
		struct pollfd p[2] = {
			{ .fd = fd, .events = events, .revents = 0 },
			{ .fd = watch, .events = POLLRDHUP, .revents = 0 },
		};
		int left = ms_left(deadline);
		int n = poll(p, watch >= 0 ? 2 : 1, left);
		if (n > 0 && watch >= 0 && p[1].revents != 0) {
			if (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR))
				return JIT_E_GONE;
			watch = -1; /* POLLNVAL: nothing to watch any more */
			if (p[0].revents == 0)
				continue;
		}
		if (n > 0)
			return 1;
		if (n == 0)
			return 0;
		if (errno != EINTR)
			return -errno;
		if (intr_aborts)
			return JIT_E_INTR;
		if (left == 0)
			return 0;
	}
}

static int wait_fd(int fd, short events, long long deadline, int intr_aborts)
{
	return wait_fd_watching(fd, events, deadline, intr_aborts, -1);
}

static int open_socket(const char *path, long long deadline, int *out, char *err, size_t errlen)
{
	struct sockaddr_un sa;
	struct stat st;
	int fd = -1;

	*out = -1;
	if (path[0] != '/' || strlen(path) >= sizeof(sa.sun_path)) {
		set_err(err, errlen, "socket path %s is not absolute or too long", path);
		return JIT_E_ARG;
	}
	if (lstat(path, &st) != 0) {
		set_err(err, errlen, "cannot reach the agent at %s: %s", path, strerror(errno));
		return JIT_E_UNREACHABLE;
	}
	if (S_ISLNK(st.st_mode)) {
		set_err(err, errlen, "refusing %s: it is a symbolic link", path);
		return JIT_E_INSECURE;
	}
	if (!S_ISSOCK(st.st_mode)) {
		set_err(err, errlen, "refusing %s: it is not a socket", path);
		return JIT_E_INSECURE;
	}
	if (st.st_uid != 0) {
		set_err(err, errlen, "refusing %s: owned by uid %u, not root", path, (unsigned)st.st_uid);
		return JIT_E_INSECURE;
	}

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		set_err(err, errlen, "socket(): %s", strerror(errno));
		return JIT_E_UNREACHABLE;
	}
	if (fd <= 2) {
		/* Never leave our fd on stdin/stdout/stderr of sshd or sudo. */
		int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
		int saved = errno;
		close(fd);
		if (nfd < 0) {
			set_err(err, errlen, "fcntl(F_DUPFD_CLOEXEC): %s", strerror(saved));
			return JIT_E_UNREACHABLE;
		}
		fd = nfd;
	}
	int fl = fcntl(fd, F_GETFD);
	if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0) {
		set_err(err, errlen, "fcntl(FD_CLOEXEC): %s", strerror(errno));
		close(fd);
		return JIT_E_UNREACHABLE;
	}
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		set_err(err, errlen, "fcntl(O_NONBLOCK): %s", strerror(errno));
		close(fd);
		return JIT_E_UNREACHABLE;
	}

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	for (;;) {
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN && ms_left(deadline) > 0) {
			/* AF_UNIX: the listen backlog is full; try again shortly. */
			struct timespec ts = { 0, 20 * 1000 * 1000 };
			nanosleep(&ts, NULL);
			continue;
		}
		set_err(err, errlen, "cannot connect to the agent at %s: %s", path, strerror(errno));
		close(fd);
		return JIT_E_UNREACHABLE;
	}

	struct ucred cred;
	socklen_t clen = sizeof(cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 || clen != sizeof(cred)) {
		set_err(err, errlen, "SO_PEERCRED on %s: %s", path, strerror(errno));
		close(fd);
		return JIT_E_INSECURE;
	}
	if (cred.uid != 0) {
		set_err(err, errlen, "refusing the agent at %s: its process runs as uid %u, not root",
			path, (unsigned)cred.uid);
		close(fd);
		return JIT_E_INSECURE;
	}
	*out = fd;
	return JIT_OK;
}

static int send_all(int fd, const char *buf, size_t len, long long deadline, int intr_aborts,
		    char *err, size_t errlen)
{
	size_t off = 0;
	while (off < len) {
		int w = wait_fd(fd, POLLOUT, deadline, intr_aborts);
		if (w == JIT_E_INTR)
			return JIT_E_INTR;
		if (w <= 0) {
			set_err(err, errlen, "sending to the agent: %s",
				w == 0 ? "timed out" : strerror(-w));
			return JIT_E_UNREACHABLE;
		}
		ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			set_err(err, errlen, "sending to the agent: %s", strerror(errno));
			return JIT_E_UNREACHABLE;
		}
		off += (size_t)n;
	}
	return JIT_OK;
}

static int recv_all(int fd, char *buf, size_t len, long long deadline, int intr_aborts, int watch,
		    char *err, size_t errlen)
{
	size_t off = 0;
	while (off < len) {
		int w = wait_fd_watching(fd, POLLIN, deadline, intr_aborts, watch);
		if (w == JIT_E_INTR)
			return JIT_E_INTR;
		if (w == JIT_E_GONE) {
			set_err(err, errlen, "the client connection closed while waiting");
			return JIT_E_GONE;
		}
		if (w <= 0) {
			set_err(err, errlen, "reading from the agent: %s",
				w == 0 ? "no reply in time" : strerror(-w));
			return JIT_E_UNREACHABLE;
		}
		ssize_t n = recv(fd, buf + off, len - off, 0);
		if (n == 0) {
			set_err(err, errlen, "the agent closed the connection before replying");
			return JIT_E_UNREACHABLE;
		}
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			set_err(err, errlen, "reading from the agent: %s", strerror(errno));
			return JIT_E_UNREACHABLE;
		}
		off += (size_t)n;
	}
	return JIT_OK;
}

int jit_call(const char *path, struct jit_req *req, int reply_ms, int intr_aborts,
	     struct jit_reply *rep, char *err, size_t errlen)
{
	return jit_call_watching(path, req, reply_ms, intr_aborts, -1, rep, err, errlen);
}

int jit_call_watching(const char *path, struct jit_req *req, int reply_ms, int intr_aborts,
		      int watch_fd, struct jit_reply *rep, char *err, size_t errlen)
{
	int fd = -1, rc;
	char *body = NULL;
	unsigned char hdr[4];
	uint32_t blen = 0;

	memset(rep, 0, sizeof(*rep));
	size_t flen = jit_req_finish(req);
	if (flen == 0) {
		set_err(err, errlen, "request too large to send");
		return JIT_E_ARG;
	}
	rc = open_socket(path, now_ms() + JIT_IO_TIMEOUT_MS, &fd, err, errlen);
	if (rc != JIT_OK)
		goto out;
	rc = send_all(fd, req->buf, flen, now_ms() + JIT_IO_TIMEOUT_MS, intr_aborts, err, errlen);
	if (rc != JIT_OK)
		goto out;

	long long deadline = now_ms() + reply_ms;
	rc = recv_all(fd, (char *)hdr, sizeof(hdr), deadline, intr_aborts, watch_fd, err, errlen);
	if (rc != JIT_OK)
		goto out;
	rc = jit_frame_len(hdr, &blen);
	if (rc != JIT_OK) {
		/* Announced more than we accept: do not read it, just hang up. */
		set_err(err, errlen, "the agent announced a reply of %u bytes (limit %u)",
			(unsigned)(((uint32_t)hdr[0] << 24) | ((uint32_t)hdr[1] << 16) |
				   ((uint32_t)hdr[2] << 8) | hdr[3]),
			JIT_MAX_FRAME);
		goto out;
	}
	body = malloc(blen);
	if (body == NULL) {
		rc = JIT_E_NOMEM;
		set_err(err, errlen, "out of memory");
		goto out;
	}
	rc = recv_all(fd, body, blen, deadline, intr_aborts, watch_fd, err, errlen);
	if (rc != JIT_OK)
		goto out;
	rc = jit_reply_parse(body, blen, rep);
	if (rc == JIT_E_VERSION)
		set_err(err, errlen, "the agent does not speak JIT/1");
	else if (rc != JIT_OK)
		set_err(err, errlen, "malformed reply from the agent");
out:
	if (body != NULL) {
		explicit_bzero(body, blen);
		free(body);
	}
	if (fd >= 0)
		close(fd);
	return rc;
}
