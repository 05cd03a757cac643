/*
 * jit_sudo.c - parses sudo's argv the way sudo 1.9.13's parse_args() does
 * (getopt_long with "+Aa:BbC:c:D:Eeg:Hh::iKklNnPp:R:r:SsT:t:U:u:Vv" and its
 * long options), modelling only options that change neither what runs nor as
 * whom, plus -u. Everything else is reported as unsure, so the agent admits
 * it only under a grant for all commands. See jit_sudo.h.
 */
#include "jit_sudo.h"

#include <string.h>

/* Short options sudo accepts. 'a' = takes an argument, 'f' = flag. */
struct sopt {
	char c;
	char kind;        /* 'a' argument, 'f' flag */
	const char *why;  /* NULL: modelled; else why it makes the module unsure */
	int nocmd;        /* this option means "run nothing" */
	int runas;        /* with why: the run-as user is not known either */
};

static const struct sopt SHORT[] = {
	{'A', 'f', NULL, 0, 0}, {'B', 'f', NULL, 0, 0}, {'b', 'f', NULL, 0, 0}, {'C', 'a', NULL, 0, 0},
	{'H', 'f', NULL, 0, 0}, {'K', 'f', NULL, 1, 0}, {'k', 'f', NULL, 0, 0}, {'N', 'f', NULL, 0, 0},
	{'n', 'f', NULL, 0, 0}, {'P', 'f', NULL, 0, 0}, {'p', 'a', NULL, 0, 0}, {'S', 'f', NULL, 0, 0},
	{'T', 'a', NULL, 0, 0}, {'u', 'a', NULL, 0, 0}, {'l', 'f', NULL, 1, 0}, {'v', 'f', NULL, 1, 0},
	{'a', 'a', "sudo -a (authentication type)", 0, 0},
	{'c', 'a', "sudo -c (login class)", 0, 0},
	{'D', 'a', "sudo -D (working directory)", 0, 0},
	{'E', 'f', "sudo -E (keeps the caller's environment)", 0, 0},
	{'e', 'f', "sudo -e (edits files)", 0, 0},
	{'g', 'a', "sudo -g (run-as group)", 0, 1},
	{'h', 'f', "sudo -h (help or another host)", 0, 1},
	{'i', 'f', "sudo -i (login shell)", 0, 0},
	{'R', 'a', "sudo -R (chroot)", 0, 0},
	{'r', 'a', "sudo -r (SELinux role)", 0, 0},
	{'s', 'f', "sudo -s (shell)", 0, 0},
	{'t', 'a', "sudo -t (SELinux type)", 0, 0},
	{'U', 'a', "sudo -U (another user's list)", 0, 1},
	{'V', 'f', "sudo -V (version)", 0, 0},
};

/* Long options, exact names only (getopt_long's abbreviations are unsure). */
struct lopt {
	const char *name;
	char kind;        /* 'a' required argument, 'f' none, 'o' optional (=value only) */
	char as;          /* the short option it stands for, 0 none */
	const char *why;
	int runas;        /* with why: the run-as user is not known either */
};

static const struct lopt LONG[] = {
	{"askpass", 'f', 'A', NULL, 0}, {"bell", 'f', 'B', NULL, 0}, {"background", 'f', 'b', NULL, 0},
	{"close-from", 'a', 'C', NULL, 0}, {"set-home", 'f', 'H', NULL, 0},
	{"remove-timestamp", 'f', 'K', NULL, 0}, {"reset-timestamp", 'f', 'k', NULL, 0},
	{"no-update", 'f', 'N', NULL, 0}, {"non-interactive", 'f', 'n', NULL, 0},
	{"preserve-groups", 'f', 'P', NULL, 0}, {"prompt", 'a', 'p', NULL, 0}, {"stdin", 'f', 'S', NULL, 0},
	{"command-timeout", 'a', 'T', NULL, 0}, {"user", 'a', 'u', NULL, 0}, {"list", 'f', 'l', NULL, 0},
	{"validate", 'f', 'v', NULL, 0},
	{"auth-type", 'a', 0, "sudo --auth-type", 0}, {"login-class", 'a', 0, "sudo --login-class", 0},
	{"chdir", 'a', 0, "sudo --chdir (working directory)", 0},
	{"preserve-env", 'o', 0, "sudo --preserve-env (keeps the caller's environment)", 0},
	{"edit", 'f', 0, "sudo --edit (edits files)", 0}, {"group", 'a', 0, "sudo --group (run-as group)", 1},
	{"help", 'f', 0, "sudo --help", 1}, {"host", 'a', 0, "sudo --host", 1},
	{"login", 'f', 0, "sudo --login (login shell)", 0}, {"chroot", 'a', 0, "sudo --chroot", 0},
	{"role", 'a', 0, "sudo --role (SELinux)", 0}, {"shell", 'f', 0, "sudo --shell", 0},
	{"type", 'a', 0, "sudo --type (SELinux)", 0}, {"other-user", 'a', 0, "sudo --other-user", 1},
	{"version", 'f', 0, "sudo --version", 0},
};

static const struct sopt *find_short(char c)
{
	for (size_t i = 0; i < sizeof(SHORT) / sizeof(SHORT[0]); i++)
		if (SHORT[i].c == c)
			return &SHORT[i];
	return NULL;
}

static const struct sopt *short_of(char c)
{
	return c ? find_short(c) : NULL;
}

/* The command is not known (the run-as user still is, unless unsure_runas). */
static int unsure(struct jit_sudo *o, const char *why)
{
	if (o->unsure == NULL)
		o->unsure = why;
	o->has_cmd = 0;
	o->cmd[0] = '\0';
	return 0;
}

