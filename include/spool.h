/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * spool - a byte store that stays in memory up to a limit and spills the
 * rest to an unnamed temporary file.
 *
 * Keeps a message body for replay to later phases.  The file is created
 * with mode 0600 (mkstemp) in the configured directory and unlinked at
 * once, so it disappears however the message or the process ends; only
 * the open descriptor keeps it.
 *
 * Concurrency: caller serialises.  Ownership: the spool owns its memory
 * and descriptor; spool_fini() releases both.
 */
#ifndef SPOOL_H
#define SPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

struct spool {
	size_t		 limit;		/* bytes kept in memory */
	char		*dir;
	struct buf	 mem;
	int		 fd;		/* -1 until spilled */
	size_t		 size;		/* bytes stored in all */
};

void	spool_init(struct spool *, size_t limit, const char *dir);
/* Appends; 0, or -errno when the temporary file cannot take it. */
int	spool_write(struct spool *, const void *, size_t);
typedef int spool_fn(void *arg, const uint8_t *, size_t);
/*
 * Calls fn for consecutive pieces of at most max bytes (max > 0), in
 * order, until all is read or fn returns non-zero (which is returned).
 * Returns 0 or -errno.
 */
int	spool_read(struct spool *, size_t max, spool_fn *fn, void *arg);
/* Empties the spool and drops its file. */
void	spool_reset(struct spool *);
void	spool_fini(struct spool *);

#endif /* SPOOL_H */
