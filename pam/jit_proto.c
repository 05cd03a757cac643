/*
 * jit_proto.c - building requests and parsing replies of the JIT/1 protocol.
 * No I/O, no global state; see jit_proto.h.
 */
#include "jit_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char hexdig[] = "0123456789ABCDEF";

/* ---------- requests ---------- */

int jit_req_init(struct jit_req *req, const char *op)
{
	memset(req, 0, sizeof(*req));
	req->buf = malloc(JIT_MAX_FRAME + 4);
	if (req->buf == NULL)
		return JIT_E_NOMEM;
	int n = snprintf(req->buf + 4, JIT_MAX_FRAME, "JIT/1 %s\n", op);
	if (n < 0 || (size_t)n >= JIT_MAX_FRAME) {
		req->overflow = 1;
		return JIT_E_ARG;
	}
	req->len = (size_t)n;
	return JIT_OK;
}

static int put(struct jit_req *req, char c)
{
	if (req->len >= JIT_MAX_FRAME) {
		req->overflow = 1;
		return JIT_E_ARG;
	}
	req->buf[4 + req->len++] = c;
	return JIT_OK;
}

static int key_valid(const char *k, size_t n)
{
	if (n == 0 || n > JIT_MAX_KEY || k[0] < 'a' || k[0] > 'z')
		return 0;
	for (size_t i = 1; i < n; i++) {
		char c = k[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
			return 0;
	}
	return 1;
}

int jit_req_add(struct jit_req *req, const char *key, const char *value)
{
	if (req->buf == NULL || req->overflow)
		return JIT_E_ARG;
	if (value == NULL)
		return JIT_OK;
	size_t klen = strlen(key);
	if (!key_valid(key, klen)) {
		req->overflow = 1;
		return JIT_E_ARG;
	}
	for (size_t i = 0; i < klen; i++)
		if (put(req, key[i]) != JIT_OK)
			return JIT_E_ARG;
	if (put(req, '=') != JIT_OK)
		return JIT_E_ARG;
	for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
		if (*p == '%' || *p < 0x20 || *p == 0x7f) {
			if (put(req, '%') != JIT_OK || put(req, hexdig[*p >> 4]) != JIT_OK ||
			    put(req, hexdig[*p & 15]) != JIT_OK)
				return JIT_E_ARG;
		} else if (put(req, (char)*p) != JIT_OK) {
			return JIT_E_ARG;
		}
	}
	return put(req, '\n');
}

int jit_req_add_uint(struct jit_req *req, const char *key, unsigned long value)
{
	char num[24];
	snprintf(num, sizeof(num), "%lu", value);
	return jit_req_add(req, key, num);
}

size_t jit_req_finish(struct jit_req *req)
{
	if (req->buf == NULL || req->overflow || req->len == 0 || req->len > JIT_MAX_FRAME)
		return 0;
	uint32_t n = (uint32_t)req->len;
	req->buf[0] = (char)(n >> 24);
	req->buf[1] = (char)(n >> 16);
	req->buf[2] = (char)(n >> 8);
	req->buf[3] = (char)n;
	return req->len + 4;
}

void jit_req_free(struct jit_req *req)
{
	if (req->buf != NULL) {
		explicit_bzero(req->buf, JIT_MAX_FRAME + 4);
		free(req->buf);
	}
	memset(req, 0, sizeof(*req));
}

/* ---------- replies ---------- */

int jit_frame_len(const unsigned char hdr[4], uint32_t *len)
{
	uint32_t n = ((uint32_t)hdr[0] << 24) | ((uint32_t)hdr[1] << 16) |
		     ((uint32_t)hdr[2] << 8) | (uint32_t)hdr[3];
	if (n == 0 || n > JIT_MAX_FRAME)
		return JIT_E_TOOBIG;
	*len = n;
	return JIT_OK;
}

