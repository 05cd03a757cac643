/*
 * pam_loop: drives the real libpam in-process and prints one latency (ns) per call.
 *   pam_loop CONFDIR SERVICE USER COUNT fresh|reused [auth|end]
 * fresh:  pam_start_confdir -> [pam_authenticate] -> pam_acct_mgmt -> pam_end, per call
 * reused: one handle; [pam_authenticate] -> pam_acct_mgmt per call
 * Prints "rc=N" on stderr for the first call whose result is not PAM_SUCCESS.
 */
#define _GNU_SOURCE
#include <security/pam_appl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int conv(int n, const struct pam_message **msg, struct pam_response **resp, void *data)
{
	(void)msg;
	(void)data;
	*resp = calloc((size_t)n, sizeof(struct pam_response));
	return *resp ? PAM_SUCCESS : PAM_BUF_ERR;
}

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: pam_loop CONFDIR SERVICE USER COUNT fresh|reused [auth]\n");
		return 2;
	}
	const char *confdir = argv[1], *service = argv[2], *user = argv[3];
	long count = atol(argv[4]);
	int fresh = strcmp(argv[5], "fresh") == 0;
	int auth = argc > 6 && strcmp(argv[6], "auth") == 0;
	int end = argc > 6 && strcmp(argv[6], "end") == 0;  /* print the CLOCK_MONOTONIC time the last call returned */
	struct pam_conv c = { conv, NULL };
	pam_handle_t *h = NULL;
	int bad = 0;
	if (!fresh && pam_start_confdir(service, user, &c, confdir, &h) != PAM_SUCCESS) {
		fprintf(stderr, "pam_start_confdir failed\n");
		return 1;
	}
	for (long i = 0; i < count; i++) {
		long long t0 = now_ns();
		int rc;
		if (fresh) {
			rc = pam_start_confdir(service, user, &c, confdir, &h);
			if (rc == PAM_SUCCESS && auth)
				rc = pam_authenticate(h, 0);
			if (rc == PAM_SUCCESS)
				rc = pam_acct_mgmt(h, 0);
			pam_end(h, rc);
		} else {
			rc = auth ? pam_authenticate(h, 0) : PAM_SUCCESS;
			if (rc == PAM_SUCCESS)
				rc = pam_acct_mgmt(h, 0);
		}
		long long t1 = now_ns();
		if (rc != PAM_SUCCESS && !bad) {
			fprintf(stderr, "rc=%d (%s)\n", rc, pam_strerror(h, rc));
			bad = 1;
		}
		printf("%lld\n", t1 - t0);
	}
	if (end)
		fprintf(stderr, "end=%lld\n", now_ns());
	if (!fresh)
		pam_end(h, PAM_SUCCESS);
	return bad;
}
