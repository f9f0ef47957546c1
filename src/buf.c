/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * buf - growable byte buffer with a read cursor.
 *
 * Concurrency: caller serialises.  Ownership: see buf.h.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "xalloc.h"

void
buf_init(struct buf *b)
{
	memset(b, 0, sizeof *b);
}

void
buf_fini(struct buf *b)
{
	free(b->data);
	b->data = NULL;
	b->off = b->len = b->cap = 0;
}

void
buf_reset(struct buf *b)
{
	b->off = b->len = 0;
}

uint8_t *
buf_reserve(struct buf *b, size_t n)
{
	size_t	 need, ncap;

	if (b->cap - b->len >= n)
		return b->data + b->len;
	/* Slide unconsumed bytes down before growing: replies are read
	 * and consumed packet by packet, so this keeps buffers small. */
	if (b->off > 0) {
		memmove(b->data, b->data + b->off, b->len - b->off);
		b->len -= b->off;
		b->off = 0;
		if (b->cap - b->len >= n)
			return b->data + b->len;
	}
	need = b->len + n;
	ncap = b->cap < 256 ? 256 : b->cap;
	while (ncap < need)
		ncap *= 2;
	b->data = xreallocarray(b->data, ncap, 1);
	b->cap = ncap;
	return b->data + b->len;
}

void
buf_commit(struct buf *b, size_t n)
{
	assert(b->cap - b->len >= n);
	b->len += n;
}

void
buf_add(struct buf *b, const void *p, size_t n)
{
	if (n == 0)
		return;
	memcpy(buf_reserve(b, n), p, n);
	b->len += n;
}

void
buf_add_u8(struct buf *b, uint8_t v)
{
	buf_add(b, &v, 1);
}

void
buf_add_u32(struct buf *b, uint32_t v)
{
	uint8_t	 p[4] = { v >> 24, v >> 16, v >> 8, v };

	buf_add(b, p, 4);
}

void
buf_add_str(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s) + 1);
}

void
buf_consume(struct buf *b, size_t n)
{
	assert(n <= b->len - b->off);
	b->off += n;
	if (b->off == b->len)
		b->off = b->len = 0;
}