int jit_utf8_valid(const unsigned char *s, size_t len)
{
	size_t i = 0;
	while (i < len) {
		unsigned char c = s[i];
		size_t need;
		uint32_t cp, min;
		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			need = 1; cp = c & 0x1f; min = 0x80;
		} else if (c >= 0xe0 && c <= 0xef) {
			need = 2; cp = c & 0x0f; min = 0x800;
		} else if (c >= 0xf0 && c <= 0xf4) {
			need = 3; cp = c & 0x07; min = 0x10000;
		} else {
			return 0;
		}
		if (len - i - 1 < need)
			return 0;
		for (size_t k = 1; k <= need; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += need + 1;
	}
	return 1;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int jit_pct_decode(const char *in, size_t len, char **out)
{
	*out = NULL;
	char *s = malloc(len + 1);
	if (s == NULL)
		return JIT_E_NOMEM;
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		if (in[i] == '%') {
			int hi, lo;
			if (len - i < 3 || (hi = hexval(in[i + 1])) < 0 || (lo = hexval(in[i + 2])) < 0)
				goto bad;
			s[o++] = (char)(hi << 4 | lo);
			i += 2;
		} else {
			s[o++] = in[i];
		}
		if (s[o - 1] == '\0')
			goto bad; /* a NUL would silently cut the value short */
	}
	s[o] = '\0';
	if (!jit_utf8_valid((const unsigned char *)s, o))
		goto bad;
	*out = s;
	return JIT_OK;
bad:
	explicit_bzero(s, len + 1);
	free(s);
	return JIT_E_PROTO;
}

int jit_id_valid(const char *s)
{
	if (s == NULL || s[0] < '1' || s[0] > '9')
		return 0;
	size_t n = 0;
	for (; s[n]; n++)
		if (s[n] < '0' || s[n] > '9' || n >= 19)
			return 0;
	return 1;
}

void jit_reply_free(struct jit_reply *r)
{
	char **fields[] = { &r->decision, &r->message, &r->request, &r->grant,
			    &r->expires_at, &r->state, &r->code, &r->session,
			    &r->approve_id, &r->approve_at };
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		free(*fields[i]);
	memset(r, 0, sizeof(*r));
}

static char **reply_slot(struct jit_reply *r, const char *k, size_t n)
{
	static const struct {
		const char *name;
		size_t off;
	} known[] = {
		{ "decision", offsetof(struct jit_reply, decision) },
		{ "message", offsetof(struct jit_reply, message) },
		{ "request", offsetof(struct jit_reply, request) },
		{ "grant", offsetof(struct jit_reply, grant) },
		{ "expires_at", offsetof(struct jit_reply, expires_at) },
		{ "state", offsetof(struct jit_reply, state) },
		{ "code", offsetof(struct jit_reply, code) },
		{ "session", offsetof(struct jit_reply, session) },
		{ "approve_id", offsetof(struct jit_reply, approve_id) },
		{ "approve_at", offsetof(struct jit_reply, approve_at) },
	};
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		if (strlen(known[i].name) == n && memcmp(known[i].name, k, n) == 0)
			return (char **)(void *)((char *)r + known[i].off);
	return NULL;
}

