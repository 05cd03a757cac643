/*
 * test_pam.c - drives the real libpam (pam_start_confdir, service files in a
 * temp folder) through pam_jit.so against tests/fake_agent, with a scripted
 * conversation that counts prompts and messages. Every case asserts the PAM
 * code and a bound on the elapsed time. Also unit-tests jit_proto.c.
 *
 *   test_pam MODULE.so FAKE_AGENT          all cases (root-only ones skipped
 *                                          with a message when not root)
 *   JIT_TEST_SOCKET=/run/jit/jitd.sock [JIT_TEST_USER=u] [JIT_TEST_EXPECT=success|ignore|perm_denied]
 *   test_pam MODULE.so                     a few cases against a real agent
 *   JIT_TEST_ONLY=substring                run only matching cases
 *   JIT_TEST_SLACK_MS=N                    extra time allowed per case (valgrind)
 *
 * Prints "N passed, M failed" last; exits 1 when anything failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <security/pam_appl.h>

#include "../jit_proto.h"

/* ---------- bookkeeping ---------- */

struct run {
	int passed, failed, skipped;
	const char *module, *agent_bin;
	char dir[256];                       /* the run's temp folder */
	char cdir[300], confdir[320], sock[320], log[320]; /* the current case's */
	long slack_ms;
	const char *only;
	int root;
	char exuser[64], exgroup[64];
};

