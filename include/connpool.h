/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * connpool - idle upstream connections kept across MTA sessions.
 *
 * When an MTA session ends with an upstream in a state where libmilter
 * takes SMFIC_QUIT_NC (after an end of message it answered "continue",
 * or after UNKNOWN: PROTOCOL.md 1.6), upstream.c writes QUIT_NC and
 * hands the socket here with what was negotiated on it.  The filter
 * has then run xxfi_close and cleared every macro; the next command it
 * takes is CONNECT, without a new option negotiation (which it would
 * drop).  A later session to the same endpoint, offering the same
 * options, takes the connection instead of connecting and negotiating.
 *
 * Idle connections are kept per endpoint (upstream name and socket
 * address: with replica pools, one endpoint per replica), newest
 * first, at most reuse_idle_max of them, each for at most
 * reuse_idle_timeout seconds; one the filter closed or wrote to is
 * dropped (connpool_sweep, and again when taken).  An idle connection
 * is owned here and by no session, and a taken one by one session only.
 *
 * Support is learnt per endpoint: a filter that negotiated a protocol
 * version below 6, that closes a connection right after QUIT_NC, or
 * whose reused connection fails before its first answer while none
 * ever worked, does not support QUIT_NC: reuse stops for that endpoint
 * (one log line) until the process ends.
 *
 * Does not: send anything on an idle socket (QUIT_NC was written by
 * upstream.c), or decide whether a session ended cleanly (upstream.c).
 *
 * Concurrency: thread-safe; connpool_lock protects the endpoint list
 * and every idle list.  connpool_sweep polls the idle sockets (never
 * blocking) under it; sockets are closed after it is released.
 * Ownership: connpool_put takes ownership of the connection only when
 * it returns true; connpool_take gives it to the caller.
 */
#ifndef CONNPOOL_H
#define CONNPOOL_H

#include <stdbool.h>
#include <stdint.h>

#include "conf.h"
#include "proto.h"

/* A negotiated connection: its socket and what was agreed on it. */
struct connpool_conn {
	int		 fd;
	uint32_t	 offer_actions;	/* what we offered */
	uint32_t	 offer_proto;
	uint32_t	 version;	/* what the filter took */
	uint32_t	 actions;
	uint32_t	 proto;
	char		*symlists[MACRO_STAGE_COUNT];	/* owned */
	char		 from[64];	/* the session that kept it */
};

/* Frees the symlists; closes fd unless it is -1. */
void	connpool_conn_fini(struct connpool_conn *);

/*
 * True when cfg's connections to addr may go to the pool: reuse is on
 * for it, the filter negotiated version 6 (else reuse stops for the
 * endpoint, logged once) and QUIT_NC was not found unsupported.
 */
bool	connpool_wants(const struct conf_upstream *cfg,
	    const struct conf_addr *addr, uint32_t version);
/*
 * Keeps c (QUIT_NC already written) as idle.  True: the pool owns it
 * and *c is cleared.  False (reuse off or found unsupported meanwhile,
 * or the pool is full): the caller keeps it, and closes it.
 */
bool	connpool_put(const struct conf_upstream *cfg,
	    const struct conf_addr *addr, struct connpool_conn *c);
/*
 * An idle connection to addr negotiated with the same offer, the
 * newest that is still open and silent: true and *out (caller owns,
 * connpool_conn_fini).  False: none (or reuse is off); connect.
 */
bool	connpool_take(const struct conf_upstream *cfg,
	    const struct conf_addr *addr, uint32_t offer_actions,
	    uint32_t offer_proto, struct connpool_conn *out);
/* A reused connection got its first answer: QUIT_NC works there. */
void	connpool_confirm(const struct conf_upstream *cfg,
	    const struct conf_addr *addr);
/*
 * A reused connection failed before its first answer (why: as logged).
 * If no reused connection ever worked at addr, reuse stops there (one
 * log line); else it was a stale connection (trace only).  connid
 * prefixes the line.
 */
void	connpool_first_use_failed(const struct conf_upstream *cfg,
	    const struct conf_addr *addr, const char *connid,
	    const char *why);
/*
 * Once a second or so (main.c): closes idle connections past their
 * timeout and those the filter closed or wrote to.
 */
void	connpool_sweep(void);
/*
 * After a reload to c: closes the idle connections of endpoints whose
 * upstream was removed, disabled, readdressed or had reuse turned off,
 * and applies the new limits to the others.
 */
void	connpool_reconfigure(const struct conf *c);
/* Idle connections now held (tests, status). */
unsigned connpool_idle(void);

#endif /* CONNPOOL_H */
