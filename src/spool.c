/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * spool - memory up to a limit, then an unlinked temporary file.
 *
 * Concurrency: caller serialises.  Ownership: see spool.h.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "spool.h"
#include "xalloc.h"

void
spool_init(struct spool *sp, size_t limit, const char *dir)
{
	memset(sp, 0, sizeof *sp);
	sp->limit = limit;
	sp->dir = xstrdup(dir);
	sp->fd = -1;
	buf_init(&sp->mem);
}

/* write_all - the whole of p to fd */
static int
write_all(int fd, const uint8_t *p, size_t len)
{
	ssize_t	 n;

	while (len > 0) {
		if ((n = write(fd, p, len)) == -1) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* spill - move what is in memory to a new unlinked file */
static int
spill(struct spool *sp)
{
	char	*path = xasprintf("%s/miltermux-replay.XXXXXX", sp->dir);
	int	 fd, rc;

	/* mkstemp creates the file with mode 0600. */
	if ((fd = mkstemp(path)) == -1) {
		rc = -errno;
		free(path);
		return rc;
	}
	(void)unlink(path);
	free(path);
	if ((rc = write_all(fd, buf_head(&sp->mem), buf_avail(&sp->mem)))
	    != 0) {
		close(fd);
		return rc;
	}
	sp->fd = fd;
	/* Give the memory back: this is what bounds the footprint. */
	buf_fini(&sp->mem);
	return 0;
}

int
spool_write(struct spool *sp, const void *p, size_t len)
{
	int	 rc;

	if (sp->fd == -1 && buf_avail(&sp->mem) + len > sp->limit &&
	    (rc = spill(sp)) != 0)
		return rc;
	if (sp->fd != -1) {
		if ((rc = write_all(sp->fd, p, len)) != 0)
			return rc;
	} else
		buf_add(&sp->mem, p, len);
	sp->size += len;
	return 0;
}

int
spool_read(struct spool *sp, size_t max, spool_fn *fn, void *arg)
{
	uint8_t	*chunk;
	size_t	 off = 0, n;
	ssize_t	 r;
	int	 rc = 0;

	if (sp->fd == -1) {
		for (off = 0; off < buf_avail(&sp->mem) && rc == 0; off += n) {
			n = buf_avail(&sp->mem) - off;
			n = n > max ? max : n;
			rc = fn(arg, buf_head(&sp->mem) + off, n);
		}
		return rc;
	}
	chunk = xmalloc(max);
	while (off < sp->size && rc == 0) {
		n = sp->size - off > max ? max : sp->size - off;
		if ((r = pread(sp->fd, chunk, n, (off_t)off)) == -1) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			break;
		}
		if (r == 0) {
			rc = -EIO;	/* the file shrank under us */
			break;
		}
		rc = fn(arg, chunk, (size_t)r);
		off += (size_t)r;
	}
	free(chunk);
	return rc;
}

void
spool_reset(struct spool *sp)
{
	if (sp->fd != -1)
		close(sp->fd);
	sp->fd = -1;
	buf_fini(&sp->mem);
	sp->size = 0;
}

void
spool_fini(struct spool *sp)
{
	spool_reset(sp);
	free(sp->dir);
	sp->dir = NULL;
}
