/*
 * fake_agent.c - a misbehaving stand-in for jitd, for the module's tests.
 *
 *   fake_agent --socket PATH [--check MODE] [--wait MODE] [--wait-delay-ms N]
 *              [--session MODE] [--log FILE] [--ready-fd FD] [--drop-uid UID]
 *
 * check MODE: allow ignore deny pending file (deny when file=0, pending when
 *   file=1) error error2 extras long ctrl hang close garbage junk big version
 *   zero partial dup noid maybe fleet (pending with the control plane's id) fleetbad
 * wait MODE: allow deny pending hang close
 * session MODE: ok error hang
 *
 * One forked child per connection, so a hanging connection never blocks the
 * next one. Every request body is appended to the log as one line
 * ("REQ ..." with newlines shown as " | "); a wait whose client goes away
 * before the reply logs "EVENT wait-cancelled request=ID". Run it in its own
 * process group and kill the group.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct cfg {
	const char *socket, *check, *wait, *session, *log;
	int wait_delay_ms, ready_fd;
	long drop_uid;
};

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void logline(const struct cfg *c, const char *fmt, const char *a, size_t alen)
{
	if (c->log == NULL)
		return;
	char line[8192];
	size_t o = 0;
	for (const char *p = fmt; *p && o < sizeof(line) - 2; p++) {
		if (*p == '@') {
			for (size_t i = 0; i < alen && o < sizeof(line) - 4; i++) {
				if (a[i] == '\n') {
					memcpy(line + o, " | ", 3);
					o += 3;
				} else {
					line[o++] = a[i];
				}
			}
		} else {
			line[o++] = *p;
		}
	}
	line[o++] = '\n';
	int fd = open(c->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd >= 0) {
		(void)!write(fd, line, o);
		close(fd);
	}
}

static int read_n(int fd, char *buf, size_t n)
{
	size_t off = 0;
	while (off < n) {
		ssize_t r = read(fd, buf + off, n - off);
		if (r <= 0)
			return -1;
		off += (size_t)r;
	}
	return 0;
}

static void write_all(int fd, const char *buf, size_t n)
{
	size_t off = 0;
	while (off < n) {
		ssize_t w = send(fd, buf + off, n - off, MSG_NOSIGNAL);
		if (w <= 0)
			return;
		off += (size_t)w;
	}
}

static void send_frame(int fd, const char *body, size_t n)
{
	unsigned char hdr[4] = { (unsigned char)(n >> 24), (unsigned char)(n >> 16),
				 (unsigned char)(n >> 8), (unsigned char)n };
	write_all(fd, (const char *)hdr, 4);
	write_all(fd, body, n);
}

static void reply(int fd, const char *body)
{
	send_frame(fd, body, strlen(body));
}

static void hang(void)
{
	for (;;)
		pause();
}

static const char *field(const char *body, const char *key, char *out, size_t outsz)
{
	size_t klen = strlen(key);
	for (const char *p = body; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
		if (strncmp(p, key, klen) == 0 && p[klen] == '=') {
			const char *v = p + klen + 1;
			size_t n = strcspn(v, "\n");
			if (n >= outsz)
				n = outsz - 1;
			memcpy(out, v, n);
			out[n] = '\0';
			return out;
		}
	}
	return NULL;
}

static void answer_check(const struct cfg *c, int fd, const char *body)
{
	const char *m = c->check;
	char file[8] = "";
	field(body, "file", file, sizeof(file));
	if (strcmp(m, "file") == 0)
		m = strcmp(file, "1") == 0 ? "pending" : "deny";

	if (strcmp(m, "allow") == 0)
		reply(fd, "JIT/1 ok\ndecision=allow\ngrant=5\nexpires_at=2030-01-01T00:00:00Z\n"
			  "message=Grant 5 is active until 2030-01-01T00:00:00Z.\n");
	else if (strcmp(m, "ignore") == 0)
		reply(fd, "JIT/1 ok\ndecision=ignore\nmessage=Not gated.\n");
	else if (strcmp(m, "deny") == 0)
		reply(fd, "JIT/1 ok\ndecision=deny\nmessage=No grant covers sshd: run jit request.\n");
	else if (strcmp(m, "pending") == 0)
		reply(fd, "JIT/1 ok\ndecision=pending\nrequest=42\nexpires_at=2030-01-01T00:00:00Z\n"
			  "message=Request 42 is waiting for approval.\n");
	else if (strcmp(m, "error") == 0)
		reply(fd, "JIT/1 error\ncode=internal\nmessage=The database is locked; try again.\n");
	else if (strcmp(m, "error2") == 0)
		reply(fd, "JIT/1 error\ncode=unauthorized\nmessage=Only root may ask for others.\n");
	else if (strcmp(m, "extras") == 0)
		reply(fd, "JIT/1 ok\nfuture_key=x%25y\ndecision=allow\ngrant=5\nmessage=ok\n.\n"
			  "decision=deny\nid=1\n.\ndecision=deny\n");
	else if (strcmp(m, "long") == 0) {
		static char big[12000];
		size_t o = (size_t)snprintf(big, sizeof(big), "JIT/1 ok\ndecision=deny\nmessage=");
		while (o < sizeof(big) - 2)
			big[o++] = 'x';
		big[o++] = '\n';
		send_frame(fd, big, o);
	} else if (strcmp(m, "ctrl") == 0)
		reply(fd, "JIT/1 ok\ndecision=deny\nmessage=%1B[2J%1B]0;pwned%07evil%0D%0Aroot# "
			  "\xe2\x80\xae" "desrever \xc2\x9b" "31m end\n");
	else if (strcmp(m, "hang") == 0)
		hang();
	else if (strcmp(m, "close") == 0)
		return;
	else if (strcmp(m, "garbage") == 0)
		{ const char *g = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"; write_all(fd, g, strlen(g)); }
	else if (strcmp(m, "junk") == 0)
		reply(fd, "JIT/1 ok\ndecision allow\n");
	else if (strcmp(m, "big") == 0) {
		size_t n = 1u << 20;
		char *b = malloc(n);
		if (b == NULL)
			return;
		memset(b, 'A', n);
		memcpy(b, "JIT/1 ok\ndecision=allow\nmessage=", 33);
		b[n - 1] = '\n';
		send_frame(fd, b, n);
		free(b);
	} else if (strcmp(m, "version") == 0)
		reply(fd, "JIT/2 ok\ndecision=allow\n");
	else if (strcmp(m, "zero") == 0)
		write_all(fd, "\0\0\0\0", 4);
	else if (strcmp(m, "partial") == 0) {
		write_all(fd, "\0\0\0\x64JIT/1 ok\n", 14);
		hang();
	} else if (strcmp(m, "dup") == 0)
		reply(fd, "JIT/1 ok\ndecision=deny\ndecision=allow\n");
	else if (strcmp(m, "fleet") == 0)
		reply(fd, "JIT/1 ok\ndecision=pending\nrequest=42\nexpires_at=2030-01-01T00:00:00Z\n"
			  "approve_id=7001\napprove_at=https://cp.example:8443\n"
			  "message=Request 7001 is waiting on the control plane.\n");
	else if (strcmp(m, "fleetbad") == 0)
		reply(fd, "JIT/1 ok\ndecision=pending\nrequest=42\nexpires_at=2030-01-01T00:00:00Z\n"
			  "approve_id=7001;rm\napprove_at=https://cp%1B[2J\n"
			  "message=bad id.\n");
	else if (strcmp(m, "noid") == 0)
		reply(fd, "JIT/1 ok\ndecision=pending\nmessage=no id\n");
	else if (strcmp(m, "maybe") == 0)
		reply(fd, "JIT/1 ok\ndecision=maybe\n");
	else
		reply(fd, "JIT/1 error\ncode=bad-request\nmessage=fake agent: unknown mode\n");
}

static void answer_wait(const struct cfg *c, int fd, const char *body)
{
	char id[32] = "?";
	field(body, "request", id, sizeof(id));
	if (strcmp(c->wait, "close") == 0)
		return;
	/* Sleep for the delay (or forever) but notice the client going away. */
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		int left = -1;
		if (strcmp(c->wait, "hang") != 0) {
			clock_gettime(CLOCK_MONOTONIC, &now);
			long el = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
			left = c->wait_delay_ms - (int)el;
			if (left <= 0)
				break;
		}
		struct pollfd p = { .fd = fd, .events = POLLIN, .revents = 0 };
		int n = poll(&p, 1, left);
		if (n > 0) {
			char tmp[64];
			if (recv(fd, tmp, sizeof(tmp), MSG_DONTWAIT) <= 0) {
				logline(c, "EVENT wait-cancelled request=@", id, strlen(id));
				return;
			}
		}
	}
	/* logged before the reply: the driver may kill us as soon as it has it */
	logline(c, "EVENT wait-replied request=@", id, strlen(id));
	if (strcmp(c->wait, "allow") == 0)
		reply(fd, "JIT/1 ok\ndecision=allow\ngrant=6\nexpires_at=2030-01-01T01:00:00Z\n"
			  "message=Approved by alice.\n");
	else if (strcmp(c->wait, "deny") == 0)
		reply(fd, "JIT/1 ok\ndecision=deny\nstate=denied\nmessage=Denied by alice: not now.\n");
	else
		reply(fd, "JIT/1 ok\ndecision=pending\nmessage=Still waiting.\n");
}

