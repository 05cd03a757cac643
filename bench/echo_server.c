/*
 * echo_server: the Unix-socket floor. Accepts, reads one length-prefixed frame, writes it back, closes.
 *   echo_server PATH      (runs until killed; one thread per connection, like jitd)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int readn(int fd, void *b, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, (char *)b + got, n - got);
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

static void *serve(void *arg)
{
	int fd = (int)(intptr_t)arg;
	unsigned char head[4];
	static __thread char body[65536];
	for (;;) {
		if (readn(fd, head, 4) != 0)
			break;
		uint32_t n = (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 | (uint32_t)head[2] << 8 | head[3];
		if (n > sizeof(body) || readn(fd, body, n) != 0)
			break;
		if (send(fd, head, 4, MSG_NOSIGNAL | MSG_MORE) != 4 || send(fd, body, n, MSG_NOSIGNAL) != (ssize_t)n)
			break;
	}
	close(fd);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strncpy(a.sun_path, argv[1], sizeof(a.sun_path) - 1);
	unlink(argv[1]);
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(s, 512) != 0) {
		perror("bind/listen");
		return 1;
	}
	for (;;) {
		int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			continue;
		pthread_t t;
		pthread_attr_t at;
		pthread_attr_init(&at);
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		pthread_attr_setstacksize(&at, 256 * 1024);
		if (pthread_create(&t, &at, serve, (void *)(intptr_t)c) != 0)
			close(c);
		pthread_attr_destroy(&at);
	}
}
