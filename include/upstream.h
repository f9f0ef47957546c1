/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * upstream - the MTA side of the milter protocol for one upstream milter.
 *
 * Speaks protocol version 6 (and down to version 2) to one filter over
 * one non-blocking socket, owned by one pool loop.  It mirrors
 * libmilter's state machine (shared/PROTOCOL.md 1.6) so that it never
 * sends a command the filter would silently drop and never waits for a
 * reply that will not come: an exchange for a stage the filter is not in
 * completes at once with VERDICT_NONE.  Exchanges queue per upstream and
 * run one after another, so a caller may submit the next stage before
 * the previous one was answered (pipelining, and draining late replies
 * after a decisive verdict elsewhere).
 *
 * Anything the filter does wrong (garbage, a bad length, an unknown or
 * misplaced reply, a modification it did not negotiate, EOF) fails the
 * upstream for the rest of the MTA connection: the socket is closed,
 * every queued exchange completes with the error, one line is logged.
 * A failed stream is never reused.
 *
 * Concurrency: every function runs on the upstream's loop thread, except
 * upstream_new() and the read-only getters, which the owner may call
 * once the OPEN exchange has completed.  No locks in here.
 * Ownership: upstream_new() copies what it keeps; exchanges stay owned
 * by the submitter, who must keep them alive until done() ran.
 */
#ifndef UPSTREAM_H
#define UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <time.h>

#include "buf.h"
#include "codec.h"
#include "conf.h"
#include "pool.h"
#include "proto.h"

struct upstream;

enum xchg_kind {
	XCHG_OPEN = 0,	/* connect and negotiate options */
	XCHG_STAGE,	/* one protocol stage */
	XCHG_CLOSE,	/* send QUIT, close, free the upstream */
	XCHG_KIND_COUNT
};

struct upstream_xchg {
	struct pool_job			 job;	/* submitter's vehicle */
	TAILQ_ENTRY(upstream_xchg)	 entry;	/* upstream's queue */
	struct upstream			*up;
	enum xchg_kind			 kind;
	enum stage			 stage;	/* XCHG_STAGE */
	/* XCHG_OPEN: what we offer the filter. */
	uint32_t			 offer_actions;
	uint32_t			 offer_proto;
	/* XCHG_STAGE abort: written at once, ahead of a reply still due
	 * (set by upstream.c). */
	bool				 prewritten;
	/* XCHG_STAGE: a whole 'D' packet (or empty) and the command. */
	struct buf			 macros;
	struct buf			 cmd;
	/* Results, valid in done(). */
	int				 error;	/* 0 or -errno */
	enum verdict			 verdict;
	char				*text;	/* 'y' text; done() may take it */
	unsigned			 nprogress; /* progress packets seen */
	struct mod			*mods;	/* eom requests, arrival order */
	size_t				 nmods;
	size_t				 modcap;
	struct timespec			 started;
	struct timespec			 finished;
	/* Runs once on the loop thread; the exchange is then the
	 * submitter's again (it may free it, even from done()). */
	void				(*done)(struct upstream_xchg *);
	void				*arg;
};

/*
 * A closed upstream for replica r of cfg (its address; logs and
 * metrics name it by the replica's label, conf.h), bound to loop.
 * Caller owns it until it submits XCHG_CLOSE, which frees it.  connid
 * prefixes log lines.  failover: a failure before the options are
 * negotiated is logged as moving on to the next replica, not as
 * applying on_failure (the caller then tries that replica).
 */
struct upstream	*upstream_new(const struct conf_upstream *cfg, size_t r,
		    bool failover, const char *connid,
		    struct pool_loop *loop);
/* The MTA's queue id of the message now under way (NULL: none), which
 * the upstream's failure line names; callable from any thread. */
void	upstream_set_queueid(struct upstream *, const char *qid);
/* Clears and initialises an exchange for reuse. */
void		 upstream_xchg_init(struct upstream_xchg *, enum xchg_kind,
		    enum stage);
/* Releases the exchange's buffers and results. */
void		 upstream_xchg_fini(struct upstream_xchg *);
/*
 * Posts x to the upstream's loop, where it queues behind earlier
 * exchanges.  Thread-safe.  done() runs exactly once.  When the loop is
 * idle, a caller that is not a loop thread starts x itself (pool_run):
 * the command is written before upstream_submit() returns, and done()
 * may run on the caller's thread too, so the caller must not hold a
 * lock that done() takes.
 */
void		 upstream_submit(struct upstream *, struct upstream_xchg *x);
/*
 * Loop thread: fails the upstream (closes the socket, completes every
 * queued exchange with err) unless it has nothing queued.  Used for
 * deadlines: an upstream that answered in time is left alone.
 */
void		 upstream_expire(struct upstream *, int err);

/* Negotiated options; valid after XCHG_OPEN completed without error. */
uint32_t	 upstream_version(const struct upstream *);
uint32_t	 upstream_actions(const struct upstream *);
uint32_t	 upstream_proto(const struct upstream *);
/* The filter's macro list for a macro stage, or NULL; borrowed. */
const char	*upstream_symlist(const struct upstream *, enum macro_stage);
const char	*upstream_name(const struct upstream *);
/* OPEN took an idle connection kept with QUIT_NC (connpool.h). */
bool		 upstream_is_reused(const struct upstream *);
struct pool_loop *upstream_loop(const struct upstream *);

/*
 * Borrowing: a submitter waiting for its exchanges may poll the
 * upstream's socket itself instead of sleeping until the loop thread
 * has read the answers and woken it, which saves a thread wake-up per
 * stage.  All four run on the loop (pool_enter()).  upstream_borrow()
 * takes the socket out of the loop's epoll set and returns it (-1:
 * nothing to wait on); poll it for upstream_poll_events() and hand what
 * came to upstream_handle(), which reads, completes exchanges (their
 * done() runs there) and returns the socket to poll from then on (-1
 * after a failure); upstream_unborrow() gives the socket back.
 */
int		 upstream_borrow(struct upstream *);
short		 upstream_poll_events(const struct upstream *);
int		 upstream_handle(struct upstream *, short revents);
void		 upstream_unborrow(struct upstream *);

/*
 * Holding: a session's thread keeps its upstreams' sockets borrowed
 * between stages, so that a run of waited stages (connect, helo, mail,
 * rcpt, data) never wakes the loop thread: before each, the loop had
 * the socket back, woke at the first answer and raced the session's
 * thread for the rest.  upstream_hold() marks a new upstream, before
 * its first exchange, as borrowed from the start (the caller's thread
 * only); upstream_held() says whether it still is (the holder's thread
 * only: no other thread writes it); upstream_idle() (on the loop) says
 * whether it is owed nothing, so that nothing needs watching while the
 * holder is away: a held socket that is not idle must be given back
 * with upstream_unborrow() before its holder sleeps or returns.
 */
void		 upstream_hold(struct upstream *);
bool		 upstream_held(const struct upstream *);
bool		 upstream_idle(const struct upstream *);

#endif /* UPSTREAM_H */
