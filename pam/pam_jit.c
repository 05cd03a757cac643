/*
 * pam_jit.c - just-in-time access: asks jitd "may USER use SERVICE on this
 * host now?" and acts on the answer. It holds no policy.
 *
 *   account  the enforcement point: allow / ignore / file a request and deny
 *            at once (timeout=0) or wait for its decision (timeout=N).
 *   auth     the interactive flow: asks for a reason (sshd keyboard-
 *            interactive), tells the user the request id, waits. It never
 *            authenticates anyone: it must sit beside real authentication.
 *   session  reports session open/close to the agent (session optional).
 *
 * See pam_jit(8) and pam/README.md. Only pam_sm_* are exported (pam_jit.map).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <syslog.h>
#include <unistd.h>

#define PAM_SM_AUTH
#define PAM_SM_ACCOUNT
#define PAM_SM_SESSION
#include <security/pam_ext.h>
#include <security/pam_modules.h>

#include "jit_client.h"
#include "jit_proto.h"
#include "jit_sudo.h"

#define PUBLIC __attribute__((visibility("default")))

#define DEFAULT_SOCKET "/run/jit/jitd.sock"
#define MAX_TIMEOUT 3600u        /* the protocol's bound for wait */
#define MAX_USER 256u
#define MAX_REASON 500u          /* bytes of reason sent to the agent */
#define SESSION_DATA "pam_jit_session"

/* ---------- options ---------- */

struct jit_opts {
	const char *socket;       /* socket=PATH */
	unsigned timeout;         /* timeout=SECONDS, 0..3600 */
	int failmode_safe;        /* failmode=safe */
	const char *exempt_group; /* exempt_group=NAME */
	int debug;                /* debug */
};

enum { SEEN_SOCKET = 1, SEEN_TIMEOUT = 2, SEEN_FAILMODE = 4, SEEN_GROUP = 8, SEEN_DEBUG = 16 };

static int opt_value(const char *arg, const char *name, const char **val)
{
	size_t n = strlen(name);
	if (strncmp(arg, name, n) != 0 || arg[n] != '=')
		return 0;
	*val = arg + n + 1;
	return 1;
}

static int bad_opt(pam_handle_t *pamh, const char *arg, const char *why)
{
	pam_syslog(pamh, LOG_ERR, "bad module argument \"%s\": %s; refusing (fail closed)", arg, why);
	return PAM_SERVICE_ERR;
}

/* Fills o from argv. Anything unknown, malformed or repeated is an error. */
static int parse_opts(pam_handle_t *pamh, int argc, const char **argv, struct jit_opts *o)
{
	int seen = 0;
	memset(o, 0, sizeof(*o));
	o->socket = DEFAULT_SOCKET;

	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v;
		int bit;
		if (a == NULL)
			return bad_opt(pamh, "(null)", "empty argument");
		if (opt_value(a, "socket", &v)) {
			bit = SEEN_SOCKET;
			if (v[0] != '/' || strlen(v) >= 108)
				return bad_opt(pamh, a, "needs an absolute path shorter than 108 bytes");
			o->socket = v;
		} else if (opt_value(a, "timeout", &v)) {
			bit = SEEN_TIMEOUT;
			char *end = NULL;
			if (v[0] < '0' || v[0] > '9')
				return bad_opt(pamh, a, "needs whole seconds, 0 to 3600");
			errno = 0;
			unsigned long t = strtoul(v, &end, 10);
			if (errno != 0 || *end != '\0' || t > MAX_TIMEOUT)
				return bad_opt(pamh, a, "needs whole seconds, 0 to 3600");
			o->timeout = (unsigned)t;
		} else if (opt_value(a, "failmode", &v)) {
			bit = SEEN_FAILMODE;
			if (strcmp(v, "secure") == 0)
				o->failmode_safe = 0;
			else if (strcmp(v, "safe") == 0)
				o->failmode_safe = 1;
			else
				return bad_opt(pamh, a, "needs secure or safe");
		} else if (opt_value(a, "exempt_group", &v)) {
			bit = SEEN_GROUP;
			if (v[0] == '\0' || strlen(v) > 255)
				return bad_opt(pamh, a, "needs a group name");
			for (const char *p = v; *p; p++)
				if ((unsigned char)*p <= ' ' || *p == 0x7f)
					return bad_opt(pamh, a, "needs a group name");
			o->exempt_group = v;
		} else if (strcmp(a, "debug") == 0) {
			bit = SEEN_DEBUG;
			o->debug = 1;
		} else {
			return bad_opt(pamh, a, "unknown argument (known: socket=, timeout=, failmode=, "
						"exempt_group=, debug)");
		}
		if (seen & bit)
			return bad_opt(pamh, a, "given twice");
		seen |= bit;
	}
	return PAM_SUCCESS;
}

/* ---------- talking to the user ---------- */

static void say(pam_handle_t *pamh, int style, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Shows one message; the module's own text only (agent text goes through
 * jit_sanitize first). Conversation errors are not fatal for a message. */
