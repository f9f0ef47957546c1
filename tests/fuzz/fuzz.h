/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * fuzz - what the libFuzzer harnesses in tests/fuzz share.
 *
 * Each harness defines LLVMFuzzerTestOneInput(), feeds the bytes to pure
 * code (codec, merge, conf) and checks invariants with FUZZ_CHECK, which
 * aborts so that libFuzzer keeps the input as a crash.  Built only by
 * "make fuzz" (clang, -fsanitize=fuzzer,address,undefined, and
 * FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION defined).
 *
 * Concurrency: libFuzzer calls in one thread.  Ownership: each harness
 * frees what it allocates per input; LeakSanitizer checks.
 */
#ifndef FUZZ_H
#define FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(cond) do {						\
	if (!(cond)) {							\
		fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__,	\
		    __LINE__, #cond);					\
		abort();						\
	}								\
} while (0)

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#endif /* FUZZ_H */
