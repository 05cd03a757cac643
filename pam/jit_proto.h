/*
 * jit_proto.h - the JIT/1 wire protocol, pure functions only (no I/O).
 *
 * Everything here works on memory handed in by the caller, so the reply
 * parser can be driven by a fuzzer (tests/fuzz_reply.c) exactly as the
 * module drives it. See docs/PROTOCOL.md for the protocol itself.
 */
#ifndef JIT_PROTO_H
#define JIT_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define JIT_MAX_FRAME 65536u     /* largest body either side may send */
#define JIT_MAX_KEY 32u          /* longest key */
#define JIT_MAX_SHOWN 240u       /* longest agent text shown to a user (bytes) */

/* Results shared by the parser and the client. */
enum jit_status {
	JIT_OK = 0,
	JIT_E_NOMEM = -1,       /* malloc failed */
	JIT_E_PROTO = -2,       /* the reply breaks the protocol */
	JIT_E_VERSION = -3,     /* the reply is not JIT/1 */
	JIT_E_TOOBIG = -4,      /* a frame longer than JIT_MAX_FRAME (or 0) */
	JIT_E_UNREACHABLE = -5, /* no agent: missing socket, refused, timed out, closed */
	JIT_E_INSECURE = -6,    /* the socket or the peer failed an ownership check */
	JIT_E_INTR = -7,        /* a signal interrupted a wait */
	JIT_E_ARG = -8,         /* bad argument from our own side */
	JIT_E_GONE = -9         /* the watched connection (the ssh client) hung up */
};

/* A request being built: header line plus key=value lines, body only. */
struct jit_req {
	char *buf;     /* heap, JIT_MAX_FRAME + 4 bytes: 4 length bytes, then the body */
	size_t len;    /* body bytes so far */
	int overflow;  /* set when a field did not fit; the request must not be sent */
};

int jit_req_init(struct jit_req *req, const char *op);
/* Adds key=value, percent-encoding the value. A NULL value adds nothing. */
int jit_req_add(struct jit_req *req, const char *key, const char *value);
int jit_req_add_uint(struct jit_req *req, const char *key, unsigned long value);
/* Writes the big-endian length in front of the body; returns the frame size or 0. */
size_t jit_req_finish(struct jit_req *req);
/* Wipes (the body may hold a reason) and frees. */
void jit_req_free(struct jit_req *req);

/* Fields of a reply that the module uses; NULL when absent. Unknown keys are
 * checked for syntax and otherwise ignored (the agent may add fields). */
struct jit_reply {
	int is_error;      /* header was "JIT/1 error" */
	char *decision;    /* allow | ignore | pending | deny */
	char *message;
	char *request;
	char *grant;
	char *expires_at;
	char *state;
	char *code;
	char *session;
	char *approve_id; /* a fleet host: the control plane's id of the request */
	char *approve_at; /* a fleet host: the control plane's URL */
};

/* Checks a 4-byte frame header; stores the body length (1..JIT_MAX_FRAME). */
int jit_frame_len(const unsigned char hdr[4], uint32_t *len);

/*
 * Parses one reply body (len bytes, not NUL-terminated, may hold anything).
 * On JIT_OK *out holds heap strings (free with jit_reply_free); on error *out
 * is left empty. Strict: the body must start with "JIT/1 ok\n" or
 * "JIT/1 error\n", every line must end with '\n', every other line must be
 * "." or key=value with a valid key and a percent-encoded value that decodes
 * to UTF-8 without NUL; a known key may not repeat before the first ".".
 */
int jit_reply_parse(const char *body, size_t len, struct jit_reply *out);
void jit_reply_free(struct jit_reply *r);

/* Percent-decodes in[0..len) into a new NUL-terminated string. */
int jit_pct_decode(const char *in, size_t len, char **out);
/* 1 when s[0..len) is valid UTF-8 (no overlongs, surrogates or > U+10FFFF). */
int jit_utf8_valid(const unsigned char *s, size_t len);
/* 1 when s is a decimal id: 1 to 19 digits, no leading zero, not "0". */
int jit_id_valid(const char *s);

/*
 * Copies agent text into out (outsz >= 8) so that it is safe to show on a
 * terminal: valid UTF-8 only, control characters (C0, DEL, C1), line and
 * paragraph separators and bidi overrides replaced by '?', at most
 * JIT_MAX_SHOWN bytes (cut on a character boundary, "..." appended).
 * Returns the length written.
 */
size_t jit_sanitize(const char *in, char *out, size_t outsz);

#endif