static void say(pam_handle_t *pamh, int style, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	(void)pam_prompt(pamh, style, NULL, "%s", buf);
}

/* ---------- who is exempt ---------- */

/* getpwnam_r/getgrnam_r with a buffer that grows on ERANGE. */
static void *nss_buf(size_t *len)
{
	*len = *len ? *len * 2 : 16384;
	return *len > (1u << 22) ? NULL : malloc(*len);
}

/* 1: exempt (why says why), 0: gated, <0: PAM error code negated. */
static int check_exempt(pam_handle_t *pamh, const struct jit_opts *o, const char *user,
			const char **why)
{
	struct passwd pw, *pwp = NULL;
	struct group gr, *grp = NULL;
	char *buf = NULL;
	size_t blen = 0;
	gid_t *groups = NULL;
	int rc = -PAM_SYSTEM_ERR, e;

	for (;;) {
		free(buf);
		if ((buf = nss_buf(&blen)) == NULL)
			goto out;
		e = getpwnam_r(user, &pw, buf, blen, &pwp);
		if (e != ERANGE)
			break;
	}
	if (pwp == NULL) {
		if (e == 0 || e == ENOENT || e == ESRCH || e == EBADF || e == EPERM) {
			pam_syslog(pamh, LOG_NOTICE, "unknown user %s", user);
			rc = -PAM_USER_UNKNOWN;
		} else {
			pam_syslog(pamh, LOG_ERR, "cannot look up user %s: %s", user, strerror(e));
		}
		goto out;
	}
	if (pw.pw_uid == 0) {
		*why = "uid 0";
		rc = 1;
		goto out;
	}
	gid_t base = pw.pw_gid;
	rc = 0;
	if (o->exempt_group == NULL)
		goto out;

	char *ubuf = strdup(user);
	if (ubuf == NULL) {
		rc = -PAM_BUF_ERR;
		goto out;
	}
	blen = 0;
	for (;;) {
		free(buf);
		if ((buf = nss_buf(&blen)) == NULL) {
			free(ubuf);
			rc = -PAM_SYSTEM_ERR;
			goto out;
		}
		e = getgrnam_r(o->exempt_group, &gr, buf, blen, &grp);
		if (e != ERANGE)
			break;
	}
	if (grp == NULL) {
		pam_syslog(pamh, LOG_WARNING, "exempt_group %s does not exist: nobody is exempt by group",
			   o->exempt_group);
		free(ubuf);
		goto out;
	}
	gid_t want = gr.gr_gid;
	int ng = 64;
	for (int tries = 0; tries < 8; tries++) {
		gid_t *g = realloc(groups, (size_t)ng * sizeof(gid_t));
		if (g == NULL)
			break;
		groups = g;
		int n = ng;
		if (getgrouplist(ubuf, base, groups, &n) >= 0) {
			for (int i = 0; i < n; i++)
				if (groups[i] == want) {
					*why = "member of exempt_group";
					rc = 1;
				}
			break;
		}
		ng = n > ng ? n : ng * 2;
	}
	free(ubuf);
out:
	free(groups);
	if (buf != NULL) {
		explicit_bzero(buf, blen);
		free(buf);
	}
	return rc;
}

/* ---------- the gate (auth and account) ---------- */

enum stage { ST_AUTH, ST_ACCOUNT };

struct gate {
	pam_handle_t *pamh;
	int flags;
	struct jit_opts o;
	enum stage stage;
	const char *user, *service, *rhost, *tty;
	int is_sudo;
	char err[256];
	char shown[24];  /* the request id approvers see (a fleet host: the control plane's) */
	char where[200]; /* "" or " on the control plane URL" */
};

static const char *stage_name(const struct gate *g)
{
	return g->stage == ST_AUTH ? "auth" : "account";
}

static int deny_code(const struct gate *g)
{
	return g->stage == ST_AUTH ? PAM_AUTH_ERR : PAM_PERM_DENIED;
}

static int valid_name(const char *s)
{
	if (s == NULL || s[0] == '\0' || strlen(s) > MAX_USER)
		return 0;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return 0;
	return 1;
}

static const char *item(pam_handle_t *pamh, int type)
{
	const void *v = NULL;
	if (pam_get_item(pamh, type, &v) != PAM_SUCCESS || v == NULL || ((const char *)v)[0] == '\0')
		return NULL;
	return v;
}

