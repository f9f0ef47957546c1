/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * replica - which replica of a pool a new MTA session goes to.
 *
 * An upstream whose "address" is an array (conf.h, a pool) has
 * replicas of one filter.  Each new session goes to the replica with
 * the fewest sessions in flight here, ties broken round robin (a
 * rotating start per upstream, so that equal replicas take turns
 * rather than the first in config order taking every idle moment); if
 * that replica is down or fails to connect or negotiate, the session
 * moves to the next one in the same order (fanout.c).  A session is
 * "in flight" on a replica from its choice to fanout_close().
 *
 * It opens no socket and knows nothing of health: the caller asks
 * health.c about each replica in turn.  It is meant to sit in front of
 * any connection reuse: choose a replica, then take an idle connection
 * to it or connect.
 *
 * Counts are kept by replica label (conf.h), not by configuration
 * snapshot, so that sessions opened before a reload and closed after it
 * are counted right, and a replica kept across a reload keeps its
 * count.  An upstream with a single address is not counted at all.
 *
 * Concurrency: every function is thread-safe; replica_lock (replica.c)
 * protects the table, and nothing is logged under it.  Ownership: the
 * table keeps its own copies of labels until exit or replica_reset().
 */
#ifndef REPLICA_H
#define REPLICA_H

#include <stddef.h>

#include "conf.h"

/*
 * Fills order[0..cfg->nreplicas) with every replica index of cfg, best
 * first: fewest sessions in flight, ties round robin; the session is
 * counted on order[0] at once, so that sessions choosing at the same
 * moment spread.  Returns the number of indices (at least 1; for a
 * single address, just 0).
 */
size_t		replica_choose(const struct conf_upstream *cfg, size_t *order);

/* The session counted on replica from goes to replica to instead. */
void		replica_move(const struct conf_upstream *cfg, size_t from,
		    size_t to);

/* The session counted on replica r is over. */
void		replica_release(const struct conf_upstream *cfg, size_t r);

/* Sessions in flight on replica r of cfg (0 for a single address). */
unsigned	replica_inflight(const struct conf_upstream *cfg, size_t r);

/* Forgets every count (tests). */
void		replica_reset(void);

#endif /* REPLICA_H */