static void check(struct run *R, int ok, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void check(struct run *R, int ok, const char *name, const char *fmt, ...)
{
	if (ok) {
		R->passed++;
		return;
	}
	R->failed++;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stdout, "FAIL %s: ", name);
	vfprintf(stdout, fmt, ap);
	fputc('\n', stdout);
	va_end(ap);
	fflush(stdout);
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------- unit tests of jit_proto.c ---------- */

static void unit_tests(struct run *R)
{
	struct jit_reply r;
	char out[300];
	int rc;

#define PARSE(s) jit_reply_parse((s), sizeof(s) - 1, &r)
	rc = PARSE("JIT/1 ok\ndecision=allow\ngrant=5\nmessage=a%25b%0Ac\n");
	check(R, rc == JIT_OK && strcmp(r.decision, "allow") == 0 && strcmp(r.message, "a%b\nc") == 0,
	      "unit parse ok", "rc=%d", rc);
	jit_reply_free(&r);
	rc = PARSE("JIT/1 error\ncode=busy\nmessage=x\n");
	check(R, rc == JIT_OK && r.is_error && strcmp(r.code, "busy") == 0, "unit parse error", "rc=%d", rc);
	jit_reply_free(&r);

	static const struct {
		const char *body;
		int want;
	} bad[] = {
		{ "JIT/2 ok\n", JIT_E_VERSION },
		{ "JIT/10 ok\ndecision=allow\n", JIT_E_VERSION },
		{ "HTTP/1.1 200\n", JIT_E_PROTO },
		{ "JIT/1 ok", JIT_E_PROTO },                           /* no final newline */
		{ "JIT/1 okay\n", JIT_E_PROTO },
		{ "JIT/1 ok\ndecision\n", JIT_E_PROTO },               /* no '=' */
		{ "JIT/1 ok\nDecision=allow\n", JIT_E_PROTO },         /* bad key */
		{ "JIT/1 ok\n=allow\n", JIT_E_PROTO },
		{ "JIT/1 ok\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=1\n", JIT_E_PROTO }, /* 33-byte key */
		{ "JIT/1 ok\nmessage=%4\n", JIT_E_PROTO },
		{ "JIT/1 ok\nmessage=%zz\n", JIT_E_PROTO },
		{ "JIT/1 ok\nmessage=%00\n", JIT_E_PROTO },            /* NUL */
		{ "JIT/1 ok\nmessage=%C3%28\n", JIT_E_PROTO },         /* bad UTF-8 */
		{ "JIT/1 ok\nmessage=\xed\xa0\x80\n", JIT_E_PROTO },   /* surrogate */
		{ "JIT/1 ok\nmessage=\xc0\xaf\n", JIT_E_PROTO },       /* overlong */
		{ "JIT/1 ok\nmessage=a\rb\n", JIT_E_PROTO },           /* raw CR */
		{ "JIT/1 ok\nmessage=a\x1b[1m\n", JIT_E_PROTO },       /* raw ESC */
		{ "JIT/1 ok\ndecision=deny\ndecision=allow\n", JIT_E_PROTO },
		{ "JIT/1 ok\n\n", JIT_E_PROTO },                       /* empty line */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		rc = jit_reply_parse(bad[i].body, strlen(bad[i].body), &r);
		check(R, rc == bad[i].want && r.decision == NULL, "unit parse refuses", "case %zu rc=%d want %d",
		      i, rc, bad[i].want);
		jit_reply_free(&r);
	}
	rc = PARSE("JIT/1 ok\nx_1=%e2%82%ac\ndecision=deny\n.\ndecision=allow\nid=3\n.\ndecision=allow\n");
	check(R, rc == JIT_OK && strcmp(r.decision, "deny") == 0, "unit records ignored", "rc=%d", rc);
	jit_reply_free(&r);

	unsigned char h1[4] = { 0, 1, 0, 0 }, h2[4] = { 0, 1, 0, 1 }, h0[4] = { 0, 0, 0, 0 };
	uint32_t n = 0;
	check(R, jit_frame_len(h1, &n) == JIT_OK && n == 65536, "unit frame 65536", "n=%u", n);
	check(R, jit_frame_len(h2, &n) == JIT_E_TOOBIG, "unit frame 65537", "accepted");
	check(R, jit_frame_len(h0, &n) == JIT_E_TOOBIG, "unit frame 0", "accepted");

	struct jit_req q;
	jit_req_init(&q, "check");
	jit_req_add(&q, "user", "al%ice\n\x01\x7f");
	jit_req_add(&q, "reason", NULL);
	size_t fl = jit_req_finish(&q);
	const char want[] = "JIT/1 check\nuser=al%25ice%0A%01%7F\n";
	check(R, fl == 4 + sizeof(want) - 1 && memcmp(q.buf + 4, want, sizeof(want) - 1) == 0 &&
		     q.buf[3] == (char)(sizeof(want) - 1),
	      "unit encode", "len %zu", fl);
	check(R, jit_req_add(&q, "Bad", "x") != JIT_OK && jit_req_finish(&q) == 0, "unit bad key", "accepted");
	jit_req_free(&q);
	jit_req_init(&q, "check");
	char *huge = malloc(70000);
	memset(huge, 'a', 69999);
	huge[69999] = '\0';
	check(R, jit_req_add(&q, "reason", huge) != JIT_OK && jit_req_finish(&q) == 0, "unit request cap",
	      "oversized request accepted");
	free(huge);
	jit_req_free(&q);

	jit_sanitize("a\x1b[31mb\xe2\x80\xae" "c\xc2\x9b\xff\xe2\x82\xac", out, sizeof(out));
	check(R, strcmp(out, "a?[31mb?c??\xe2\x82\xac") == 0, "unit sanitize", "got \"%s\"", out);
	char longin[1000];
	memset(longin, 'y', sizeof(longin) - 1);
	longin[sizeof(longin) - 1] = '\0';
	size_t sl = jit_sanitize(longin, out, sizeof(out));
	check(R, sl == JIT_MAX_SHOWN && strcmp(out + sl - 3, "...") == 0, "unit sanitize cap", "len %zu", sl);
	char euros[400] = "";
	for (int i = 0; i < 100; i++)
		strcat(euros, "\xe2\x82\xac");
	sl = jit_sanitize(euros, out, sizeof(out));
	check(R, sl <= JIT_MAX_SHOWN && jit_utf8_valid((unsigned char *)out, sl), "unit sanitize utf8 cut",
	      "len %zu", sl);
	check(R, jit_id_valid("42") && !jit_id_valid("0") && !jit_id_valid("04") && !jit_id_valid("4a") &&
		     !jit_id_valid("") && !jit_id_valid(NULL) && !jit_id_valid("12345678901234567890"),
	      "unit ids", "wrong");
#undef PARSE
}

/* ---------- the conversation ---------- */

struct conv {
	const char *const *answers; /* for prompts, in order; "!fail" makes the conversation fail */
	int next;
	int prompts, infos, errors;
	char text[16384];
	size_t tlen;
};

static void tr_add(struct conv *c, const char *s)
{
	size_t n = strlen(s);
	if (c->tlen + n + 2 < sizeof(c->text)) {
		memcpy(c->text + c->tlen, s, n);
		c->tlen += n;
		c->text[c->tlen++] = '\n';
		c->text[c->tlen] = '\0';
	}
}

static int is_marker(const char *m)
{
	const char *k[] = { "auth=", "cred=", "acct=", "open_session=", "close_session=" };
	for (size_t i = 0; i < sizeof(k) / sizeof(k[0]); i++)
		if (strncmp(m, k[i], strlen(k[i])) == 0)
			return 1;
	return 0;
}

static int conv_fn(int num, const struct pam_message **msg, struct pam_response **resp, void *data)
{
	struct conv *c = data;
	struct pam_response *r = calloc((size_t)num, sizeof(*r));
	if (r == NULL)
		return PAM_BUF_ERR;
	for (int i = 0; i < num; i++) {
		if (msg[i]->msg_style == PAM_TEXT_INFO && is_marker(msg[i]->msg))
			continue; /* pam_debug saying what it returns: not ours */
		tr_add(c, msg[i]->msg);
		switch (msg[i]->msg_style) {
		case PAM_PROMPT_ECHO_ON:
		case PAM_PROMPT_ECHO_OFF: {
			c->prompts++;
			const char *a = c->answers ? c->answers[c->next] : NULL;
			if (a != NULL)
				c->next++;
			if (a != NULL && strcmp(a, "!fail") == 0) {
				for (int k = 0; k < i; k++)
					free(r[k].resp);
				free(r);
				return PAM_CONV_ERR;
			}
			r[i].resp = strdup(a ? a : "");
			break;
		}
		case PAM_TEXT_INFO:
			c->infos++;
			break;
		case PAM_ERROR_MSG:
			c->errors++;
			break;
		}
	}
	*resp = r;
	return PAM_SUCCESS;
}

/* ---------- cases ---------- */

enum op { OP_ACCT, OP_AUTH, OP_OPEN, OP_CLOSE, OP_SETCRED };
enum sock { S_AGENT, S_NONE, S_CHOWN, S_SYMLINK, S_STALE, S_FILE };
enum stack { K_RAW, K_DOC_AUTH_ALONE, K_DOC_AUTH_DENY, K_DOC_AUTH_PERMIT, K_DOC_KEYONLY, K_DOC_ACCT,
	     K_DOC_SESSION };

#define MARKER PAM_NO_MODULE_DATA /* pam_debug's code after pam_jit returned PAM_IGNORE */
#define IGNORED MARKER

struct tcase {
	const char *name;
	enum op op;
	const char *service;
	const char *args;       /* module arguments; socket=... is added unless present */
	const char *agent;      /* fake agent arguments, NULL: no agent */
	enum sock sock;
	const char *user;       /* default nobody; "@EXUSER" is the exempt-group user */
	const char *answers[4];
	int want;
	int max_ms, min_ms;
	int prompts, infos, errors; /* -1: any */
	const char *msg_has, *msg_lacks;
	const char *log_has[5];
	const char *log_lacks;
	int root_only;
	enum stack stack;
	int kill_ms, intr_ms;   /* run in a child; SIGKILL / SIGINT after this many ms */
	int preauth;            /* sshd before any method passed: SSH_AUTH_INFO_0 empty (1) or absent (2) */
};

#define ANY -1

static const char *pam_name(int rc)
{
	switch (rc) {
	case PAM_SUCCESS: return "PAM_SUCCESS";
	case PAM_IGNORE: return "PAM_IGNORE";
	case MARKER: return "PAM_IGNORE(marker)";
	case PAM_PERM_DENIED: return "PAM_PERM_DENIED";
	case PAM_AUTH_ERR: return "PAM_AUTH_ERR";
	case PAM_AUTHINFO_UNAVAIL: return "PAM_AUTHINFO_UNAVAIL";
	case PAM_SERVICE_ERR: return "PAM_SERVICE_ERR";
	case PAM_SESSION_ERR: return "PAM_SESSION_ERR";
	case PAM_USER_UNKNOWN: return "PAM_USER_UNKNOWN";
	case PAM_CONV_ERR: return "PAM_CONV_ERR";
	case PAM_SYSTEM_ERR: return "PAM_SYSTEM_ERR";
	default: return "other";
	}
}

static char *subst(const struct run *R, const char *s)
{
	char buf[1024];
	size_t o = 0;
	while (*s && o < sizeof(buf) - 70) {
		if (strncmp(s, "@EXUSER", 7) == 0) {
			o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s", R->exuser);
			s += 7;
		} else if (strncmp(s, "@EXGROUP", 8) == 0) {
			o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s", R->exgroup);
			s += 8;
		} else if (strncmp(s, "@SOCK", 5) == 0) {
			o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s", R->sock);
			s += 5;
		} else {
			buf[o++] = *s++;
		}
	}
	buf[o] = '\0';
	return strdup(buf);
}

static int write_service(const struct run *R, const struct tcase *t, const char *sockpath)
{
	char path[400], args[1024];
	char *a = subst(R, t->args ? t->args : "");
	if (strstr(a, "socket=") == NULL)
		snprintf(args, sizeof(args), "socket=%s %s", sockpath, a);
	else
		snprintf(args, sizeof(args), "%s", a);
	free(a);
	snprintf(path, sizeof(path), "%s/%s", R->confdir, t->service);
	FILE *f = fopen(path, "w");
	if (f == NULL)
		return -1;
	const char *m = R->module;
	switch (t->stack) {
	case K_RAW:
		/* pam_jit's own code passes through; PAM_IGNORE shows as pam_debug's marker */
		fprintf(f, "auth    [success=done ignore=ignore default=die] %s %s\n", m, args);
		fprintf(f, "auth    requisite pam_debug.so auth=no_module_data cred=no_module_data\n");
		fprintf(f, "account [success=done ignore=ignore default=die] %s %s\n", m, args);
		fprintf(f, "account requisite pam_debug.so acct=no_module_data\n");
		fprintf(f, "session [success=done ignore=ignore default=die] %s %s\n", m, args);
		fprintf(f, "session requisite pam_debug.so open_session=no_module_data "
			   "close_session=no_module_data\n");
		break;
	case K_DOC_AUTH_ALONE:
		fprintf(f, "auth [success=ok ignore=ignore default=die] %s %s\n", m, args);
		break;
	case K_DOC_AUTH_DENY:
		fprintf(f, "auth [success=ok ignore=ignore default=die] %s %s\n", m, args);
		fprintf(f, "auth required pam_deny.so\n");
		break;
	case K_DOC_AUTH_PERMIT:
		fprintf(f, "auth [success=ok ignore=ignore default=die] %s %s\n", m, args);
		fprintf(f, "auth required pam_permit.so\n");
		break;
	case K_DOC_KEYONLY:
		/* pam_jit(8), key-only hosts: kbd-int after publickey is only the jit step */
		fprintf(f, "auth [success=done ignore=ignore default=die] %s %s\n", m, args);
		fprintf(f, "auth required pam_permit.so\n");
		break;
	case K_DOC_ACCT:
		fprintf(f, "account required pam_permit.so\n");
		fprintf(f, "account required %s %s\n", m, args);
		break;
	case K_DOC_SESSION:
		fprintf(f, "session optional %s %s\n", m, args);
		fprintf(f, "session required pam_permit.so\n");
		break;
	}
	fclose(f);
	return 0;
}

/* Starts the fake agent in its own process group; returns its pid or -1. */
static pid_t start_agent(const struct run *R, const char *extra)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) != 0)
		return -1;
	char *args = strdup(extra ? extra : "");
	char *argv[32];
	int n = 0;
	argv[n++] = (char *)R->agent_bin;
	argv[n++] = "--socket";
	argv[n++] = (char *)R->sock;
	argv[n++] = "--log";
	argv[n++] = (char *)R->log;
	argv[n++] = "--ready-fd";
	argv[n++] = "3";
	for (char *save = NULL, *tok = strtok_r(args, " ", &save); tok && n < 30;
	     tok = strtok_r(NULL, " ", &save))
		argv[n++] = tok;
	argv[n] = NULL;
	pid_t pid = fork();
	if (pid == 0) {
		setpgid(0, 0);
		dup2(p[1], 3); /* dup2 clears FD_CLOEXEC on the copy */
		execv(R->agent_bin, argv);
		_exit(127);
	}
	free(args);
	close(p[1]);
	if (pid < 0) {
		close(p[0]);
		return -1;
	}
	setpgid(pid, pid);
	struct pollfd pf = { .fd = p[0], .events = POLLIN, .revents = 0 };
	char c = 0;
	int ok = poll(&pf, 1, 5000) == 1 && read(p[0], &c, 1) == 1 && c == 'R';
	close(p[0]);
	if (!ok) {
		kill(-pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return -1;
	}
	return pid;
}

