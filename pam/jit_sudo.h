/*
 * jit_sudo.h - what sudo is about to run, read from sudo's own argv.
 *
 * Inside sudo (Debian 12, sudo 1.9.13) the account stage is told neither the
 * command nor the run-as user: PAM_USER and PAM_RUSER are both the invoking
 * user, the PAM environment is empty, and SUDO_COMMAND in the process
 * environment is whatever the user exported (sudo sets it only for the
 * command it runs). What is reliable is sudo's argv (/proc/self/cmdline of
 * the setuid process: the user cannot change it once sudo runs). This file
 * parses it the way sudo's parse_args() does, and says "unsure" for every
 * option or form whose effect on what runs, or as whom, it does not model.
 * Pure functions: no I/O, driven by the tests as the module drives them.
 */
#ifndef JIT_SUDO_H
#define JIT_SUDO_H

#include <stddef.h>

#define JIT_SUDO_MAX_CMDLINE 8192u  /* bytes of /proc/self/cmdline read; more is "unsure" */
#define JIT_SUDO_MAX_RUNAS 64u
#define JIT_SUDO_MAX_WORDS 512u     /* words of sudo's argv; more is "unsure" */

enum jit_sudo_mode {
	JIT_SUDO_RUN = 0,   /* runs `command` as `runas` (when not unsure) */
	JIT_SUDO_NOCMD = 1  /* -l, -v, -k/-K without a command: runs nothing */
};

struct jit_sudo {
	enum jit_sudo_mode mode;
	char runas[JIT_SUDO_MAX_RUNAS + 1]; /* "root" unless -u; "" when unsure */
	/* The command words as typed (the first may be a bare name: the agent
	 * resolves it), joined by single spaces, NUL-terminated, inside cmd. */
	char cmd[JIT_SUDO_MAX_CMDLINE + 1];
	int has_cmd;
	const char *unsure; /* static text: why the module cannot be sure; NULL when sure */
};

/*
 * Parses buf[0..len) (NUL-separated words, as /proc/self/cmdline holds them;
 * truncated = 1 when the read filled the buffer). Always fills *out; returns
 * 0. When out->unsure is set the command and run-as user must not be trusted.
 */
int jit_sudo_parse(const char *buf, size_t len, int truncated, struct jit_sudo *out);

#endif
