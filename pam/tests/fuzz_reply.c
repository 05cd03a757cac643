/*
 * fuzz_reply.c - libFuzzer target for the module's parser of agent replies:
 * the frame header, the reply body, and the sanitiser applied to every text
 * field before it could reach a terminal.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../jit_proto.h"

static void sane(const char *s)
{
	char out[JIT_MAX_SHOWN + 8];
	size_t n = jit_sanitize(s, out, sizeof(out));
	if (n > JIT_MAX_SHOWN || strlen(out) != n || !jit_utf8_valid((const unsigned char *)out, n))
		abort();
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint32_t len;
	if (size >= 4 && jit_frame_len(data, &len) == JIT_OK && (len == 0 || len > JIT_MAX_FRAME))
		abort();

	struct jit_reply r;
	int rc = jit_reply_parse((const char *)data, size, &r);
	if (rc == JIT_OK) {
		const char *f[] = { r.decision, r.message, r.request, r.grant,
				    r.expires_at, r.state, r.code, r.session };
		for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
			if (f[i] != NULL) {
				if (!jit_utf8_valid((const unsigned char *)f[i], strlen(f[i])))
					abort();
				sane(f[i]);
			}
		(void)jit_id_valid(r.request);
		jit_reply_free(&r);
	} else if (r.decision != NULL || r.message != NULL) {
		abort(); /* a refused reply must leave nothing behind */
	}

	/* The sanitiser on raw bytes too (it must cope with anything). */
	char *s = malloc(size + 1);
	if (s == NULL)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	sane(s);
	free(s);
	return 0;
}