static void stop_agent(pid_t pid)
{
	if (pid > 0) {
		kill(-pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *s = calloc(1, 65536);
	if (f != NULL) {
		size_t n = fread(s, 1, 65535, f);
		s[n] = '\0';
		fclose(f);
	}
	return s;
}

static int run_pam(const struct run *R, const struct tcase *t, const char *user, struct conv *cv)
{
	struct pam_conv pc = { conv_fn, cv };
	pam_handle_t *pamh = NULL;
	int rc = pam_start_confdir(t->service, user, &pc, R->confdir, &pamh);
	if (rc != PAM_SUCCESS)
		return 1000 + rc;
	pam_set_item(pamh, PAM_RHOST, "203.0.113.7");
	pam_set_item(pamh, PAM_TTY, strcmp(t->service, "sshd") == 0 ? "ssh" : "/dev/pts/9");
	/* As sshd does: the methods that already passed (a key), or none yet. */
	if (strcmp(t->service, "sshd") == 0 && t->preauth != 2)
		pam_putenv(pamh, t->preauth ? "SSH_AUTH_INFO_0=" : "SSH_AUTH_INFO_0=publickey ssh-ed25519 AAAAC3Nz\n");
	switch (t->op) {
	case OP_ACCT: rc = pam_acct_mgmt(pamh, 0); break;
	case OP_AUTH: rc = pam_authenticate(pamh, 0); break;
	case OP_OPEN: rc = pam_open_session(pamh, 0); break;
	case OP_CLOSE:
		rc = pam_open_session(pamh, 0);
		if (rc == PAM_SUCCESS)
			rc = pam_close_session(pamh, 0);
		else
			rc = 2000 + rc;
		break;
	case OP_SETCRED: rc = pam_setcred(pamh, PAM_ESTABLISH_CRED); break;
	}
	pam_end(pamh, rc);
	return rc;
}

static void on_sigint(int sig)
{
	(void)sig;
}

/* 1: run it; 0: not selected; -1: needs root. */
static int selected(const struct run *R, const struct tcase *t)
{
	if (R->only && strstr(t->name, R->only) == NULL)
		return 0;
	return t->root_only && !R->root ? -1 : 1;
}

/* Cases that wait for a timeout run in parallel children. */
static int is_slow(const struct tcase *t)
{
	return t->max_ms >= 3000;
}

/* Each case gets its own folder: socket, agent log, pam.d. */
static void case_paths(struct run *R, size_t idx)
{
	snprintf(R->cdir, sizeof(R->cdir), "%s/c%zu", R->dir, idx);
	snprintf(R->confdir, sizeof(R->confdir), "%s/pam.d", R->cdir);
	snprintf(R->sock, sizeof(R->sock), "%s/jitd.sock", R->cdir);
	snprintf(R->log, sizeof(R->log), "%s/agent.log", R->cdir);
	mkdir(R->cdir, 0700);
	mkdir(R->confdir, 0700);
}

static void case_cleanup(const struct run *R)
{
	const char *names[] = { "jitd.sock", "agent.log", "link.sock", "out", "pam.d/sshd", "pam.d/sudo",
				"pam.d" };
	char p[400];
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", R->cdir, names[i]);
		if (unlink(p) != 0)
			rmdir(p);
	}
	rmdir(R->cdir);
}

static void run_case(struct run *R, const struct tcase *t)
{
	char link[400];
	snprintf(link, sizeof(link), "%s/link.sock", R->cdir);

	pid_t agent = -1;
	if (t->agent != NULL || t->sock == S_STALE) {
		agent = start_agent(R, t->agent);
		if (agent < 0) {
			check(R, 0, t->name, "fake agent did not start");
			return;
		}
	}
	const char *sockpath = R->sock;
	switch (t->sock) {
	case S_AGENT:
	case S_NONE:
		break;
	case S_CHOWN:
		if (chown(R->sock, 65534, 65534) != 0)
			check(R, 0, t->name, "chown: %s", strerror(errno));
		break;
	case S_SYMLINK:
		if (symlink(R->sock, link) != 0)
			check(R, 0, t->name, "symlink: %s", strerror(errno));
		sockpath = link;
		break;
	case S_STALE:
		stop_agent(agent); /* the socket file stays; nobody listens */
		agent = -1;
		break;
	case S_FILE: {
		int fd = open(R->sock, O_WRONLY | O_CREAT | O_TRUNC, 0666);
		if (fd >= 0)
			close(fd);
		break;
	}
	}
	if (write_service(R, t, sockpath) != 0) {
		check(R, 0, t->name, "cannot write the service file");
		stop_agent(agent);
		return;
	}
	char *user = subst(R, t->user ? t->user : "nobody");
	struct conv cv;
	memset(&cv, 0, sizeof(cv));
	cv.answers = t->answers;

	long long t0 = now_ms();
	int rc;
	if (t->kill_ms || t->intr_ms) {
		/* The PAM call runs in a child that the "user" kills or interrupts. */
		fflush(stdout);
		pid_t pid = fork();
		if (pid == 0) {
			struct sigaction sa;
			memset(&sa, 0, sizeof(sa));
			sa.sa_handler = on_sigint; /* no SA_RESTART, like a program catching Ctrl-C */
			sigaction(SIGINT, &sa, NULL);
			int crc = run_pam(R, t, user, &cv);
			free(user);
			_exit(crc > 250 ? 250 : crc);
		}
		struct timespec ts = { (t->kill_ms + t->intr_ms) / 1000,
				       ((t->kill_ms + t->intr_ms) % 1000) * 1000000L };
		nanosleep(&ts, NULL);
		kill(pid, t->kill_ms ? SIGKILL : SIGINT);
		int st = 0;
		waitpid(pid, &st, 0);
		if (t->kill_ms)
			rc = WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL ? t->want : -1;
		else
			rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	} else {
		rc = run_pam(R, t, user, &cv);
	}
	long long ms = now_ms() - t0;
	free(user);
	/* The agent's connection child may log an event (a cancelled wait) just after
	 * the PAM call returns: give expected lines up to 2 s to appear. */
	for (int tries = 0; agent > 0 && t->log_has[0] && tries < 100; tries++) {
		char *l = slurp(R->log);
		int all = 1;
		for (int i = 0; i < 5 && t->log_has[i]; i++)
			if (strstr(l, t->log_has[i]) == NULL)
				all = 0;
		free(l);
		if (all)
			break;
		struct timespec pause_ts = { 0, 20 * 1000000L };
		nanosleep(&pause_ts, NULL);
	}
	stop_agent(agent);

	char *log = slurp(R->log);
	int ok = 1;
	char why[512] = "";
	if (rc != t->want) {
		ok = 0;
		snprintf(why, sizeof(why), "got %s (%d), want %s (%d)", pam_name(rc), rc, pam_name(t->want), t->want);
	} else if (ms > t->max_ms + R->slack_ms) {
		ok = 0;
		snprintf(why, sizeof(why), "took %lld ms, bound %d ms", ms, t->max_ms);
	} else if (ms < t->min_ms) {
		ok = 0;
		snprintf(why, sizeof(why), "took %lld ms, expected at least %d ms", ms, t->min_ms);
	} else if ((t->prompts != ANY && cv.prompts != t->prompts) ||
		   (t->infos != ANY && cv.infos != t->infos) || (t->errors != ANY && cv.errors != t->errors)) {
		ok = 0;
		snprintf(why, sizeof(why), "prompts/infos/errors %d/%d/%d, want %d/%d/%d", cv.prompts, cv.infos,
			 cv.errors, t->prompts, t->infos, t->errors);
	} else if (t->msg_has && strstr(cv.text, t->msg_has) == NULL) {
		ok = 0;
		snprintf(why, sizeof(why), "messages lack \"%s\"", t->msg_has);
	} else if (t->msg_lacks && strstr(cv.text, t->msg_lacks) != NULL) {
		ok = 0;
		snprintf(why, sizeof(why), "messages hold \"%s\"", t->msg_lacks);
	} else if (t->log_lacks && strstr(log, t->log_lacks) != NULL) {
		ok = 0;
		snprintf(why, sizeof(why), "agent log holds \"%s\"", t->log_lacks);
	} else {
		for (int i = 0; i < 5 && t->log_has[i]; i++)
			if (strstr(log, t->log_has[i]) == NULL) {
				ok = 0;
				snprintf(why, sizeof(why), "agent log lacks \"%s\"", t->log_has[i]);
				break;
			}
	}
	if (ok) {
		R->passed++;
		printf("ok   %-52s %-22s %5lld ms\n", t->name, pam_name(rc), ms);
	} else {
		R->failed++;
		printf("FAIL %-52s %s\n", t->name, why);
		printf("     messages: %s\n     agent log: %s\n", cv.text, log);
	}
	fflush(stdout);
	free(log);
}

#define NOMSG .prompts = ANY, .infos = ANY, .errors = ANY

/* The allow-reply agent arguments, to keep the table short. */
#define A(x) "--check " x

static const struct tcase cases[] = {
	/* ----- arguments ----- */
	{ .name = "arg: unknown argument fails closed", .op = OP_ACCT, .service = "sshd",
	  .args = "bogus=1", .agent = A("allow"), .want = PAM_SERVICE_ERR, .max_ms = 500,
	  .prompts = 0, .infos = 0, .errors = 0, .log_lacks = "REQ" },
	{ .name = "arg: timeout=abc", .op = OP_ACCT, .service = "sshd", .args = "timeout=abc",
	  .agent = A("allow"), .want = PAM_SERVICE_ERR, .max_ms = 500, NOMSG, .log_lacks = "REQ" },
	{ .name = "arg: timeout=3601", .op = OP_ACCT, .service = "sshd", .args = "timeout=3601",
	  .agent = A("allow"), .want = PAM_SERVICE_ERR, .max_ms = 500, NOMSG },
	{ .name = "arg: timeout=-1", .op = OP_ACCT, .service = "sshd", .args = "timeout=-1",
	  .agent = A("allow"), .want = PAM_SERVICE_ERR, .max_ms = 500, NOMSG },
	{ .name = "arg: failmode=maybe", .op = OP_ACCT, .service = "sshd", .args = "failmode=maybe",
	  .agent = A("allow"), .want = PAM_SERVICE_ERR, .max_ms = 500, NOMSG },
	{ .name = "arg: relative socket", .op = OP_ACCT, .service = "sshd", .args = "socket=jitd.sock",
	  .agent = A("allow"), .want = PAM_SERVICE_ERR, .max_ms = 500, NOMSG },
	{ .name = "arg: repeated argument", .op = OP_ACCT, .service = "sshd", .args = "debug debug",
	  .agent = A("allow"), .want = PAM_SERVICE_ERR, .max_ms = 500, NOMSG },
	{ .name = "arg: unknown argument in auth", .op = OP_AUTH, .service = "sshd", .args = "timeout",
	  .agent = A("allow"), .want = PAM_SERVICE_ERR, .max_ms = 500, .prompts = 0, .infos = ANY,
	  .errors = ANY },
	{ .name = "arg: unknown argument in session", .op = OP_OPEN, .service = "sshd",
	  .args = "exempt-group=x", .agent = A("allow"), .want = PAM_SERVICE_ERR, .max_ms = 500, NOMSG },
	{ .name = "arg: all arguments accepted", .op = OP_ACCT, .service = "sshd",
	  .args = "timeout=0 failmode=secure exempt_group=root debug", .agent = A("allow"),
	  .want = PAM_SUCCESS, .max_ms = 1000, NOMSG, .root_only = 1 },

	/* ----- account decisions ----- */
	{ .name = "account: allow", .op = OP_ACCT, .service = "sshd", .agent = A("allow"),
	  .want = PAM_SUCCESS, .max_ms = 1000, .prompts = 0, .infos = 0, .errors = 0,
	  .log_has = { "REQ JIT/1 check | user=nobody | service=sshd | rhost=203.0.113.7 | tty=ssh | pid=",
		       "file=1" },
	  .root_only = 1 },
	{ .name = "account: ignore", .op = OP_ACCT, .service = "sshd", .agent = A("ignore"),
	  .want = IGNORED, .max_ms = 1000, .prompts = 0, .infos = 0, .errors = 0, .root_only = 1 },
	{ .name = "account: deny shows the agent's reason", .op = OP_ACCT, .service = "sshd",
	  .agent = A("deny"), .want = PAM_PERM_DENIED, .max_ms = 1000, .prompts = 0, .infos = 0,
	  .errors = 1, .msg_has = "jit: access denied: No grant covers sshd: run jit request.",
	  .root_only = 1 },
	{ .name = "account: pending, timeout=0 denies at once", .op = OP_ACCT, .service = "sshd",
	  .agent = A("pending"), .want = PAM_PERM_DENIED, .max_ms = 1000, .prompts = 0, .infos = 1,
	  .errors = 1, .msg_has = "Request 42 is waiting: an approver runs 'jit approve 42'",
	  .log_lacks = "JIT/1 wait", .root_only = 1 },
	{ .name = "account: fleet host names the control plane's id and URL", .op = OP_ACCT,
	  .service = "sshd", .agent = A("fleet"), .want = PAM_PERM_DENIED, .max_ms = 1000,
	  .prompts = 0, .infos = 1, .errors = 1,
	  .msg_has = "Request 7001 is waiting: an approver runs 'jit approve 7001' on the control "
		     "plane https://cp.example:8443.",
	  .log_lacks = "JIT/1 wait", .root_only = 1 },
	{ .name = "account: a bad control-plane id is not shown (this host's id is)", .op = OP_ACCT,
	  .service = "sshd", .agent = A("fleetbad"), .want = PAM_PERM_DENIED, .max_ms = 1000,
	  .prompts = 0, .infos = 1, .errors = 1,
	  .msg_has = "Request 42 is waiting: an approver runs 'jit approve 42'. Try again",
	  .root_only = 1 },
	{ .name = "account: fleet, approved while waiting, says the control plane's id", .op = OP_ACCT,
	  .service = "sshd", .args = "timeout=5", .agent = A("fleet") " --wait allow --wait-delay-ms 100",
	  .want = PAM_SUCCESS, .max_ms = 2000, .prompts = 0, .infos = 2, .errors = 0,
	  .msg_has = "request 7001 approved; access until",
	  .log_has = { "REQ JIT/1 wait | request=42 |" }, .root_only = 1 },
	{ .name = "account: pending, approved while waiting", .op = OP_ACCT, .service = "sshd",
	  .args = "timeout=5", .agent = A("pending") " --wait allow --wait-delay-ms 300",
	  .want = PAM_SUCCESS, .max_ms = 2000, .min_ms = 250, .prompts = 0, .infos = 2, .errors = 0,
	  .msg_has = "request 42 approved; access until 2030-01-01T01:00:00Z",
	  .log_has = { "REQ JIT/1 wait | request=42 | timeout=5 | cancel_on_close=1 |", "wait-replied" },
	  .root_only = 1 },
	{ .name = "account: pending, denied while waiting", .op = OP_ACCT, .service = "sshd",
	  .args = "timeout=5", .agent = A("pending") " --wait deny --wait-delay-ms 200",
	  .want = PAM_PERM_DENIED, .max_ms = 2000, .min_ms = 150, .prompts = 0, .infos = 1, .errors = 2,
	  .msg_has = "Denied by alice: not now.", .root_only = 1 },
	{ .name = "account: pending, no decision in time", .op = OP_ACCT, .service = "sshd",
	  .args = "timeout=1", .agent = A("pending") " --wait pending --wait-delay-ms 1000",
	  .want = PAM_PERM_DENIED, .max_ms = 2500, .min_ms = 950, .prompts = 0, .infos = 1, .errors = 1,
	  .msg_has = "no decision on request 42 within 1 s", .root_only = 1 },
	{ .name = "account: wait hangs past its timeout", .op = OP_ACCT, .service = "sshd",
	  .args = "timeout=1", .agent = A("pending") " --wait hang", .want = PAM_AUTHINFO_UNAVAIL,
	  .max_ms = 7500, .min_ms = 5900, .prompts = 0, .infos = 1, .errors = 1,
	  .msg_has = "jitd", .root_only = 1 },
	{ .name = "account: wait connection closed early", .op = OP_ACCT, .service = "sshd",
	  .args = "timeout=5", .agent = A("pending") " --wait close", .want = PAM_AUTHINFO_UNAVAIL,
	  .max_ms = 1500, NOMSG, .root_only = 1 },
	{ .name = "account: agent error internal", .op = OP_ACCT, .service = "sshd", .agent = A("error"),
	  .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, .prompts = 0, .infos = 0, .errors = 1,
	  .msg_has = "The database is locked", .root_only = 1 },
	{ .name = "account: agent error unauthorized", .op = OP_ACCT, .service = "sshd",
	  .agent = A("error2"), .want = PAM_PERM_DENIED, .max_ms = 1000, NOMSG, .root_only = 1 },
	{ .name = "account: unknown keys and records ignored", .op = OP_ACCT, .service = "sshd",
	  .agent = A("extras"), .want = PAM_SUCCESS, .max_ms = 1000, NOMSG, .root_only = 1 },

	/* ----- a misbehaving agent ----- */
	{ .name = "bad agent: hangs", .op = OP_ACCT, .service = "sshd", .agent = A("hang"),
	  .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 6500, .min_ms = 4900, .prompts = 0, .infos = 0,
	  .errors = 1, .msg_has = "jitd) is down or not answering", .root_only = 1 },
	{ .name = "bad agent: closes early", .op = OP_ACCT, .service = "sshd", .agent = A("close"),
	  .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, .errors = 1, .prompts = ANY, .infos = ANY,
	  .root_only = 1 },
	{ .name = "bad agent: raw garbage", .op = OP_ACCT, .service = "sshd", .agent = A("garbage"),
	  .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, .errors = 1, .prompts = ANY, .infos = ANY,
	  .msg_has = "cannot use", .root_only = 1 },
	{ .name = "bad agent: junk in a valid frame", .op = OP_ACCT, .service = "sshd",
	  .agent = A("junk"), .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, NOMSG, .root_only = 1 },
	{ .name = "bad agent: 1 MB frame", .op = OP_ACCT, .service = "sshd", .agent = A("big"),
	  .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, NOMSG, .root_only = 1 },
	{ .name = "bad agent: wrong version", .op = OP_ACCT, .service = "sshd", .agent = A("version"),
	  .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, NOMSG, .root_only = 1 },
	{ .name = "bad agent: zero-length frame", .op = OP_ACCT, .service = "sshd", .agent = A("zero"),
	  .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, NOMSG, .root_only = 1 },
	{ .name = "bad agent: partial frame then silence", .op = OP_ACCT, .service = "sshd",
	  .agent = A("partial"), .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 6500, .min_ms = 4900, NOMSG,
	  .root_only = 1 },
	{ .name = "bad agent: repeated decision", .op = OP_ACCT, .service = "sshd", .agent = A("dup"),
	  .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, NOMSG, .root_only = 1 },
	{ .name = "bad agent: pending without an id", .op = OP_ACCT, .service = "sshd",
	  .agent = A("noid"), .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, NOMSG, .root_only = 1 },
	{ .name = "bad agent: unknown decision", .op = OP_ACCT, .service = "sshd", .agent = A("maybe"),
	  .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, NOMSG, .root_only = 1 },
	{ .name = "bad agent: control characters sanitised", .op = OP_ACCT, .service = "sshd",
	  .agent = A("ctrl"), .want = PAM_PERM_DENIED, .max_ms = 1000, .prompts = 0, .infos = 0,
	  .errors = 1, .msg_has = "denied: ?[2J?]0;pwned?evil??root# ?desrever ?31m end", .msg_lacks = "\x1b",
	  .root_only = 1 },
	{ .name = "bad agent: 12 kB message capped", .op = OP_ACCT, .service = "sshd", .agent = A("long"),
	  .want = PAM_PERM_DENIED, .max_ms = 1000, .prompts = 0, .infos = 0, .errors = 1,
	  .msg_has = "xxx...", .root_only = 1 },
	{ .name = "bad agent: garbage is not an outage (safe)", .op = OP_ACCT, .service = "sshd",
	  .args = "failmode=safe", .agent = A("garbage"), .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000,
	  NOMSG, .root_only = 1 },
	{ .name = "bad agent: closes early, failmode=safe allows", .op = OP_ACCT, .service = "sshd",
	  .args = "failmode=safe", .agent = A("close"), .want = PAM_SUCCESS, .max_ms = 1000,
	  .prompts = 0, .infos = 0, .errors = 0, .root_only = 1 },

	/* ----- the socket and the peer ----- */
	{ .name = "socket: not owned by root refused", .op = OP_ACCT, .service = "sshd",
	  .args = "failmode=safe", .agent = A("allow"), .sock = S_CHOWN, .want = PAM_AUTHINFO_UNAVAIL,
	  .max_ms = 1000, .errors = 1, .prompts = ANY, .infos = ANY, .msg_has = "safety check",
	  .log_lacks = "REQ", .root_only = 1 },
	{ .name = "socket: symlink refused", .op = OP_ACCT, .service = "sshd", .args = "failmode=safe",
	  .agent = A("allow"), .sock = S_SYMLINK, .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000,
	  .errors = 1, .prompts = ANY, .infos = ANY, .msg_has = "safety check", .log_lacks = "REQ" },
	{ .name = "socket: peer process not root refused", .op = OP_ACCT, .service = "sshd",
	  .args = "failmode=safe", .agent = A("allow") " --drop-uid 65534", .want = PAM_AUTHINFO_UNAVAIL,
	  .max_ms = 1000, NOMSG, .log_lacks = "REQ", .root_only = 1 },
	{ .name = "socket: a regular file refused", .op = OP_ACCT, .service = "sshd",
	  .args = "failmode=safe", .sock = S_FILE, .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, NOMSG },
	{ .name = "agent down, failmode=secure denies", .op = OP_ACCT, .service = "sshd",
	  .sock = S_NONE, .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, .prompts = 0, .infos = 0,
	  .errors = 1, .msg_has = "the access agent (jitd) is down" },
	{ .name = "agent down, failmode=safe allows", .op = OP_ACCT, .service = "sshd",
	  .args = "failmode=safe", .sock = S_NONE, .want = PAM_SUCCESS, .max_ms = 1000, .prompts = 0,
	  .infos = 0, .errors = 0 },
	{ .name = "agent dead (stale socket), secure denies", .op = OP_ACCT, .service = "sshd",
	  .sock = S_STALE, .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, NOMSG, .root_only = 1 },
	{ .name = "agent dead (stale socket), safe allows", .op = OP_ACCT, .service = "sshd",
	  .args = "failmode=safe", .sock = S_STALE, .want = PAM_SUCCESS, .max_ms = 1000, NOMSG,
	  .root_only = 1 },

	/* ----- who is exempt ----- */
	{ .name = "exempt: root passes, agent down", .op = OP_ACCT, .service = "sshd", .user = "root",
	  .sock = S_NONE, .want = IGNORED, .max_ms = 1000, .prompts = 0, .infos = 0, .errors = 0 },
	{ .name = "exempt: root is never asked", .op = OP_ACCT, .service = "sudo", .user = "root",
	  .agent = A("deny"), .want = IGNORED, .max_ms = 1000, .prompts = 0, .infos = 0, .errors = 0,
	  .log_has = { "JIT/1 note", "kind=exempt", "user=root" }, .log_lacks = "JIT/1 check" },
	{ .name = "exempt: exempt_group member passes, agent down", .op = OP_ACCT, .service = "sshd",
	  .user = "@EXUSER", .args = "exempt_group=@EXGROUP", .sock = S_NONE, .want = IGNORED,
	  .max_ms = 1000, .prompts = 0, .infos = 0, .errors = 0 },
	{ .name = "exempt: exempt_group member in auth", .op = OP_AUTH, .service = "sshd",
	  .user = "@EXUSER", .args = "exempt_group=@EXGROUP timeout=30", .agent = A("file"),
	  .want = IGNORED, .max_ms = 1000, .prompts = 0, .infos = 0, .errors = 0,
	  .log_has = { "JIT/1 note", "kind=exempt", "why=member of exempt_group" }, .log_lacks = "JIT/1 check" },
	{ .name = "exempt: non-member is gated", .op = OP_ACCT, .service = "sshd", .user = "nobody",
	  .args = "exempt_group=root", .agent = A("deny"), .want = PAM_PERM_DENIED, .max_ms = 1000,
	  NOMSG, .log_has = { "user=nobody" }, .root_only = 1 },
	{ .name = "exempt: missing exempt_group exempts nobody", .op = OP_ACCT, .service = "sshd",
	  .user = "nobody", .args = "exempt_group=no-such-group-jit", .sock = S_NONE,
	  .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, NOMSG },
	{ .name = "unknown user", .op = OP_ACCT, .service = "sshd", .user = "no-such-user-jit",
	  .agent = A("allow"), .want = PAM_USER_UNKNOWN, .max_ms = 1000, NOMSG, .log_lacks = "REQ" },

	/* ----- auth: the interactive flow ----- */
	{ .name = "auth: grant exists, no prompt", .op = OP_AUTH, .service = "sshd", .args = "timeout=30",
	  .agent = A("allow"), .want = PAM_SUCCESS, .max_ms = 1000, .prompts = 0, .infos = 0,
	  .errors = 0, .log_has = { "file=0" }, .log_lacks = "file=1", .root_only = 1 },
	{ .name = "auth: not gated", .op = OP_AUTH, .service = "sshd", .args = "timeout=30",
	  .agent = A("ignore"), .want = IGNORED, .max_ms = 1000, .prompts = 0, .infos = 0, .errors = 0,
	  .root_only = 1 },
	{ .name = "auth sshd: reason, request id, approved", .op = OP_AUTH, .service = "sshd",
	  .args = "timeout=5", .agent = A("file") " --wait allow --wait-delay-ms 300",
	  .answers = { "fix the prod db", "" }, .want = PAM_SUCCESS, .max_ms = 2000, .min_ms = 250,
	  .prompts = 2, .infos = 1, .errors = 0, .msg_has = "request 42 is waiting for approval",
	  .log_has = { "file=0", "file=1 | reason=fix the prod db |", "cancel_on_close=1" },
	  .root_only = 1 },
	{ .name = "auth sshd: reason with control characters", .op = OP_AUTH, .service = "sshd",
	  .args = "timeout=5", .agent = A("file") " --wait allow",
	  .answers = { "a\x1b[1mb\tc%d", "" }, .want = PAM_SUCCESS, .max_ms = 2000, NOMSG,
	  .log_has = { "reason=a [1mb c%25d |" }, .root_only = 1 },
	{ .name = "auth sshd: empty reason sends none", .op = OP_AUTH, .service = "sshd",
	  .args = "timeout=5", .agent = A("file") " --wait allow", .answers = { "", "" },
	  .want = PAM_SUCCESS, .max_ms = 2000, NOMSG, .log_lacks = "reason=", .root_only = 1 },
	{ .name = "auth sshd: joins a pending request", .op = OP_AUTH, .service = "sshd",
	  .args = "timeout=5", .agent = A("pending") " --wait allow --wait-delay-ms 100",
	  .answers = { "" }, .want = PAM_SUCCESS, .max_ms = 2000, .prompts = 1, .infos = 1, .errors = 0,
	  .log_lacks = "file=1", .root_only = 1 },
	{ .name = "auth sshd: timeout=0 files and denies", .op = OP_AUTH, .service = "sshd",
	  .args = "timeout=0", .agent = A("file"), .answers = { "why not" }, .want = PAM_AUTH_ERR,
	  .max_ms = 1000, .prompts = 1, .infos = 1, .errors = 1, .msg_has = "jit approve 42",
	  .log_lacks = "JIT/1 wait", .root_only = 1 },
	{ .name = "auth sshd: denied while waiting", .op = OP_AUTH, .service = "sshd",
	  .args = "timeout=5", .agent = A("file") " --wait deny --wait-delay-ms 100",
	  .answers = { "r", "" }, .want = PAM_AUTH_ERR, .max_ms = 2000, NOMSG, .root_only = 1 },
	{ .name = "auth sshd: conversation fails, nothing filed", .op = OP_AUTH, .service = "sshd",
	  .args = "timeout=5", .agent = A("file"), .answers = { "!fail" }, .want = PAM_AUTH_ERR,
	  .max_ms = 1000, NOMSG, .log_lacks = "file=1", .root_only = 1 },
	{ .name = "auth sshd: no method passed yet: asks nothing, files nothing", .op = OP_AUTH,
	  .service = "sshd", .args = "timeout=5", .agent = A("file"), .answers = { "not me" },
	  .want = IGNORED, .max_ms = 1000, .prompts = 0, .infos = 0, .errors = 0, .log_lacks = "REQ",
	  .preauth = 1, .root_only = 1 },
	{ .name = "auth sshd: no SSH_AUTH_INFO_0 at all: asks nothing", .op = OP_AUTH,
	  .service = "sshd", .args = "timeout=5", .agent = A("file"), .answers = { "not me" },
	  .want = IGNORED, .max_ms = 1000, .prompts = 0, .infos = 0, .errors = 0, .log_lacks = "REQ",
	  .preauth = 2, .root_only = 1 },
	{ .name = "account sshd: runs after authentication, files", .op = OP_ACCT, .service = "sshd",
	  .agent = A("pending"), .want = PAM_PERM_DENIED, .max_ms = 1000, NOMSG,
	  .log_has = { "file=1" }, .preauth = 1, .root_only = 1 },
	{ .name = "auth sudo: no prompt, told it waits, approved", .op = OP_AUTH, .service = "sudo",
	  .args = "timeout=5", .agent = A("file") " --wait allow --wait-delay-ms 200",
	  .want = PAM_SUCCESS, .max_ms = 2000, .min_ms = 150, .prompts = 0, .infos = 2, .errors = 0,
	  .msg_has = "Waiting up to 5 s; Ctrl-C cancels.", .log_has = { "service=sudo", "file=1" },
	  .root_only = 1 },
	/* Outside sudo's own process the module cannot know what will run: it says so (finding 2). */
	{ .name = "account sudo: not inside sudo, says unsure", .op = OP_ACCT, .service = "sudo",
	  .agent = A("allow"), .want = PAM_SUCCESS, .max_ms = 1000, .errors = 0,
	  .log_has = { "sudo_mode=unsure", "unsure=the PAM service is sudo's but the program is not sudo",
		       "stage=account" },
	  .log_lacks = "runas=" },
	{ .name = "account sshd: no sudo fields", .op = OP_ACCT, .service = "sshd",
	  .agent = A("allow"), .want = PAM_SUCCESS, .max_ms = 1000, .errors = 0,
	  .log_has = { "service=sshd" }, .log_lacks = "sudo_mode=" },
	{ .name = "auth: agent down, secure", .op = OP_AUTH, .service = "sshd", .args = "timeout=30",
	  .sock = S_NONE, .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, .prompts = 0, .infos = 0,
	  .errors = 1 },
	{ .name = "auth: agent down, safe steps aside", .op = OP_AUTH, .service = "sshd",
	  .args = "timeout=30 failmode=safe", .sock = S_NONE, .want = IGNORED, .max_ms = 1000,
	  .prompts = 0, .infos = 0, .errors = 0 },
	{ .name = "auth: root exempt", .op = OP_AUTH, .service = "sshd", .user = "root",
	  .args = "timeout=30", .sock = S_NONE, .want = IGNORED, .max_ms = 1000, .prompts = 0,
	  .infos = 0, .errors = 0 },
	{ .name = "auth sudo: killed while waiting cancels (Ctrl-C)", .op = OP_AUTH, .service = "sudo",
	  .args = "timeout=30", .agent = A("file") " --wait hang", .want = PAM_AUTH_ERR, .kill_ms = 600,
	  .max_ms = 2000, NOMSG, .log_has = { "cancel_on_close=1", "EVENT wait-cancelled request=42" },
	  .root_only = 1 },
	{ .name = "auth sudo: SIGINT while waiting ends it", .op = OP_AUTH, .service = "sudo",
	  .args = "timeout=30", .agent = A("file") " --wait hang", .want = PAM_AUTH_ERR, .intr_ms = 600,
	  .max_ms = 2000, NOMSG, .log_has = { "EVENT wait-cancelled request=42" }, .root_only = 1 },
	{ .name = "account sshd: killed while waiting cancels", .op = OP_ACCT, .service = "sshd",
	  .args = "timeout=30", .agent = A("pending") " --wait hang", .want = PAM_PERM_DENIED,
	  .kill_ms = 600, .max_ms = 2000, NOMSG, .log_has = { "EVENT wait-cancelled request=42" },
	  .root_only = 1 },
	{ .name = "setcred steps aside", .op = OP_SETCRED, .service = "sshd", .sock = S_NONE,
	  .want = IGNORED, .max_ms = 1000, .prompts = 0, .infos = 0, .errors = 0 },

	/* ----- the documented stack lines ----- */
	{ .name = "doc auth line alone: ignore is no success", .op = OP_AUTH, .service = "sshd",
	  .stack = K_DOC_AUTH_ALONE, .args = "timeout=30", .agent = A("ignore"),
	  .want = PAM_PERM_DENIED, .max_ms = 1000, NOMSG, .root_only = 1 },
	{ .name = "doc auth line alone: safe + agent down is no success", .op = OP_AUTH,
	  .service = "sshd", .stack = K_DOC_AUTH_ALONE, .args = "timeout=30 failmode=safe",
	  .sock = S_NONE, .want = PAM_PERM_DENIED, .max_ms = 1000, NOMSG },
	{ .name = "doc auth + failing real auth: grant is no success", .op = OP_AUTH, .service = "sshd",
	  .stack = K_DOC_AUTH_DENY, .args = "timeout=30", .agent = A("allow"), .want = PAM_AUTH_ERR,
	  .max_ms = 1000, NOMSG, .root_only = 1 },
	{ .name = "doc auth + passing real auth: agent down dies", .op = OP_AUTH, .service = "sshd",
	  .stack = K_DOC_AUTH_PERMIT, .args = "timeout=30", .sock = S_NONE,
	  .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, NOMSG },
	{ .name = "doc auth + passing real auth: garbage dies", .op = OP_AUTH, .service = "sshd",
	  .stack = K_DOC_AUTH_PERMIT, .args = "timeout=30 failmode=safe", .agent = A("garbage"),
	  .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, NOMSG, .root_only = 1 },
	{ .name = "doc auth + passing real auth: approved", .op = OP_AUTH, .service = "sshd",
	  .stack = K_DOC_AUTH_PERMIT, .args = "timeout=5", .agent = A("file") " --wait allow",
	  .answers = { "r", "" }, .want = PAM_SUCCESS, .max_ms = 2000, NOMSG, .root_only = 1 },
	{ .name = "doc key-only auth: not gated passes", .op = OP_AUTH, .service = "sshd",
	  .stack = K_DOC_KEYONLY, .args = "timeout=30", .agent = A("ignore"), .want = PAM_SUCCESS,
	  .max_ms = 1000, NOMSG, .root_only = 1 },
	{ .name = "doc key-only auth: denied dies", .op = OP_AUTH, .service = "sshd",
	  .stack = K_DOC_KEYONLY, .args = "timeout=0", .agent = A("file"), .answers = { "r" },
	  .want = PAM_AUTH_ERR, .max_ms = 1000, NOMSG, .root_only = 1 },
	{ .name = "doc key-only auth: agent down dies", .op = OP_AUTH, .service = "sshd",
	  .stack = K_DOC_KEYONLY, .args = "timeout=30", .sock = S_NONE, .want = PAM_AUTHINFO_UNAVAIL,
	  .max_ms = 1000, NOMSG },
	{ .name = "doc key-only auth: bad socket dies", .op = OP_AUTH, .service = "sshd",
	  .stack = K_DOC_KEYONLY, .args = "timeout=30 failmode=safe", .sock = S_FILE,
	  .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, NOMSG },
	{ .name = "doc key-only auth: unknown argument dies", .op = OP_AUTH, .service = "sshd",
	  .stack = K_DOC_KEYONLY, .args = "timeout=30 failmode=open", .sock = S_NONE,
	  .want = PAM_SERVICE_ERR, .max_ms = 1000, NOMSG },
	{ .name = "doc account required: pending denies", .op = OP_ACCT, .service = "sshd",
	  .stack = K_DOC_ACCT, .agent = A("pending"), .want = PAM_PERM_DENIED, .max_ms = 1000, NOMSG,
	  .root_only = 1 },
	{ .name = "doc account required: agent down denies", .op = OP_ACCT, .service = "sudo",
	  .stack = K_DOC_ACCT, .sock = S_NONE, .want = PAM_AUTHINFO_UNAVAIL, .max_ms = 1000, NOMSG },
	{ .name = "doc session optional: agent down does not block", .op = OP_OPEN, .service = "sshd",
	  .stack = K_DOC_SESSION, .sock = S_NONE, .want = PAM_SUCCESS, .max_ms = 1000, NOMSG },

	/* ----- sessions ----- */
	{ .name = "session: open reported", .op = OP_OPEN, .service = "sshd", .agent = A("allow"),
	  .want = PAM_SUCCESS, .max_ms = 1000, .prompts = 0, .infos = 0, .errors = 0,
	  .log_has = { "REQ JIT/1 session_open | user=nobody | service=sshd | rhost=203.0.113.7 | tty=ssh | pid=" },
	  .root_only = 1 },
	{ .name = "session: close uses the session id", .op = OP_CLOSE, .service = "sshd",
	  .agent = A("allow"), .want = PAM_SUCCESS, .max_ms = 1000, NOMSG,
	  .log_has = { "REQ JIT/1 session_close | session=77 |" }, .root_only = 1 },
	{ .name = "session: agent down", .op = OP_OPEN, .service = "sshd", .sock = S_NONE,
	  .want = PAM_SESSION_ERR, .max_ms = 1000, .prompts = 0, .infos = 0, .errors = 0 },
	{ .name = "session: agent refuses", .op = OP_OPEN, .service = "sshd",
	  .agent = A("allow") " --session error", .want = PAM_SESSION_ERR, .max_ms = 1000, NOMSG,
	  .root_only = 1 },
	{ .name = "session: agent hangs", .op = OP_OPEN, .service = "sudo",
	  .agent = A("allow") " --session hang", .want = PAM_SESSION_ERR, .max_ms = 6500, .min_ms = 4900,
	  NOMSG, .root_only = 1 },
	{ .name = "session: root not reported", .op = OP_OPEN, .service = "sshd", .user = "root",
	  .agent = A("allow"), .want = IGNORED, .max_ms = 1000, NOMSG, .log_lacks = "REQ" },
};

/* Slow cases (they wait out a timeout) run at once in children, each with its
 * own folder; the rest run one after another here. */
static void run_all(struct run *R)
{
	size_t n = sizeof(cases) / sizeof(cases[0]);
	pid_t *kids = calloc(n, sizeof(pid_t));
	for (size_t i = 0; i < n; i++) {
		if (!is_slow(&cases[i]) || selected(R, &cases[i]) != 1)
			continue;
		case_paths(R, i);
		char out[400];
		snprintf(out, sizeof(out), "%s/out", R->cdir);
		fflush(stdout);
		pid_t pid = fork();
		if (pid == 0) {
			int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
			if (fd >= 0) {
				dup2(fd, 1);
				close(fd);
			}
			R->passed = R->failed = 0;
			run_case(R, &cases[i]);
			fflush(stdout);
			free(kids);
			exit(R->failed ? 1 : 0); /* exit(), not _exit(): LSan and valgrind check this child too */
		}
		kids[i] = pid;
	}
	for (size_t i = 0; i < n; i++) {
		int sel = selected(R, &cases[i]);
		if (sel == -1) {
			printf("skip %s (needs root)\n", cases[i].name);
			R->skipped++;
		}
		if (sel != 1 || is_slow(&cases[i]))
			continue;
		case_paths(R, i);
		run_case(R, &cases[i]);
		case_cleanup(R);
	}
	for (size_t i = 0; i < n; i++) {
		if (kids[i] <= 0)
			continue;
		int st = 0;
		waitpid(kids[i], &st, 0);
		snprintf(R->cdir, sizeof(R->cdir), "%s/c%zu", R->dir, i);
		char out[400];
		snprintf(out, sizeof(out), "%s/out", R->cdir);
		char *text = slurp(out);
		fputs(text, stdout);
		int printed_fail = strstr(text, "FAIL") != NULL;
		free(text);
		if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
			R->passed++;
		} else {
			R->failed++;
			if (WIFEXITED(st) && WEXITSTATUS(st) == 1 && !printed_fail)
				printf("FAIL %s: its child process reported errors (sanitizer/valgrind)\n",
				       cases[i].name);
			else if (!WIFEXITED(st))
				printf("FAIL %s: its child process died\n", cases[i].name);
		}
		case_cleanup(R);
	}
	free(kids);
}