static void serve(const struct cfg *c, int fd)
{
	for (;;) {
		unsigned char hdr[4];
		if (read_n(fd, (char *)hdr, 4) != 0)
			return;
		uint32_t n = ((uint32_t)hdr[0] << 24) | ((uint32_t)hdr[1] << 16) | ((uint32_t)hdr[2] << 8) | hdr[3];
		if (n == 0 || n > 65536) {
			logline(c, "BADFRAME", "", 0);
			return;
		}
		char *body = calloc(1, n + 1);
		if (body == NULL || read_n(fd, body, n) != 0) {
			free(body);
			return;
		}
		logline(c, "REQ @", body, n);
		if (strncmp(body, "JIT/1 check\n", 12) == 0)
			answer_check(c, fd, body);
		else if (strncmp(body, "JIT/1 wait\n", 11) == 0)
			answer_wait(c, fd, body);
		else if (strncmp(body, "JIT/1 session_", 14) == 0) {
			if (strcmp(c->session, "hang") == 0)
				hang();
			else if (strcmp(c->session, "error") == 0)
				reply(fd, "JIT/1 error\ncode=internal\nmessage=no.\n");
			else if (strncmp(body, "JIT/1 session_open\n", 19) == 0)
				reply(fd, "JIT/1 ok\nsession=77\ngrant=5\n");
			else
				reply(fd, "JIT/1 ok\n");
		} else {
			reply(fd, "JIT/1 error\ncode=bad-request\nmessage=unknown operation\n");
		}
		free(body);
		return; /* the module sends one request per connection */
	}
}

