/*
 * rt: round trips to a Unix-socket server, as the PAM module makes them: connect, send one frame, read the
 * reply frame, close.
 *   rt PATH FRAMEFILE latency COUNT            one client; prints one latency (ns) per round trip
 *   rt PATH FRAMEFILE load THREADS SECONDS     THREADS clients for SECONDS; prints "calls errors" then
 *                                              one latency (ns) per line, sampled (every call up to 2M)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char *path;
static unsigned char frame[65540];
static size_t framelen;
static atomic_long calls, errors;
static volatile int stop;
#define MAXS 2000000
static long long *samples;
static atomic_long nsamples;

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int one(void)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strncpy(a.sun_path, path, sizeof(a.sun_path) - 1);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		close(fd);
		return -1;
	}
	if (send(fd, frame, framelen, MSG_NOSIGNAL) != (ssize_t)framelen) {
		close(fd);
		return -1;
	}
	unsigned char head[4];
	size_t got = 0;
	while (got < 4) {
		ssize_t r = read(fd, head + got, 4 - got);
		if (r <= 0) {
			close(fd);
			return -1;
		}
		got += (size_t)r;
	}
	uint32_t n = (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 | (uint32_t)head[2] << 8 | head[3];
	char body[65536];
	got = 0;
	while (got < n && n <= sizeof(body)) {
		ssize_t r = read(fd, body + got, n - got);
		if (r <= 0) {
			close(fd);
			return -1;
		}
		got += (size_t)r;
	}
	close(fd);
	return (n > 0 && memcmp(body, "JIT/1 error", 11) == 0) ? -1 : 0;
}

static void *worker(void *arg)
{
	(void)arg;
	while (!stop) {
		long long t0 = now_ns();
		int rc = one();
		long long dt = now_ns() - t0;
		atomic_fetch_add(&calls, 1);
		if (rc != 0)
			atomic_fetch_add(&errors, 1);
		long i = atomic_fetch_add(&nsamples, 1);
		if (i < MAXS)
			samples[i] = dt;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 5)
		return 2;
	path = argv[1];
	FILE *f = fopen(argv[2], "rb");
	if (!f)
		return 2;
	framelen = fread(frame, 1, sizeof(frame), f);
	fclose(f);
	if (strcmp(argv[3], "latency") == 0) {
		long count = atol(argv[4]);
		int bad = 0;
		for (long i = 0; i < count; i++) {
			long long t0 = now_ns();
			if (one() != 0)
				bad++;
			printf("%lld\n", now_ns() - t0);
		}
		return bad ? 1 : 0;
	}
	int threads = atoi(argv[4]);
	double secs = argc > 5 ? atof(argv[5]) : 10;
	samples = malloc(sizeof(long long) * MAXS);
	pthread_t t[256];
	for (int i = 0; i < threads && i < 256; i++)
		pthread_create(&t[i], NULL, worker, NULL);
	struct timespec ts = { (time_t)secs, (long)((secs - (time_t)secs) * 1e9) };
	nanosleep(&ts, NULL);
	stop = 1;
	for (int i = 0; i < threads && i < 256; i++)
		pthread_join(t[i], NULL);
	long ns = atomic_load(&nsamples);
	printf("%ld %ld\n", atomic_load(&calls), atomic_load(&errors));
	for (long i = 0; i < ns && i < MAXS; i++)
		printf("%lld\n", samples[i]);
	return 0;
}