/* The agent gave no usable answer (jrc < 0). Applies failmode. */
static int agent_failed(struct gate *g, int jrc)
{
	if (jrc == JIT_E_INTR) {
		pam_syslog(g->pamh, LOG_NOTICE, "%s: user %s stopped waiting (signal); denied",
			   stage_name(g), g->user);
		return deny_code(g);
	}
	if (jrc == JIT_E_UNREACHABLE && g->o.failmode_safe) {
		pam_syslog(g->pamh, LOG_ALERT,
			   "%s: access agent unreachable (%s); failmode=safe lets user %s (service %s, "
			   "rhost %s) through WITHOUT a grant",
			   stage_name(g), g->err, g->user, g->service, g->rhost ? g->rhost : "-");
		/* account allows; auth steps aside so that it never succeeds on its own */
		return g->stage == ST_ACCOUNT ? PAM_SUCCESS : PAM_IGNORE;
	}
	pam_syslog(g->pamh, jrc == JIT_E_INSECURE ? LOG_CRIT : LOG_ERR,
		   "%s: denying user %s: %s", stage_name(g), g->user, g->err);
	switch (jrc) {
	case JIT_E_UNREACHABLE:
		say(g->pamh, PAM_ERROR_MSG,
		    "jit: access denied: the access agent (jitd) is down or not answering. "
		    "Ask an administrator to check jitd.");
		break;
	case JIT_E_INSECURE:
		say(g->pamh, PAM_ERROR_MSG,
		    "jit: access denied: the access agent's socket failed a safety check "
		    "(see the system log).");
		break;
	default:
		say(g->pamh, PAM_ERROR_MSG,
		    "jit: access denied: the access agent (jitd) sent a reply this module "
		    "cannot use (see the system log).");
		break;
	}
	return PAM_AUTHINFO_UNAVAIL;
}

/* The agent answered "JIT/1 error". */
static int agent_error_reply(struct gate *g, const struct jit_reply *r)
{
	char code[64], msg[JIT_MAX_SHOWN + 8];
	jit_sanitize(r->code ? r->code : "?", code, sizeof(code));
	jit_sanitize(r->message ? r->message : "", msg, sizeof(msg));
	pam_syslog(g->pamh, LOG_ERR, "%s: the agent refused the question for user %s: %s: %s",
		   stage_name(g), g->user, code, msg);
	say(g->pamh, PAM_ERROR_MSG, "jit: access denied: %s", msg[0] ? msg : code);
	if (r->code && (strcmp(r->code, "busy") == 0 || strcmp(r->code, "internal") == 0))
		return PAM_AUTHINFO_UNAVAIL;
	return deny_code(g);
}

static void show_agent_message(struct gate *g, int style, const struct jit_reply *r)
{
	char msg[JIT_MAX_SHOWN + 8];
	if (r->message == NULL || jit_sanitize(r->message, msg, sizeof(msg)) == 0)
		return;
	say(g->pamh, style, "jit: %s", msg);
}

extern char **environ;

/* NAME's value in the process environment as the caller handed it (environ is not hooked by sudo). */
static const char *raw_env(const char *name)
{
	size_t n = strlen(name);
	for (char **e = environ; e != NULL && *e != NULL; e++)
		if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
			return *e + n + 1;
	return NULL;
}

/*
 * sudo 1.9 hooks getenv() for the modules it loads: at the account stage getenv("SUDO_COMMAND") answers
 * from the environment sudo builds for the command (its resolved path and arguments), while environ still
 * holds what the caller exported. Only a value that differs from the caller's own is sudo's.
 */
static void add_sudo_command(struct jit_req *req)
{
	const char *hooked = getenv("SUDO_COMMAND");
	const char *raw = raw_env("SUDO_COMMAND");
	if (hooked == NULL || (raw != NULL && strcmp(hooked, raw) == 0))
		return;
	size_t n = strnlen(hooked, JIT_SUDO_MAX_CMDLINE + 1);
	if (n == 0 || n > JIT_SUDO_MAX_CMDLINE)
		return;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)hooked[i] < 0x20 || hooked[i] == 0x7f)
			return;
	jit_req_add(req, "sudo_command", hooked);
}

/*
 * Inside sudo: what it is about to run and as whom, from its own argv (see jit_sudo.h), so that the
 * agent admits the use only under a grant that covers that command line and run-as user. Bounded
 * reads; anything this module cannot be sure of is sent as unsure=WHY, never guessed.
 */
