/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * exchange - the identity of one upstream exchange and what may be
 * done with its answer.  See exchange.h.
 */
#include <stdlib.h>

#include "exchange.h"
#include "xalloc.h"

struct exchange *
exchange_new(void *owner, size_t slot, uint64_t msg, enum xchg_kind kind,
    enum stage st, void (*done)(struct upstream_xchg *))
{
	struct exchange	*e = xcalloc(1, sizeof *e);

	upstream_xchg_init(&e->x, kind, st);
	e->owner = owner;
	e->slot = slot;
	e->msg = msg;
	e->state = EX_PIPELINED;
	e->x.done = done;
	return e;
}

void
exchange_free(struct exchange *e)
{
	if (e == NULL)
		return;
	upstream_xchg_fini(&e->x);
	free(e);
}

bool
exchange_counts(const struct exchange *e, uint64_t current)
{
	return e->state != EX_ABANDONED && e->msg == current &&
	    e->x.error == 0;
}

void
exchange_abandon(struct exchange *e, double *busy_until)
{
	e->state = EX_ABANDONED;
	if (e->deadline > *busy_until)
		*busy_until = e->deadline;
}

double
exchange_seconds(const struct exchange *e)
{
	return (double)(e->x.finished.tv_sec - e->x.started.tv_sec) +
	    (double)(e->x.finished.tv_nsec - e->x.started.tv_nsec) / 1e9;
}