/* ---------- against a real agent ---------- */

static int real_agent(struct run *R, const char *sock)
{
	const char *user = getenv("JIT_TEST_USER") ? getenv("JIT_TEST_USER") : "nobody";
	const char *expect = getenv("JIT_TEST_EXPECT");
	snprintf(R->sock, sizeof(R->sock), "%s", sock);
	struct tcase t = { .name = "real agent: account timeout=0", .op = OP_ACCT, .service = "sshd",
			   .user = user, .max_ms = 2000, .prompts = ANY, .infos = ANY, .errors = ANY };
	struct tcase s = { .name = "real agent: session open+close", .op = OP_CLOSE, .service = "sshd",
			   .user = user, .max_ms = 2000, .prompts = ANY, .infos = ANY, .errors = ANY,
			   .want = PAM_SUCCESS };
	case_paths(R, 0);
	snprintf(R->sock, sizeof(R->sock), "%s", sock);
	if (write_service(R, &t, sock) != 0)
		return 1;
	struct conv cv;
	memset(&cv, 0, sizeof(cv));
	long long t0 = now_ms();
	int rc = run_pam(R, &t, user, &cv);
	long long ms = now_ms() - t0;
	printf("real agent: account for %s: %s (%d) in %lld ms; messages: %s\n", user, pam_name(rc), rc, ms,
	       cv.text);
	int want_ok = rc == PAM_SUCCESS || rc == IGNORED || rc == PAM_PERM_DENIED;
	if (expect != NULL)
		want_ok = (strcmp(expect, "success") == 0 && rc == PAM_SUCCESS) ||
			  (strcmp(expect, "ignore") == 0 && rc == IGNORED) ||
			  (strcmp(expect, "perm_denied") == 0 && rc == PAM_PERM_DENIED);
	check(R, want_ok && ms <= t.max_ms, t.name, "got %s in %lld ms", pam_name(rc), ms);
	memset(&cv, 0, sizeof(cv));
	rc = run_pam(R, &s, user, &cv);
	check(R, rc == PAM_SUCCESS || rc == IGNORED, s.name, "got %s", pam_name(rc));
	case_cleanup(R);
	return 0;
}

