/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * health - which upstreams are worth asking, across MTA connections.
 *
 * Every MTA connection opens its own connection to each upstream, so
 * without shared memory a dead upstream would cost every new session a
 * connect timeout.  Here the sessions pool what they learn: after
 * `failures` failures in a row (cfg->failures) an upstream is marked
 * down for cfg->retry_after seconds, and new sessions skip it, applying
 * its on_failure at once.  When that time is up, the next session to
 * ask probes it, alone: the others go on skipping it until the probe
 * reports.  A success brings it back; a failure marks it down again.
 * Each change of state is logged in one line.
 *
 * It decides nothing about a session in progress and opens no socket;
 * fanout.c asks (health_check) before connecting and reports what it
 * saw (health_report).  Each replica of a pool (conf.h) has its own
 * breaker: every call names the replica r of cfg, and an upstream with
 * one address has one, keyed by its name as before pools.  Entries are
 * keyed by that name (health_key), not by
 * configuration snapshot, so the state survives a reload; the
 * thresholds come with each call, from the caller's snapshot.
 *
 * Concurrency: every function is thread-safe; health_lock (health.c)
 * protects the table, and nothing is logged under it.
 * Ownership: the table keeps its own copies of names, until exit or
 * health_reset().
 */
#ifndef HEALTH_H
#define HEALTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"

enum health_use {
	HEALTH_USE = 0,		/* up: use it as usual */
	HEALTH_PROBE,		/* down, due: this session probes it */
	HEALTH_SKIP,		/* down: apply its on_failure at once */
	HEALTH_USE_COUNT
};

/*
 * What a new session should do with upstream cfg.  On HEALTH_PROBE,
 * *probe is set to a token that the session's reports must carry (it
 * is 0 otherwise); the session must then report, or the upstream stays
 * down.  Never blocks beyond a short mutex hold.
 */
enum health_use	health_check(const struct conf_upstream *cfg, size_t r,
		    uint64_t *probe);

/*
 * What a session saw of cfg: ok false for a failure of any kind
 * (connect, timeout, protocol), true for work done without one.  While
 * the upstream is up, failures in a row mark it down and a success
 * resets the count; while it is down, only the report carrying the
 * pending probe's token counts.
 */
void		health_report(const struct conf_upstream *cfg, size_t r,
		    uint64_t probe, bool ok);

/*
 * Whether err (an errno value, either sign) is a shortage on our own
 * side, not the upstream's doing: out of descriptors (EMFILE, ENFILE)
 * or memory (ENOMEM, ENOBUFS).
 */
bool		health_local(int err);

/*
 * A failure of cfg with error err (-errno, or 0 when the peer broke
 * the protocol): health_report(cfg, probe, false), unless err is local
 * (health_local).  A local failure is not counted against the
 * upstream; if it hit the pending probe, the upstream stays down but
 * the next session to ask probes it.
 */
void		health_failure(const struct conf_upstream *cfg, size_t r,
		    uint64_t probe, int err);

/*
 * cfg connected and answered the option negotiation in the session
 * holding probe: the pending probe succeeded, and the upstream is up
 * again for every session, however long this one stays idle.  The
 * failure count is kept: one more failure before a success (a
 * health_report ok) marks it down again.  Does nothing for probe 0 or
 * an upstream that is not being probed.
 */
void		health_alive(const struct conf_upstream *cfg, size_t r,
		    uint64_t probe);

/* What the breaker thinks of one upstream, for metrics.h. */
struct health_info {
	bool		 up;		/* false: down or being probed */
	const char	*state;		/* "up", "down", "probing" (static) */
	unsigned	 fails;		/* failures in a row */
	double		 retry_in;	/* down: seconds until a probe */
};

/* The state of the replica labelled name (health_key); never seen: up. */
void		health_get(const char *name, struct health_info *);
/*
 * The state of upstream cfg as a whole: its one replica's, or for a
 * pool up while any replica is up ("up"), else "probing" while one is
 * probed, else "down" (retry_in: the soonest probe; fails: the fewest).
 */
void		health_get_upstream(const struct conf_upstream *cfg,
		    struct health_info *);
/*
 * The name replica r of cfg has here, in logs and in metrics.h: its
 * label (conf.h), or cfg->name for a cfg built without replicas.
 */
const char	*health_key(const struct conf_upstream *cfg, size_t r);

/* Forgets every upstream (tests). */
void		health_reset(void);

const char	*health_use_name(enum health_use);

#endif /* HEALTH_H */