int jit_reply_parse(const char *body, size_t len, struct jit_reply *out)
{
	struct jit_reply r;
	memset(&r, 0, sizeof(r));
	memset(out, 0, sizeof(*out));
	int rc = JIT_E_PROTO;

	if (len == 0 || len > JIT_MAX_FRAME)
		return JIT_E_TOOBIG;
	if (len < 6 || memcmp(body, "JIT/1 ", 6) != 0)
		return (len >= 4 && memcmp(body, "JIT/", 4) == 0) ? JIT_E_VERSION : JIT_E_PROTO;
	if (body[len - 1] != '\n')
		return JIT_E_PROTO;
	/* Raw bytes below 0x20 other than '\n', and DEL, must have been encoded. */
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)body[i];
		if ((c < 0x20 && c != '\n') || c == 0x7f)
			return JIT_E_PROTO;
	}

	const char *line = body;
	const char *end = body + len;
	const char *nl = memchr(line, '\n', (size_t)(end - line));
	size_t hlen = (size_t)(nl - line);
	if (hlen == 8 && memcmp(line, "JIT/1 ok", 8) == 0)
		r.is_error = 0;
	else if (hlen == 11 && memcmp(line, "JIT/1 error", 11) == 0)
		r.is_error = 1;
	else
		return JIT_E_PROTO;

	int in_record = 0;
	for (line = nl + 1; line < end; line = nl + 1) {
		nl = memchr(line, '\n', (size_t)(end - line));
		size_t n = (size_t)(nl - line);
		if (n == 1 && line[0] == '.') {
			in_record = 1;
			continue;
		}
		const char *eq = memchr(line, '=', n);
		if (eq == NULL || !key_valid(line, (size_t)(eq - line)))
			goto out;
		char *val = NULL;
		int drc = jit_pct_decode(eq + 1, (size_t)(nl - eq - 1), &val);
		if (drc != JIT_OK) {
			rc = drc;
			goto out;
		}
		char **slot = in_record ? NULL : reply_slot(&r, line, (size_t)(eq - line));
		if (slot == NULL) {
			free(val); /* unknown key, or a field of a record: not ours */
			continue;
		}
		if (*slot != NULL) {
			free(val); /* a repeated field could make us act on the wrong one */
			goto out;
		}
		*slot = val;
	}
	*out = r;
	return JIT_OK;
out:
	jit_reply_free(&r);
	return rc;
}

/* ---------- showing agent text ---------- */

static int shown_as_is(uint32_t cp)
{
	if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f))
		return 0; /* C0, DEL, C1 controls (ESC, CSI...) */
	if (cp == 0x2028 || cp == 0x2029 || cp == 0x200e || cp == 0x200f)
		return 0; /* line/paragraph separators, LRM/RLM */
	if ((cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069))
		return 0; /* bidi embeddings, overrides and isolates */
	return 1;
}

/* Length of the character at s[i] (1 for a byte that is not valid UTF-8),
 * and whether it may be shown as is. */
static size_t next_char(const unsigned char *s, size_t len, size_t i, int *shown)
{
	if (s[i] < 0x80) {
		*shown = shown_as_is(s[i]);
		return 1;
	}
	size_t need = s[i] >= 0xf0 ? 3 : s[i] >= 0xe0 ? 2 : 1;
	if (len - i <= need || !jit_utf8_valid(s + i, need + 1)) {
		*shown = 0;
		return 1;
	}
	uint32_t cp = s[i] & (need == 1 ? 0x1f : need == 2 ? 0x0f : 0x07);
	for (size_t k = 1; k <= need; k++)
		cp = (cp << 6) | (s[i + k] & 0x3f);
	*shown = shown_as_is(cp);
	return need + 1;
}

size_t jit_sanitize(const char *in, char *out, size_t outsz)
{
	if (outsz == 0)
		return 0;
	size_t cap = outsz - 1;
	if (cap > JIT_MAX_SHOWN)
		cap = JIT_MAX_SHOWN;
	out[0] = '\0';
	if (cap < 4)
		return 0;
	const unsigned char *s = (const unsigned char *)(in ? in : "");
	size_t len = strlen((const char *)s), total = 0, i, o = 0;
	int shown;

	for (i = 0; i < len;) {
		size_t clen = next_char(s, len, i, &shown);
		total += shown ? clen : 1;
		i += clen;
	}
	size_t limit = total <= cap ? cap : cap - 3;
	for (i = 0; i < len;) {
		size_t clen = next_char(s, len, i, &shown);
		size_t wlen = shown ? clen : 1;
		if (o + wlen > limit)
			break;
		if (shown)
			memcpy(out + o, s + i, clen);
		else
			out[o] = '?';
		o += wlen;
		i += clen;
	}
	if (total > cap) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
	return o;
}
