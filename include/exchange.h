/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * exchange - one question to one upstream, and its answer: which
 * upstream (slot), which message, which stage, until when.
 *
 * The protocol has no sequence numbers: an answer is the answer to the
 * command it follows.  So the identity of an answer is the identity of
 * the exchange that asked, and an exchange knows it from birth: the
 * message it was made for never changes.  Its answer counts only for
 * that message, and only while someone still wants it: a waited
 * exchange the caller gave up on (a decisive reject elsewhere, the MTA
 * gone) is abandoned, its answer read and dropped.
 *
 * Concurrency: no locks in here; the owner (fanout.c) guards state and
 * done with its own lock once the exchange is submitted.  Ownership:
 * exchange_new() returns an exchange the caller owns; a submitted one
 * belongs to its upstream until done() ran (upstream.h).
 */
#ifndef EXCHANGE_H
#define EXCHANGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "upstream.h"

enum exchange_state {
	EX_PIPELINED = 0,	/* nobody waits: header, body, abort */
	EX_WAITED,		/* the stage's caller waits for it */
	EX_ABANDONED,		/* was waited; the answer is dropped */
	EX_STATE_COUNT
};

struct exchange {
	struct upstream_xchg	 x;	/* first: done() casts */
	void			*owner;
	size_t			 slot;	/* the owner's index of the upstream */
	uint64_t		 msg;	/* the message it was asked for */
	enum exchange_state	 state;
	bool			 done;
	double			 deadline;	/* monotonic s; waited only */
};

/* A new exchange of kind and stage for the owner's upstream slot,
 * belonging to message msg; done is the completion callback. */
struct exchange	*exchange_new(void *owner, size_t slot, uint64_t msg,
		    enum xchg_kind, enum stage,
		    void (*done)(struct upstream_xchg *));
void		 exchange_free(struct exchange *);
/*
 * Whether its answer may be merged into message current: made for that
 * message, completed without error, and not abandoned.
 */
bool		 exchange_counts(const struct exchange *, uint64_t current);
/*
 * The caller stops waiting for it: its answer will be dropped.  The
 * upstream may take until the exchange's deadline to finish it, so
 * *busy_until is raised to that.
 */
void		 exchange_abandon(struct exchange *, double *busy_until);
/* Seconds the upstream spent on it, once done. */
double		 exchange_seconds(const struct exchange *);

#endif /* EXCHANGE_H */
