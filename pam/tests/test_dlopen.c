/*
 * test_dlopen.c - loads the module the way libpam does, but with RTLD_NOW so
 * that an unresolved symbol fails here rather than inside sshd or sudo, and
 * checks that the PAM entry points are there.
 */
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s MODULE.so\n", argv[0]);
		return 2;
	}
	void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		fprintf(stderr, "FAIL dlopen(RTLD_NOW): %s\n", dlerror());
		return 1;
	}
	const char *syms[] = { "pam_sm_authenticate", "pam_sm_setcred", "pam_sm_acct_mgmt",
			       "pam_sm_open_session", "pam_sm_close_session" };
	int bad = 0;
	for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++)
		if (dlsym(h, syms[i]) == NULL) {
			fprintf(stderr, "FAIL missing %s\n", syms[i]);
			bad = 1;
		}
	const char *hidden[] = { "jit_call", "jit_reply_parse", "jit_sanitize" };
	for (size_t i = 0; i < sizeof(hidden) / sizeof(hidden[0]); i++)
		if (dlsym(h, hidden[i]) != NULL) {
			fprintf(stderr, "FAIL %s is exported\n", hidden[i]);
			bad = 1;
		}
	dlclose(h);
	if (!bad)
		printf("ok   dlopen(RTLD_NOW) %s: resolves; pam_sm_* present; helpers hidden\n", argv[1]);
	return bad;
}
