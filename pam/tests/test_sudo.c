/*
 * test_sudo.c - the sudo argv parser (jit_sudo.c) against the forms sudo
 * 1.9.13 accepts: what runs and as whom when the module can be sure, and
 * "unsure" for every form it does not model.
 */
#include <stdio.h>
#include <string.h>

#include "../jit_sudo.h"

static int failures, total;

/* words separated by '|' in spec become NUL-separated, as /proc/self/cmdline holds them */
static void parse(const char *spec, struct jit_sudo *out)
{
	static char buf[JIT_SUDO_MAX_CMDLINE + 1];
	size_t n = strlen(spec);
	memcpy(buf, spec, n);
	for (size_t i = 0; i < n; i++)
		if (buf[i] == '|')
			buf[i] = '\0';
	buf[n] = '\0';
	jit_sudo_parse(buf, n + 1, 0, out);
}

static void sure(const char *spec, const char *runas, const char *cmd)
{
	struct jit_sudo s;
	parse(spec, &s);
	total++;
	if (s.unsure || s.mode != JIT_SUDO_RUN || !s.has_cmd || strcmp(s.runas, runas) || strcmp(s.cmd, cmd)) {
		failures++;
		printf("FAIL %s: want runas=%s cmd=[%s]; got unsure=%s runas=%s cmd=[%s]\n", spec, runas, cmd,
		       s.unsure ? s.unsure : "-", s.runas, s.cmd);
	}
}

static void not_sure(const char *spec)
{
	struct jit_sudo s;
	parse(spec, &s);
	total++;
	if (s.unsure == NULL || s.has_cmd || s.runas[0]) {
		failures++;
		printf("FAIL %s: want unsure; got runas=%s cmd=[%s]\n", spec, s.runas, s.cmd);
	}
}

/* the command is not known, the run-as user is */
static void runas_only(const char *spec, const char *runas)
{
	struct jit_sudo s;
	parse(spec, &s);
	total++;
	if (s.unsure == NULL || s.has_cmd || strcmp(s.runas, runas)) {
		failures++;
		printf("FAIL %s: want unsure command, runas=%s; got unsure=%s runas=%s\n", spec, runas,
		       s.unsure ? s.unsure : "-", s.runas);
	}
}

static void no_command(const char *spec)
{
	struct jit_sudo s;
	parse(spec, &s);
	total++;
	if (s.unsure || s.mode != JIT_SUDO_NOCMD || s.has_cmd) {
		failures++;
		printf("FAIL %s: want no command; got unsure=%s\n", spec, s.unsure ? s.unsure : "-");
	}
}

int main(void)
{
	sure("sudo|-n|/usr/bin/id|-u", "root", "/usr/bin/id -u");
	sure("sudo|-n|--|/usr/bin/id|-u", "root", "/usr/bin/id -u");
	sure("/usr/bin/sudo|id", "root", "id");
	sure("sudo|-u|postgres|/usr/bin/psql", "postgres", "/usr/bin/psql");
	sure("sudo|-upostgres|/usr/bin/psql", "postgres", "/usr/bin/psql");
	sure("sudo|-nupostgres|/usr/bin/psql", "postgres", "/usr/bin/psql");
	sure("sudo|-nu|postgres|/usr/bin/psql", "postgres", "/usr/bin/psql");
	sure("sudo|--user=postgres|/usr/bin/psql", "postgres", "/usr/bin/psql");
	sure("sudo|--user|postgres|--non-interactive|/usr/bin/psql", "postgres", "/usr/bin/psql");
	sure("sudo|-u|#0|/usr/bin/id", "#0", "/usr/bin/id");
	sure("sudo|-p|x|-T|5|-C|4|-kHSbBPNA|/usr/bin/systemctl|restart|nginx", "root",
	     "/usr/bin/systemctl restart nginx");
	/* options end at the first operand: -u after the command is the command's */
	sure("sudo|/usr/bin/id|-u|daemon", "root", "/usr/bin/id -u daemon");
	/* the finding's repro: the command is known, so the agent can refuse it */
	sure("sudo|-n|/bin/sh|-c|head", "root", "/bin/sh -c head");

	runas_only("sudo|-s", "root");
	runas_only("sudo|-i|id", "root");
	runas_only("sudo|-ni|id", "root");
	runas_only("sudo|-E|-u|postgres|/usr/bin/id", "postgres");
	runas_only("sudo|--preserve-env=PATH|/usr/bin/id", "root");
	runas_only("sudo|--preserve-env|/usr/bin/id", "root");
	runas_only("sudo|-e|/etc/shadow", "root");
	runas_only("sudoedit|/etc/shadow", "root");
	runas_only("/usr/bin/sudoedit|-u|daemon|/etc/shadow", "daemon");
	runas_only("sudo|LD_PRELOAD=/tmp/x.so|/usr/bin/id", "root");
	runas_only("sudo|/usr/bin/systemctl|restart nginx", "root");
	runas_only("sudo|-n|/bin/sh|-c|head -1 /etc/shadow", "root");
	not_sure("sudo|-g|adm|/usr/bin/id");
	not_sure("sudo|-u|root|-g|adm|/usr/bin/id");
	runas_only("sudo|-D|/tmp|/usr/bin/id", "root");
	runas_only("sudo|--chdir=/tmp|/usr/bin/id", "root");
	runas_only("sudo|-R|/tmp/root|/usr/bin/id", "root");
	not_sure("sudo|--us=daemon|/usr/bin/id"); /* getopt_long abbreviation */
	not_sure("sudo|--bogus|/usr/bin/id");
	not_sure("sudo|-X|/usr/bin/id");
	not_sure("sudo|-u");
	not_sure("sudo|-u|a;b|/usr/bin/id");
	not_sure("sudo|-E|-g|adm|/usr/bin/id");
	runas_only("sudo|-n", "root");
	runas_only("sudo", "root");
	runas_only("sudo|-l|/usr/bin/id", "root");
	runas_only("sudo|/usr/bin/systemctl||restart", "root");
	runas_only("sudo|/usr/bin/printf|a\tb", "root");
	not_sure("sudo|-nh|/usr/bin/id");

	no_command("sudo|-l");
	no_command("sudo|-nl");
	no_command("sudo|-v");
	no_command("sudo|--validate");
	no_command("sudo|-K");

	{ /* truncated, unterminated, or too many words */
		struct jit_sudo s;
		total += 3;
		char b[] = "sudo\0/usr/bin/id";
		jit_sudo_parse(b, sizeof(b) - 1, 0, &s);
		if (!s.unsure) { failures++; printf("FAIL unterminated buffer accepted\n"); }
		jit_sudo_parse("sudo\0id\0", 8, 1, &s);
		if (!s.unsure) { failures++; printf("FAIL truncated buffer accepted\n"); }
		static char many[2 * (JIT_SUDO_MAX_WORDS + 2)];
		for (size_t i = 0; i < sizeof(many); i += 2) { many[i] = 'a'; many[i + 1] = '\0'; }
		jit_sudo_parse(many, sizeof(many), 0, &s);
		if (!s.unsure) { failures++; printf("FAIL too many words accepted\n"); }
	}

	printf("%s   sudo argv parser: %d/%d\n", failures ? "FAIL" : "ok", total - failures, total);
	return failures ? 1 : 0;
}
