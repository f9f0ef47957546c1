/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * recorder - a recording upstream milter for the tests: it answers
 * "continue" to every command and writes down exactly what it received,
 * packet by packet, so that a test can check the bytes an upstream gets
 * from miltermux (packet sizes against the 65,535-byte limit, header
 * values, every body byte) where a libmilter filter would only show
 * what libmilter made of them.
 *
 * It reads packets of any length (up to 64 MiB) so that an oversized one
 * is counted rather than refused.  It asks for every stage and every
 * reply (protocol 0, no actions).  Filter side, on a unix socket, one
 * thread per connection, inside the test process.
 *
 * Concurrency: rec_* calls from one thread (the test's); the connection
 * threads write the record under the recorder's lock.
 * Ownership: rec_start() returns a recorder the caller owns until
 * rec_stop().  struct rec_stats is a copy, free with rec_stats_fini().
 */
#ifndef RECORDER_H
#define RECORDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct recorder;

struct rec_header {
	char	*name;
	char	*value;		/* as received, NUL-terminated copy */
	size_t	 vlen;		/* bytes before the value's own NUL */
};

struct rec_stats {
	size_t			 connections;
	size_t			 packets;
	size_t			 max_data;	/* largest packet's data */
	char			 max_cmd;	/* its command */
	size_t			 over_limit;	/* packets over 65,535 */
	size_t			 rcpts;
	size_t			 body_packets;
	uint64_t		 body_bytes;
	uint64_t		 body_hash;	/* rec_hash() of the body */
	size_t			 eoms;
	size_t			 aborts;
	size_t			 bad;		/* malformed packets */
	struct rec_header	*headers;	/* of all messages, in order */
	size_t			 nheaders;
	char			*helo;		/* last HELO argument */
	size_t			 helo_len;
};

/* FNV-1a 64 over len bytes, continuing from h (start with REC_HASH0). */
#define REC_HASH0	0xcbf29ce484222325ULL
uint64_t	 rec_hash(uint64_t h, const void *data, size_t len);

/*
 * Listens on the unix socket path (removed first if stale).  keep_headers
 * false records header counts only (for 10,000-header messages the
 * copies are still cheap, but the soak needs none).  Returns NULL if the
 * socket cannot be set up.
 */
struct recorder	*rec_start(const char *path, bool keep_headers);
/* Closes the listener; connection threads end with their peer. */
void		 rec_stop(struct recorder *);
/* Waits until at least n end-of-message commands arrived in all;
 * 0 or -ETIMEDOUT. */
int		 rec_wait_eoms(struct recorder *, size_t n, double timeout_s);
/* A snapshot of what was received so far. */
void		 rec_snapshot(struct recorder *, struct rec_stats *);
void		 rec_stats_fini(struct rec_stats *);

#endif /* RECORDER_H */