/* Neither the command nor the run-as user is known. */
static int unsure_runas(struct jit_sudo *o, const char *why)
{
	unsure(o, why);
	o->runas[0] = '\0';
	return 0;
}

/* -u VALUE: a plain name, or #uid (sudo's form); anything else is unsure. */
static int set_runas(struct jit_sudo *o, const char *v)
{
	size_t n = strlen(v);
	if (n == 0 || n > JIT_SUDO_MAX_RUNAS)
		return unsure_runas(o, "a run-as user (-u) this module cannot read");
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)v[i];
		int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			 c == '_' || c == '-' || c == '.' || (c == '#' && i == 0) || (c == '$' && i == n - 1);
		if (!ok)
			return unsure_runas(o, "a run-as user (-u) this module cannot read");
	}
	memcpy(o->runas, v, n + 1);
	return 1;
}

static const char *basename_of(const char *p)
{
	const char *s = strrchr(p, '/');
	return s ? s + 1 : p;
}

int jit_sudo_parse(const char *buf, size_t len, int truncated, struct jit_sudo *out)
{
	const char *words[JIT_SUDO_MAX_WORDS];
	size_t nw = 0, i;

	memset(out, 0, sizeof(*out));
	out->mode = JIT_SUDO_RUN;
	memcpy(out->runas, "root", 5); /* sudo's runas_default */
	if (truncated || len == 0 || len > JIT_SUDO_MAX_CMDLINE || buf[len - 1] != '\0')
		return unsure_runas(out, "sudo's command line is too long or unreadable");
	for (i = 0; i < len; i++) {
		if (i == 0 || buf[i - 1] == '\0') {
			if (nw == JIT_SUDO_MAX_WORDS)
				return unsure_runas(out, "sudo's command line has too many words");
			words[nw++] = buf + i;
		}
	}
	if (strcmp(basename_of(words[0]), "sudoedit") == 0)
		unsure(out, "sudoedit (edits files)");

	int nocmd = 0;
	size_t w = 1;
	while (w < nw) {
		const char *a = words[w];
		if (a[0] != '-' || a[1] == '\0')
			break; /* "+" in sudo's optstring: options end at the first operand */
		if (strcmp(a, "--") == 0) {
			w++;
			break;
		}
		if (a[1] == '-') {
			const char *name = a + 2, *eq = strchr(name, '=');
			size_t nl = eq ? (size_t)(eq - name) : strlen(name);
			const struct lopt *l = NULL;
			for (size_t k = 0; k < sizeof(LONG) / sizeof(LONG[0]); k++)
				if (strlen(LONG[k].name) == nl && strncmp(LONG[k].name, name, nl) == 0)
					l = &LONG[k];
			if (l == NULL)
				return unsure_runas(out, "a sudo option this module does not know (or an abbreviated one)");
			const char *val = NULL;
			if (l->kind == 'a') {
				if (eq)
					val = eq + 1;
				else if (w + 1 < nw)
					val = words[++w];
				else
					return unsure_runas(out, "a sudo option without its value");
			} else if (eq && l->kind != 'o') {
				return unsure_runas(out, "a sudo option given a value it does not take");
			}
			if (l->why) {
				if (l->runas)
					return unsure_runas(out, l->why);
				unsure(out, l->why);
			}
			if (l->as == 'u' && !set_runas(out, val))
				return 0;
			const struct sopt *s = short_of(l->as);
			if (s && s->nocmd)
				nocmd = 1;
			w++;
			continue;
		}
		for (const char *p = a + 1; *p; p++) {
			const struct sopt *s = find_short(*p);
			if (s == NULL)
				return unsure_runas(out, "a sudo option this module does not know");
			if (s->why) {
				if (s->runas)
					return unsure_runas(out, s->why);
				unsure(out, s->why);
			}
			if (s->nocmd)
				nocmd = 1;
			if (s->kind == 'a') {
				const char *val;
				if (p[1] != '\0')
					val = p + 1;
				else if (w + 1 < nw)
					val = words[++w];
				else
					return unsure_runas(out, "a sudo option without its value");
				if (s->c == 'u' && !set_runas(out, val))
					return 0;
				break;
			}
		}
		w++;
	}

	if (out->unsure)
		return 0;
	if (w >= nw) {
		if (nocmd) {
			out->mode = JIT_SUDO_NOCMD;
			return 0;
		}
		return unsure(out, "no command on sudo's command line");
	}
	if (nocmd)
		return unsure(out, "sudo -l/-v/-K with a command");
	/* sudo takes leading VAR=value words as environment for the command. */
	if (strchr(words[w], '=') != NULL)
		return unsure(out, "environment variables set on sudo's command line");

	size_t pos = 0;
	for (; w < nw; w++) {
		size_t n = strlen(words[w]);
		if (n == 0)
			return unsure(out, "an empty argument (sudo joins arguments with spaces)");
		for (size_t k = 0; k < n; k++) {
			unsigned char c = (unsigned char)words[w][k];
			if (c < 0x20 || c == 0x7f)
				return unsure(out, "control characters in the command line");
			if (c == ' ')
				return unsure(out, "an argument with a space in it (sudo joins arguments with spaces)");
		}
		if (pos + n + 2 > sizeof(out->cmd))
			return unsure(out, "sudo's command line is too long or unreadable");
		if (pos > 0)
			out->cmd[pos++] = ' ';
		memcpy(out->cmd + pos, words[w], n);
		pos += n;
	}
	out->cmd[pos] = '\0';
	out->has_cmd = 1;
	return 0;
}
