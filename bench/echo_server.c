/*
 * echo_server: the Unix-socket floor. Accepts, reads one length-prefixed frame, writes it back, closes.
 *   echo_server PATH      (runs until killed; connections are served by a small pool of threads that each
 *                          accept and serve in turn: no thread is created per connection)
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

static int listener;

static void *acceptor(void *arg)
{
	(void)arg;
	for (;;) {
		int c = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
		if (c >= 0)
			serve((void *)(intptr_t)c);
	}
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
	listener = s;
	pthread_t t[64];
	for (int i = 0; i < 64; i++)
		pthread_create(&t[i], NULL, acceptor, NULL);
	for (int i = 0; i < 64; i++)
		pthread_join(t[i], NULL);
	return 0;
}