int main(int argc, char **argv)
{
	struct cfg c = { .check = "allow", .wait = "allow", .session = "ok", .ready_fd = -1,
			 .drop_uid = -1 };
	for (int i = 1; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];
		if (strcmp(k, "--socket") == 0) c.socket = v;
		else if (strcmp(k, "--check") == 0) c.check = v;
		else if (strcmp(k, "--wait") == 0) c.wait = v;
		else if (strcmp(k, "--wait-delay-ms") == 0) c.wait_delay_ms = atoi(v);
		else if (strcmp(k, "--session") == 0) c.session = v;
		else if (strcmp(k, "--log") == 0) c.log = v;
		else if (strcmp(k, "--ready-fd") == 0) c.ready_fd = atoi(v);
		else if (strcmp(k, "--drop-uid") == 0) c.drop_uid = atol(v);
		else { fprintf(stderr, "fake_agent: unknown option %s\n", k); return 2; }
	}
	if (c.socket == NULL) {
		fprintf(stderr, "fake_agent: --socket PATH is required\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	signal(SIGCHLD, SIG_IGN); /* children are reaped automatically */

	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (ls < 0)
		die("socket");
	struct sockaddr_un sa;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", c.socket);
	unlink(c.socket);
	if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		die("bind");
	chmod(c.socket, 0666);
	if (c.drop_uid >= 0) {
		/* SO_PEERCRED reports the credentials at listen() time. */
		if (setgid((gid_t)c.drop_uid) != 0 || setuid((uid_t)c.drop_uid) != 0)
			die("setuid");
	}
	if (listen(ls, 64) != 0)
		die("listen");
	if (c.ready_fd >= 0) {
		(void)!write(c.ready_fd, "R", 1);
		close(c.ready_fd);
	}
	for (;;) {
		int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR)
				continue;
			die("accept");
		}
		pid_t pid = fork();
		if (pid == 0) {
			close(ls);
			serve(&c, fd);
			close(fd);
			_exit(0);
		}
		close(fd);
	}
}