static void add_sudo_fields(struct gate *g, struct jit_req *req)
{
	struct jit_sudo *s = malloc(sizeof(*s));
	char *buf = malloc(JIT_SUDO_MAX_CMDLINE + 1);
	char exe[PATH_MAX];
	const char *why = NULL;

	if (s != NULL)
		memset(s, 0, sizeof(*s));
	if (s == NULL || buf == NULL) {
		jit_req_add(req, "sudo_mode", "unsure");
		jit_req_add(req, "unsure", "out of memory reading sudo's command line");
		goto out;
	}
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0) {
		why = "cannot tell which program is running (/proc/self/exe)";
	} else {
		exe[n] = '\0';
		const char *b = strrchr(exe, '/');
		if (strcmp(b ? b + 1 : exe, "sudo") != 0)
			why = "the PAM service is sudo's but the program is not sudo";
	}
	size_t len = 0;
	int truncated = 0;
	if (why == NULL) {
		int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			why = "cannot read sudo's command line (/proc/self/cmdline)";
		} else {
			while (len < JIT_SUDO_MAX_CMDLINE + 1) {
				ssize_t r = read(fd, buf + len, JIT_SUDO_MAX_CMDLINE + 1 - len);
				if (r < 0 && errno == EINTR)
					continue;
				if (r <= 0)
					break;
				len += (size_t)r;
			}
			close(fd);
			truncated = len > JIT_SUDO_MAX_CMDLINE;
		}
	}
	if (why == NULL) {
		jit_sudo_parse(buf, truncated ? JIT_SUDO_MAX_CMDLINE : len, truncated, s);
		why = s->unsure;
	}
	if (why != NULL) {
		jit_req_add(req, "sudo_mode", "unsure");
		jit_req_add(req, "unsure", why);
		if (s->unsure != NULL && s->runas[0] != '\0')
			jit_req_add(req, "runas", s->runas); /* the run-as user is known even so */
		if (g->o.debug)
			pam_syslog(g->pamh, LOG_DEBUG, "sudo use by %s: unsure of the command: %s", g->user, why);
		goto out;
	}
	if (s->mode == JIT_SUDO_NOCMD) {
		jit_req_add(req, "sudo_mode", "none");
		goto out;
	}
	jit_req_add(req, "sudo_mode", "run");
	jit_req_add(req, "runas", s->runas);
	jit_req_add(req, "command", s->cmd);
	add_sudo_command(req);
	if (s->cmd[0] != '/') {
		/* A bare name: sudo searches secure_path, or the caller's PATH when none is set. */
		const char *path = getenv("PATH");
		if (path != NULL && strlen(path) <= 4096)
			jit_req_add(req, "path", path);
	}
out:
	if (buf != NULL) {
		explicit_bzero(buf, JIT_SUDO_MAX_CMDLINE + 1);
		free(buf);
	}
	if (s != NULL) {
		explicit_bzero(s, sizeof(*s));
		free(s);
	}
}

static int do_check(struct gate *g, int file, const char *reason, struct jit_reply *rep)
{
	struct jit_req req;
	int rc = jit_req_init(&req, "check");
	if (rc == JIT_OK) {
		jit_req_add(&req, "user", g->user);
		jit_req_add(&req, "service", g->service);
		jit_req_add(&req, "rhost", g->rhost);
		jit_req_add(&req, "tty", g->tty);
		jit_req_add_uint(&req, "pid", (unsigned long)getpid());
		jit_req_add(&req, "file", file ? "1" : "0");
		jit_req_add(&req, "reason", reason);
		if (g->is_sudo) {
			/* Only the account stage's check may spend a use of a use-limited grant. */
			jit_req_add(&req, "stage", g->stage == ST_ACCOUNT ? "account" : "auth");
			add_sudo_fields(g, &req);
		}
		rc = jit_call(g->o.socket, &req, JIT_IO_TIMEOUT_MS, 0, rep, g->err, sizeof(g->err));
	} else {
		snprintf(g->err, sizeof(g->err), "out of memory");
	}
	jit_req_free(&req);
	return rc;
}

