/*
 * fuzz_sudo.c - libFuzzer target for the sudo argv parser: any bytes as
 * /proc/self/cmdline, truncated or not. It must never crash, read out of
 * bounds, or claim a command it did not copy from the input.
 */
#include <stdint.h>
#include <string.h>

#include "../jit_sudo.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct jit_sudo s;
	if (size == 0 || size > JIT_SUDO_MAX_CMDLINE)
		return 0;
	jit_sudo_parse((const char *)data, size, data[0] & 1, &s);
	if (s.has_cmd && (s.unsure != NULL || strlen(s.cmd) >= size))
		__builtin_trap();
	if (s.unsure == NULL && s.mode == JIT_SUDO_RUN && !s.has_cmd)
		__builtin_trap();
	return 0;
}
