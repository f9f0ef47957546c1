/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * fanout - one MTA connection's set of upstreams: scatter each stage to
 * all of them at once, gather and merge their answers.
 *
 * A stage costs as long as the slowest upstream, not the sum: the
 * caller's thread builds each upstream's packets, submits them to the
 * upstreams' pool loops, and waits on one latch with one deadline.  A
 * reject is decisive and returns at once; the exchanges still out are
 * abandoned: their answers are read by the upstream queues and dropped,
 * never merged into a later stage or message (exchange.h), and the next
 * exchange of a still busy upstream gets its budget from the end of the
 * abandoned one's.  While a stage waits, the MTA's socket is watched: an
 * MTA that aborts or closes ends the wait at once.  Header and body
 * packets are pipelined (the answer is not waited for; a verdict given
 * there is kept and merged at the next stage that waits), with a bound
 * on what may be in flight per upstream.  An upstream that fails is
 * dropped for the rest of the connection and votes its on_failure from
 * then on.
 *
 * Knows nothing of libmilter: the front end passes macro lookups and
 * progress as callbacks, so miltermux-send drives the same code.
 *
 * Concurrency: the fanout_* calls of one fanout must be serialised by the
 * caller (the MTA does: one command at a time); completion callbacks run
 * on pool threads and take fo->lock.  Ownership: fanout_open() returns a
 * fanout the caller owns until fanout_close(), which frees it once every
 * upstream is closed, without blocking.
 */
#ifndef FANOUT_H
#define FANOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "merge.h"
#include "pool.h"
#include "proto.h"

struct fanout;

/* Looks a macro up for the current stage; NULL when it has no value. */
typedef const char *fanout_macro_fn(void *arg, const char *name);
/* Tells the MTA that work goes on (end of message only). */
typedef void fanout_progress_fn(void *arg);

/*
 * Connects to and negotiates with every enabled upstream of conf in
 * parallel, offering what the MTA offered (mta_actions, mta_proto).
 * Blocks until all answered or the connect timeout passed.  An upstream
 * that health.h says is down is not tried.  Always returns a fanout
 * (failed and skipped upstreams vote their on_failure).  Takes a
 * reference on conf.
 */
struct fanout	*fanout_open(struct conf *, struct pool *, const char *connid,
		    uint32_t mta_actions, uint32_t mta_proto);

/*
 * What to ask of the MTA: actions and protocol steps (a subset of what
 * it offered) and per macro stage the names to request (a
 * space-separated list, or NULL to keep the MTA's default).  Strings are
 * borrowed, valid until fanout_close().
 */
void		 fanout_options(struct fanout *, uint32_t *actions,
		    uint32_t *proto, const char *symlists[MACRO_STAGE_COUNT]);

/* One event from the MTA. */
struct fanout_event {
	enum stage		 stage;
	/* connect: argv[0] host name, argv[1] address or NULL, family
	 * 'U' 'L' '4' '6', port host order; helo, unknown: argv[0];
	 * envfrom, envrcpt: address then ESMTP parameters. */
	const char *const	*argv;
	size_t			 argc;
	char			 family;
	uint16_t		 port;
	/* header */
	const char		*name;
	const char		*value;
	/* body */
	const uint8_t		*data;
	size_t			 len;
	fanout_macro_fn		*macro;
	void			*macro_arg;
	fanout_progress_fn	*progress;
	void			*progress_arg;
	/* envrcpt: a recipient the MTA already rejected (SMFIP_RCPT_REJ,
	 * macro {rcpt_mailer} "error").  Only upstreams that asked for
	 * RCPT_REJ see it, and the answer is always continue. */
	bool			 rejected;
};

/* The merged answer to one event. */
struct fanout_answer {
	/* Never NONE: a stage nobody voted on is ACCEPT when nobody is
	 * left to ask, else CONTINUE. */
	enum verdict		 verdict;
	/* The deciding upstream's reply text or NULL; borrowed, valid
	 * until the next fanout call. */
	const char		*text;
	const char		*decider;	/* its name, or NULL */
	/* End of message, when the verdict lets the message through:
	 * the merged edit script.  Borrowed, valid until the next call. */
	const struct merge_result *mods;
	/* The MTA aborted or closed while the upstreams worked on this
	 * stage: nothing is to be applied, the message is logged as
	 * aborted and the upstreams were told. */
	bool			 mta_gone;
};

/*
 * Sends ev to every upstream still in that stage and merges the
 * answers.  Blocks at most for the stage's timeout (command or
 * content), calling ev->progress every few seconds at end of message.
 * After a verdict that ends the transaction, upstreams still in it are
 * sent an abort.
 */
void	fanout_event(struct fanout *, const struct fanout_event *,
	    struct fanout_answer *);
/* The MTA aborted the transaction (or the front end ends it). */
void	fanout_abort(struct fanout *);
/*
 * Logs the message's summary line (queue id, each upstream's verdict and
 * time, the merged verdict, the modifications applied) and resets the
 * per-message state.  Called by the front end after end of message;
 * fanout_event() and fanout_abort() call it for transactions that end
 * earlier.  A no-op outside a transaction.
 */
/* What the MTA took of the merged edit script, counted by kind: for the
 * decision log, before fanout_message_done. */
void	fanout_message_applied(struct fanout *,
	    const size_t kinds[MOD_KIND_COUNT]);
void	fanout_message_done(struct fanout *, enum verdict merged,
	    size_t napplied);
/* Sends QUIT to every upstream and frees the fanout when they are done;
 * never blocks.  NULL is a no-op. */
void	fanout_close(struct fanout *);

/*
 * The MTA's socket, watched (polled, never read) while a stage waits
 * for the upstreams: the MTA sends nothing while it waits for our
 * answer, so data or EOF there means it gave up (fanout_answer
 * mta_gone).  -1, the default, watches nothing.  The fd stays the
 * caller's.
 */
void	fanout_watch_mta(struct fanout *, int fd);

/*
 * The protocol bits offered to each upstream when the MTA offered
 * mta_proto: every step and no-reply bit, SKIP, and HDR_LEADSPC and
 * RCPT_REJ if the MTA has them.
 */
uint32_t	fanout_offer(uint32_t mta_proto);

/* How many upstreams are still usable (not failed, not finished). */
size_t	fanout_live(const struct fanout *);

#endif /* FANOUT_H */