/* Whether a numeric host and port match a socket address (IPv4-mapped IPv6 as IPv4, as sshd prints it). */
static int addr_is(const struct sockaddr_storage *sa, socklen_t len, const char *host, const char *port)
{
	char h[NI_MAXHOST], p[NI_MAXSERV];
	if (sa->ss_family != AF_INET && sa->ss_family != AF_INET6)
		return 0;
	if (getnameinfo((const struct sockaddr *)sa, len, h, sizeof(h), p, sizeof(p),
			NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		return 0;
	const char *hh = strncmp(h, "::ffff:", 7) == 0 && strchr(h + 7, '.') ? h + 7 : h;
	return strcmp(hh, host) == 0 && strcmp(p, port) == 0;
}

/*
 * sshd's connection to the client, which this process (sshd's PAM child) inherited: the socket whose
 * addresses are the ones sshd put in SSH_CONNECTION ("CLIENT-IP CLIENT-PORT SERVER-IP SERVER-PORT").
 * The module only watches it for a hang-up, never reads or writes it. -1 outside sshd or if not found.
 */
static int ssh_client_fd(struct gate *g)
{
	const char *sc = pam_getenv(g->pamh, "SSH_CONNECTION");
	char rh[NI_MAXHOST], rp[NI_MAXSERV], lh[NI_MAXHOST], lp[NI_MAXSERV];
	int found = -1;
	if (sc == NULL || sscanf(sc, "%1024s %31s %1024s %31s", rh, rp, lh, lp) != 4)
		return -1;
	DIR *d = opendir("/proc/self/fd");
	if (d == NULL)
		return -1;
	struct dirent *e;
	while (found < 0 && (e = readdir(d)) != NULL) {
		char *end = NULL;
		long fd = strtol(e->d_name, &end, 10);
		if (end == e->d_name || *end != '\0' || fd < 0 || fd == dirfd(d) || fd > INT_MAX)
			continue;
		struct sockaddr_storage peer, local;
		socklen_t pl = sizeof(peer), ll = sizeof(local);
		if (getpeername((int)fd, (struct sockaddr *)&peer, &pl) != 0 ||
		    getsockname((int)fd, (struct sockaddr *)&local, &ll) != 0)
			continue;
		if (addr_is(&peer, pl, rh, rp) && addr_is(&local, ll, lh, lp))
			found = (int)fd;
	}
	closedir(d);
	return found;
}

/* Waits for request id. Returns a PAM code. */
static int do_wait(struct gate *g, const char *id)
{
	struct jit_req req;
	struct jit_reply r;
	int rc = jit_req_init(&req, "wait");
	memset(&r, 0, sizeof(r));
	/* While sshd's PAM child waits here, sshd itself is blocked on it and cannot notice that the client
	 * went away: the module watches the client's connection, so a dropped client ends the wait at once
	 * (and, by closing with cancel_on_close=1, cancels the request). */
	int client = ssh_client_fd(g);
	if (rc == JIT_OK) {
		jit_req_add(&req, "request", id);
		jit_req_add_uint(&req, "timeout", g->o.timeout);
		jit_req_add(&req, "cancel_on_close", "1");
		rc = jit_call_watching(g->o.socket, &req, (int)g->o.timeout * 1000 + JIT_WAIT_GRACE_MS, 1,
				       client, &r, g->err, sizeof(g->err));
	} else {
		snprintf(g->err, sizeof(g->err), "out of memory");
	}
	jit_req_free(&req);
	if (rc == JIT_E_GONE) {
		pam_syslog(g->pamh, LOG_NOTICE, "%s: the ssh client of user %s went away while waiting; "
			   "request %s cancelled", stage_name(g), g->user, id);
		return deny_code(g);
	}
	if (rc != JIT_OK)
		return agent_failed(g, rc);

	if (r.is_error) {
		rc = agent_error_reply(g, &r);
	} else if (r.decision && strcmp(r.decision, "allow") == 0) {
		char until[64];
		jit_sanitize(r.expires_at ? r.expires_at : "?", until, sizeof(until));
		pam_syslog(g->pamh, LOG_NOTICE, "%s: request %s for user %s approved while waiting",
			   stage_name(g), id, g->user);
		if (!(g->flags & PAM_SILENT))
			say(g->pamh, PAM_TEXT_INFO, "jit: request %s approved; access until %s.", g->shown[0] ? g->shown : id, until);
		rc = PAM_SUCCESS;
	} else if (r.decision && strcmp(r.decision, "deny") == 0) {
		char state[32];
		jit_sanitize(r.state ? r.state : "denied", state, sizeof(state));
		pam_syslog(g->pamh, LOG_NOTICE, "%s: request %s for user %s ended: %s", stage_name(g), id,
			   g->user, state);
		say(g->pamh, PAM_ERROR_MSG, "jit: request %s was not approved (%s); access denied.",
		    g->shown[0] ? g->shown : id, state);
		show_agent_message(g, PAM_ERROR_MSG, &r);
		rc = deny_code(g);
	} else if (r.decision && strcmp(r.decision, "pending") == 0) {
		pam_syslog(g->pamh, LOG_NOTICE, "%s: request %s for user %s: no decision within %u s",
			   stage_name(g), id, g->user, g->o.timeout);
		say(g->pamh, PAM_ERROR_MSG,
		    "jit: no decision on request %s within %u s; access denied. An approver runs "
		    "'jit approve %s'%s; then try again.", g->shown[0] ? g->shown : id, g->o.timeout,
		    g->shown[0] ? g->shown : id, g->where);
		rc = deny_code(g);
	} else {
		snprintf(g->err, sizeof(g->err), "wait reply without a known decision");
		rc = agent_failed(g, JIT_E_PROTO);
	}
	jit_reply_free(&r);
	return rc;
}

/* Copies what the user typed, with control characters made '?', capped. */
static char *clean_reason(const char *in)
{
	size_t n = strnlen(in, MAX_REASON);
	while (n > 0 && !jit_utf8_valid((const unsigned char *)in, n))
		n--; /* do not cut a character in half; drops a bad tail */
	char *s = malloc(n + 1);
	if (s == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];
		s[i] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
	}
	s[n] = '\0';
	return s;
}

/* Acts on a check reply; *pending_id is set when the caller must wait. */
static int check_outcome(struct gate *g, struct jit_reply *r, char **pending_id)
{
	*pending_id = NULL;
	if (r->is_error)
		return agent_error_reply(g, r);
	const char *d = r->decision ? r->decision : "";
	if (strcmp(d, "allow") == 0) {
		if (g->o.debug)
			pam_syslog(g->pamh, LOG_DEBUG, "%s: user %s allowed by grant %s", stage_name(g),
				   g->user, r->grant ? r->grant : "?");
		return PAM_SUCCESS;
	}
	if (strcmp(d, "ignore") == 0) {
		if (g->o.debug)
			pam_syslog(g->pamh, LOG_DEBUG, "%s: user %s not gated by policy", stage_name(g),
				   g->user);
		return PAM_IGNORE;
	}
	if (strcmp(d, "deny") == 0) {
		pam_syslog(g->pamh, LOG_NOTICE, "%s: user %s denied by the agent", stage_name(g), g->user);
		char msg[JIT_MAX_SHOWN + 8];
		if (r->message && jit_sanitize(r->message, msg, sizeof(msg)) > 0)
			say(g->pamh, PAM_ERROR_MSG, "jit: access denied: %s", msg);
		else
			say(g->pamh, PAM_ERROR_MSG, "jit: access denied: no grant covers %s for you here.",
			    g->service);
		return deny_code(g);
	}
	if (strcmp(d, "pending") == 0) {
		if (!jit_id_valid(r->request)) {
			snprintf(g->err, sizeof(g->err), "pending reply without a valid request id");
			return agent_failed(g, JIT_E_PROTO);
		}
		*pending_id = r->request;
		return PAM_INCOMPLETE;
	}
	snprintf(g->err, sizeof(g->err), "check reply without a known decision");
	return agent_failed(g, JIT_E_PROTO);
}

/* The id approvers see and where they decide: on a fleet host the agent names the control plane's id and
 * URL (approve_id, approve_at); otherwise it is this host's request id, decided here. */
static void approver_hint(struct gate *g, const struct jit_reply *r, const char *id)
{
	char at[160];
	g->where[0] = '\0';
	if (r != NULL && jit_id_valid(r->approve_id)) {
		snprintf(g->shown, sizeof(g->shown), "%s", r->approve_id);
		if (r->approve_at && jit_sanitize(r->approve_at, at, sizeof(at)) > 0)
			snprintf(g->where, sizeof(g->where), " on the control plane %s", at);
	} else {
		snprintf(g->shown, sizeof(g->shown), "%s", id);
	}
}

/* Request id is pending: deny at once (timeout=0) or tell the user and wait. */
static int pending(struct gate *g, const struct jit_reply *r, const char *id)
{
	approver_hint(g, r, id);
	const char *shown = g->shown, *where = g->where;
	pam_syslog(g->pamh, LOG_NOTICE, "%s: user %s (service %s, rhost %s) has request %s pending",
		   stage_name(g), g->user, g->service, g->rhost ? g->rhost : "-", id);
	if (g->o.timeout == 0) {
		show_agent_message(g, PAM_TEXT_INFO, r);
		say(g->pamh, PAM_ERROR_MSG,
		    "jit: access needs approval. Request %s is waiting: an approver runs "
		    "'jit approve %s'%s. Try again once it is approved.", shown, shown, where);
		return deny_code(g);
	}
	if (g->stage == ST_AUTH && !g->is_sudo) {
		/* sshd holds PAM_TEXT_INFO until the module returns; a prompt is shown at once. */
		char *resp = NULL;
		int prc = pam_prompt(g->pamh, PAM_PROMPT_ECHO_ON, &resp,
				     "jit: request %s is waiting for approval (an approver runs "
				     "'jit approve %s'%s).\nPress Enter to wait up to %u s (Ctrl-C cancels): ",
				     shown, shown, where, g->o.timeout);
		if (resp != NULL) {
			explicit_bzero(resp, strlen(resp));
			free(resp);
		}
		if (prc != PAM_SUCCESS) {
			pam_syslog(g->pamh, LOG_NOTICE, "%s: conversation failed (%s); not waiting",
				   stage_name(g), pam_strerror(g->pamh, prc));
			return deny_code(g);
		}
	} else {
		say(g->pamh, PAM_TEXT_INFO,
		    "jit: request %s is waiting for approval (an approver runs 'jit approve %s'%s). "
		    "Waiting up to %u s; Ctrl-C cancels.", shown, shown, where, g->o.timeout);
	}
	return do_wait(g, id);
}

static int gate_init(struct gate *g, pam_handle_t *pamh, int flags, int argc, const char **argv,
		     enum stage stage)
{
	memset(g, 0, sizeof(*g));
	g->pamh = pamh;
	g->flags = flags;
	g->stage = stage;
	int rc = parse_opts(pamh, argc, argv, &g->o);
	if (rc != PAM_SUCCESS)
		return rc;
	rc = pam_get_user(pamh, &g->user, NULL);
	if (rc != PAM_SUCCESS || !valid_name(g->user)) {
		pam_syslog(pamh, LOG_NOTICE, "no usable user name");
		return rc == PAM_SUCCESS ? PAM_USER_UNKNOWN : rc;
	}
	g->service = item(pamh, PAM_SERVICE);
	if (g->service == NULL) {
		pam_syslog(pamh, LOG_ERR, "no PAM service name");
		return PAM_SERVICE_ERR;
	}
	g->rhost = item(pamh, PAM_RHOST);
	g->tty = item(pamh, PAM_TTY);
	g->is_sudo = strncmp(g->service, "sudo", 4) == 0;
	return PAM_SUCCESS;
}

/* 1 and logs when the user passes without the agent; 0 gated; <0 error. */
/*
 * Tells the agent, best effort, that an exempt user passed, so the audit trail shows every break-glass
 * use. Never required: an unreachable agent fails at connect() at once, and a hung one costs at most
 * the short reply bound below. The answer does not change the decision.
 */
static void report_exempt(struct gate *g, const char *why)
{
	struct jit_req req;
	struct jit_reply r;

	memset(&req, 0, sizeof(req));
	memset(&r, 0, sizeof(r));
	if (jit_req_init(&req, "note") != JIT_OK)
		goto out;
	jit_req_add(&req, "kind", "exempt");
	jit_req_add(&req, "user", g->user);
	jit_req_add(&req, "service", g->service);
	if (g->rhost != NULL)
		jit_req_add(&req, "rhost", g->rhost);
	if (g->tty != NULL)
		jit_req_add(&req, "tty", g->tty);
	jit_req_add(&req, "why", why);
	if (jit_call(g->o.socket, &req, 1000, 0, &r, g->err, sizeof(g->err)) != JIT_OK && g->o.debug)
		pam_syslog(g->pamh, LOG_DEBUG, "exempt pass not reported to jitd: %s", g->err);
out:
	jit_reply_free(&r);
	jit_req_free(&req);
}

static int exempt(struct gate *g, int log_pass)
{
	const char *why = NULL;
	int e = check_exempt(g->pamh, &g->o, g->user, &why);
	if (e == 1 && log_pass) {
		pam_syslog(g->pamh, LOG_NOTICE,
			   "%s: user %s is exempt (%s): passing without the agent (service %s, rhost %s, "
			   "tty %s)",
			   stage_name(g), g->user, why, g->service, g->rhost ? g->rhost : "-",
			   g->tty ? g->tty : "-");
		report_exempt(g, why);
	}
	return e;
}

/*
 * Whether the user has proven who they are before this auth stack runs; the auth stage files nothing
 * otherwise (the account stage, which runs only after authentication, decides then). sshd (OpenSSH 7.6 and
 * later) puts the methods that already passed in SSH_AUTH_INFO_0 ("publickey ssh-ed25519 AAAA..."): empty
 * means no credential was checked yet, whatever AuthenticationMethods says. Inside sudo the user is the
 * invoking user, whom the kernel names. Anywhere else the module cannot know, so it assumes not.
 */
static int authenticated_already(const struct gate *g)
{
	if (g->is_sudo)
		return 1;
	const char *info = pam_getenv(g->pamh, "SSH_AUTH_INFO_0");
	if (info == NULL)
		return 0;
	while (*info == ' ' || *info == '\t' || *info == '\n')
		info++;
	return *info != '\0';
}

static int gate(pam_handle_t *pamh, int flags, int argc, const char **argv, enum stage stage)
{
	struct gate g;
	struct jit_reply r;
	char *reason = NULL, *id = NULL;
	int rc = PAM_AUTH_ERR, jrc;

	memset(&r, 0, sizeof(r));
	rc = gate_init(&g, pamh, flags, argc, argv, stage);
	if (rc != PAM_SUCCESS)
		goto out;
	if (stage == ST_AUTH && !authenticated_already(&g)) {
		pam_syslog(pamh, LOG_INFO, "auth: user %s (service %s, rhost %s) has not authenticated yet: "
			   "nothing asked or filed; the account stage decides", g.user, g.service,
			   g.rhost ? g.rhost : "-");
		rc = PAM_IGNORE;
		goto out;
	}
	int e = exempt(&g, 1);
	if (e != 0) {
		rc = e == 1 ? PAM_IGNORE : -e;
		goto out;
	}

	if (stage == ST_ACCOUNT) {
		jrc = do_check(&g, 1, NULL, &r);
		if (jrc != JIT_OK) {
			rc = agent_failed(&g, jrc);
			goto out;
		}
	} else {
		/* Ask first without filing: a grant or a pending request needs no reason. */
		jrc = do_check(&g, 0, NULL, &r);
		if (jrc != JIT_OK) {
			rc = agent_failed(&g, jrc);
			goto out;
		}
		if (!r.is_error && r.decision && strcmp(r.decision, "deny") == 0) {
			jit_reply_free(&r);
			if (!g.is_sudo) {
				char *resp = NULL;
				int prc = pam_prompt(pamh, PAM_PROMPT_ECHO_ON, &resp,
						     "jit: access to this host needs an approved request.\n"
						     "Reason for access: ");
				if (prc != PAM_SUCCESS) {
					if (resp != NULL) {
						explicit_bzero(resp, strlen(resp));
						free(resp);
					}
					pam_syslog(pamh, LOG_NOTICE, "auth: conversation failed (%s)",
						   pam_strerror(pamh, prc));
					rc = PAM_AUTH_ERR;
					goto out;
				}
				if (resp != NULL) {
					reason = clean_reason(resp);
					explicit_bzero(resp, strlen(resp));
					free(resp);
					if (reason == NULL) {
						rc = PAM_BUF_ERR;
						goto out;
					}
				}
			}
			jrc = do_check(&g, 1, reason && reason[0] ? reason : NULL, &r);
			if (jrc != JIT_OK) {
				rc = agent_failed(&g, jrc);
				goto out;
			}
		}
	}

	rc = check_outcome(&g, &r, &id);
	if (rc == PAM_INCOMPLETE) {
		rc = pending(&g, &r, id);
		if (rc == PAM_SUCCESS && stage == ST_ACCOUNT && g.is_sudo) {
			/*
			 * Approved while waiting: the use itself is admitted by a fresh check, which matches this
			 * command against the new grant and spends a use of a use-limited one.
			 */
			jit_reply_free(&r);
			memset(&r, 0, sizeof(r));
			jrc = do_check(&g, 0, NULL, &r);
			if (jrc != JIT_OK) {
				rc = agent_failed(&g, jrc);
				goto out;
			}
			rc = check_outcome(&g, &r, &id);
			if (rc == PAM_INCOMPLETE)
				rc = deny_code(&g);
		}
	}
out:
	jit_reply_free(&r);
	if (reason != NULL) {
		explicit_bzero(reason, strlen(reason));
		free(reason);
	}
	/* Whatever happened above, only these leave the module. */
	if (rc == PAM_INCOMPLETE)
		rc = PAM_AUTH_ERR;
	return rc;
}

PUBLIC int pam_sm_authenticate(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	return gate(pamh, flags, argc, argv, ST_AUTH);
}

PUBLIC int pam_sm_setcred(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	(void)flags;
	struct jit_opts o;
	int rc = parse_opts(pamh, argc, argv, &o);
	/* No credentials to set: step aside (never PAM_SUCCESS for doing nothing). */
	return rc == PAM_SUCCESS ? PAM_IGNORE : rc;
}

PUBLIC int pam_sm_acct_mgmt(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	return gate(pamh, flags, argc, argv, ST_ACCOUNT);
}

/* ---------- sessions ---------- */

static void free_session_id(pam_handle_t *pamh, void *data, int error_status)
{
	(void)pamh;
	(void)error_status;
	free(data);
}

static int session(pam_handle_t *pamh, int flags, int argc, const char **argv, int open)
{
	struct gate g;
	struct jit_req req;
	struct jit_reply r;
	int rc = PAM_SESSION_ERR, jrc;
	const char *what = open ? "session_open" : "session_close";

	memset(&req, 0, sizeof(req));
	memset(&r, 0, sizeof(r));
	rc = gate_init(&g, pamh, flags, argc, argv, ST_ACCOUNT);
	if (rc != PAM_SUCCESS) {
		rc = rc == PAM_SERVICE_ERR ? PAM_SERVICE_ERR : PAM_SESSION_ERR;
		goto out;
	}
	int e = exempt(&g, 0);
	if (e != 0) {
		if (e == 1 && g.o.debug)
			pam_syslog(pamh, LOG_DEBUG, "%s: user %s exempt; not reported", what, g.user);
		rc = e == 1 ? PAM_IGNORE : PAM_SESSION_ERR;
		goto out;
	}
	const void *data = NULL;
	const char *sid = NULL;
	if (!open && pam_get_data(pamh, SESSION_DATA, &data) == PAM_SUCCESS && data != NULL)
		sid = data;

	if (jit_req_init(&req, what) != JIT_OK) {
		rc = PAM_BUF_ERR;
		goto out;
	}
	if (sid != NULL) {
		jit_req_add(&req, "session", sid);
	} else {
		jit_req_add(&req, "user", g.user);
		jit_req_add(&req, "service", g.service);
		if (open) {
			jit_req_add(&req, "rhost", g.rhost);
			jit_req_add(&req, "tty", g.tty);
		}
		jit_req_add_uint(&req, "pid", (unsigned long)getpid());
	}
	jrc = jit_call(g.o.socket, &req, JIT_IO_TIMEOUT_MS, 0, &r, g.err, sizeof(g.err));
	if (jrc != JIT_OK) {
		pam_syslog(pamh, LOG_ERR, "%s for user %s not reported: %s", what, g.user, g.err);
		rc = PAM_SESSION_ERR;
		goto out;
	}
	if (r.is_error) {
		char code[64];
		jit_sanitize(r.code ? r.code : "?", code, sizeof(code));
		pam_syslog(pamh, LOG_ERR, "%s for user %s refused by the agent: %s", what, g.user, code);
		rc = PAM_SESSION_ERR;
		goto out;
	}
	if (open && jit_id_valid(r.session)) {
		char *copy = strdup(r.session);
		if (copy == NULL || pam_set_data(pamh, SESSION_DATA, copy, free_session_id) != PAM_SUCCESS)
			free(copy);
	}
	if (g.o.debug)
		pam_syslog(pamh, LOG_DEBUG, "%s for user %s reported (session %s)", what, g.user,
			   open ? (r.session && jit_id_valid(r.session) ? r.session : "?") : (sid ? sid : "-"));
	rc = PAM_SUCCESS;
out:
	jit_reply_free(&r);
	jit_req_free(&req);
	return rc;
}

PUBLIC int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	return session(pamh, flags, argc, argv, 1);
}

PUBLIC int pam_sm_close_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	return session(pamh, flags, argc, argv, 0);
}