int main(int argc, char **argv)
{
	struct run R;
	memset(&R, 0, sizeof(R));
	if (argc < 2) {
		fprintf(stderr, "usage: %s MODULE.so [FAKE_AGENT]\n", argv[0]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	R.module = argv[1];
	R.agent_bin = argc > 2 ? argv[2] : NULL;
	R.root = geteuid() == 0;
	R.only = getenv("JIT_TEST_ONLY");
	R.slack_ms = getenv("JIT_TEST_SLACK_MS") ? atol(getenv("JIT_TEST_SLACK_MS")) : 0;
	if (R.module[0] != '/') {
		fprintf(stderr, "MODULE.so must be an absolute path (PAM needs one)\n");
		return 2;
	}
	snprintf(R.dir, sizeof(R.dir), "/tmp/pam_jit_test.XXXXXX");
	if (mkdtemp(R.dir) == NULL) {
		perror("mkdtemp");
		return 2;
	}

	/* A user and a group it belongs to, for exempt_group. */
	if (R.root) {
		snprintf(R.exuser, sizeof(R.exuser), "daemon");
		snprintf(R.exgroup, sizeof(R.exgroup), "daemon");
	} else {
		struct passwd *pw = getpwuid(getuid());
		struct group *gr = getgrgid(getgid());
		snprintf(R.exuser, sizeof(R.exuser), "%s", pw ? pw->pw_name : "nobody");
		snprintf(R.exgroup, sizeof(R.exgroup), "%s", gr ? gr->gr_name : "nogroup");
		printf("note: not root: the socket is not root's, so most agent cases are skipped\n");
	}

	long long t0 = now_ms();
	const char *real = getenv("JIT_TEST_SOCKET");
	if (real != NULL && real[0] != '\0') {
		real_agent(&R, real);
		rmdir(R.dir);
	} else {
		if (R.agent_bin == NULL) {
			fprintf(stderr, "usage: %s MODULE.so FAKE_AGENT (or set JIT_TEST_SOCKET)\n", argv[0]);
			return 2;
		}
		if (R.only == NULL)
			unit_tests(&R);
		run_all(&R);
	}
	rmdir(R.dir);

	printf("%d passed, %d failed", R.passed, R.failed);
	if (R.skipped)
		printf(", %d skipped (not root)", R.skipped);
	printf(" in %.1f s\n", (double)(now_ms() - t0) / 1000.0);
	return R.failed ? 1 : 0;
}
