/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * shadow - upstreams in "mode": "shadow": a copy of the traffic, off the
 * latency path.
 *
 * A recorder per MTA session and shadow upstream keeps the packets
 * fanout.c built for it (the session's connect and helo, then each
 * message's stages); at the message's end the whole message, session
 * prefix included, is queued for the upstream's own thread, which
 * replays it over a connection of its own (upstream.c, on a pool loop)
 * and logs and counts what the upstream said: one line per message,
 * "QUEUEID: shadow NAME (SESSION): VERDICT/MSms; N modifications not
 * applied".  Nothing the upstream says is applied, and the MTA session
 * never waits for it: recording copies packets and takes a short lock,
 * nothing more.
 *
 * Bounds, per shadow upstream: shadow_queue messages waiting, and
 * shadow_queue_bytes bytes recorded, waiting or in service.  A message
 * that does not fit is dropped whole (never half of it), counted
 * (miltermux_shadow_dropped_total) and logged at most once a second.
 * A session's messages are replayed each on its own connection, as a
 * session of one message; a session without a message is not shown.
 *
 * Concurrency: a recorder belongs to its MTA session's thread; the
 * services are shared and locked inside.  Ownership: shadow_rec_new()
 * returns a recorder the caller owns, shadow_rec_free() frees it; a
 * queued message holds a reference on its configuration.
 */
#ifndef SHADOW_H
#define SHADOW_H

#include "buf.h"
#include "conf.h"
#include "pool.h"
#include "proto.h"

struct shadow_rec;

/* A recorder for cfg (mode shadow, of conf) in session connid, whose
 * replays run on loop.  Starts the upstream's service on first use. */
struct shadow_rec *shadow_rec_new(const struct conf_upstream *cfg,
		    struct conf *conf, const char *connid,
		    struct pool_loop *loop);
/*
 * Records one stage's packets (the 'D' packet, maybe empty, and the
 * command); takes their contents, leaving both empty.  Connect and helo
 * are kept for every message of the session; envfrom starts a message;
 * later stages belong to it (ignored outside one).  Never blocks.
 */
void	shadow_rec_add(struct shadow_rec *, enum stage, struct buf *macros,
	    struct buf *cmd);
/* The message ended (queueid: the MTA's, or NULL): it is queued for the
 * upstream, with an abort if it did not reach end of message, or
 * dropped and counted.  A no-op outside a message. */
void	shadow_rec_end(struct shadow_rec *, const char *queueid);
/* Ends a message still recorded, then frees.  NULL is a no-op. */
void	shadow_rec_free(struct shadow_rec *);

/*
 * At shutdown: lets every shadow upstream finish what is queued for it,
 * for at most grace seconds; what is left then is dropped, counted and
 * logged.  Blocks up to grace.
 */
void	shadow_drain(double grace);

#endif /* SHADOW_H */
