/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * buf - growable byte buffer with a read cursor.
 *
 * Bytes are appended at the end and consumed from the front; the space
 * of consumed bytes is reclaimed lazily.  Concurrency: caller
 * serialises.  Ownership: the buffer owns its storage; buf_fini()
 * releases it.
 */
#ifndef BUF_H
#define BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
	uint8_t	*data;
	size_t	 off;	/* first unconsumed byte */
	size_t	 len;	/* end of valid bytes; off <= len <= cap */
	size_t	 cap;
};

#define BUF_INIT { NULL, 0, 0, 0 }

void	 buf_init(struct buf *);
void	 buf_fini(struct buf *);
/* Drop all bytes, keep the storage. */
void	 buf_reset(struct buf *);
/* Make room for n more bytes at the end; returns the write pointer. */
uint8_t	*buf_reserve(struct buf *, size_t n);
/* Commit n bytes written at the pointer buf_reserve() returned. */
void	 buf_commit(struct buf *, size_t n);
void	 buf_add(struct buf *, const void *, size_t);
void	 buf_add_u8(struct buf *, uint8_t);
void	 buf_add_u32(struct buf *, uint32_t);	/* network order */
/* Appends s including its terminating NUL. */
void	 buf_add_str(struct buf *, const char *s);
/* Unconsumed bytes: borrowed, valid until the next call that adds. */
static inline const uint8_t *
buf_head(const struct buf *b)
{
	return b->data + b->off;
}
static inline size_t
buf_avail(const struct buf *b)
{
	return b->len - b->off;
}
/* Consume n unconsumed bytes (n <= buf_avail). */
void	 buf_consume(struct buf *, size_t n);

#endif /* BUF_H */
