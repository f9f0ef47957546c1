/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * fanout_int - what fanout.c shares with eom.c, which runs end of
 * message over the phases: the connection's state and the fan-out
 * primitives.  Private to those two files.
 *
 * Concurrency and ownership: as in fanout.c (fo->lock guards what is
 * marked (L); everything else is the caller's thread's).
 */
#ifndef FANOUT_INT_H
#define FANOUT_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "exchange.h"
#include "names.h"
#include "fanout.h"
#include "merge.h"
#include "message.h"
#include "pool.h"
#include "shadow.h"
#include "upstream.h"

/* Pipelined packets an upstream may have in flight before the MTA waits:
 * bounds memory for a slow upstream and a large body. */
#define MAX_INFLIGHT		64
/* Progress at end of message restarts the MTA's read timeout (Postfix
 * milter_content_timeout, Sendmail T=R): often enough for any value of
 * it above a second. */
#define PROGRESS_INTERVAL	1.0

struct fanout;

struct cancel {
	struct pool_job		 job;	/* first */
	struct fanout		*fo;
	size_t			 slot;
};

struct slot {
	const struct conf_upstream	*cfg;
	struct upstream			*up;
	struct cancel			 cancel;
	/* Set by fanout_open before any other use; read-only after. */
	bool				 leadspc_fix;
	bool				 down;	/* skipped: health said so */
	uint64_t			 probe;	/* health token, or 0 */
	/* The replica in use (conf.h) and the order to try them in
	 * (replica.h), order[next..norder) still untried; held: the
	 * session is counted on rep.  Caller's thread; rep and probe are
	 * read by fx_done under fo->lock while an open is out. */
	size_t				 rep;
	size_t				*order;
	size_t				 norder, next;
	bool				 held;
	struct names			 names[MACRO_STAGE_COUNT];
	/* (L) */
	unsigned			 inflight;
	bool				 failed;
	bool				 cancel_posted;
	enum verdict			 deferred;
	char				*deferred_text;
	double				 msg_seconds;
	/* Caller's thread only. */
	enum verdict			 msg_verdict;
	size_t				 mon_mods;	/* monitor: asked */
	struct shadow_rec		*shadow;	/* shadow slots */
	struct exchange			*cur;	/* waited exchange, or NULL */
	/* fo_lend's, the caller's thread: held; owed something. */
	bool				 lend, lend_busy;
	/* Gates (gate.c), the caller's thread: opened only once the
	 * client is known; out of the session, the message, the current
	 * recipient; recipients shown and hidden this message; why out. */
	bool				 later;
	bool				 out_session;
	bool				 out_msg;
	bool				 out_rcpt;
	unsigned			 rcpts_shown;
	unsigned			 rcpts_hidden;
	char				*out_why;
	/* (L) The verdict map: the strongest verdict mapped this message
	 * (VERDICT_NONE: none), and the header due at end of message for
	 * a verdict mapped to one at connect or helo, or in the message. */
	enum verdict			 mapped_from;
	enum verdict			 mapped_to;
	const struct conf_vmap		*hdr_session;
	const struct conf_vmap		*hdr_msg;
	/* Until when it may still be answering an exchange we stopped
	 * waiting for: its next deadline counts from then, so that it
	 * catches up within its own budget and is not blamed for it. */
	double				 busy_until;
};

struct fanout {
	pthread_mutex_t		 lock;
	pthread_cond_t		 cond;		/* (L) changes wake it */
	atomic_uint		 refs;
	struct conf		*conf;
	char			*connid;
	struct slot		*slots;
	size_t			 n;
	/* The shadow upstreams (mode shadow): recorded, never waited
	 * for; only cfg, names, leadspc_fix and shadow are used. */
	struct slot		*shslots;
	size_t			 nsh;
	struct pool_loop	*loop;		/* all of its upstreams' */
	unsigned		 pending;	/* (L) waited, not done */
	bool			 decisive;	/* (L) a reject arrived */
	/* The MTA's socket, polled (never read) while a stage waits:
	 * data or EOF there means the MTA gave up on the stage.  -1:
	 * unknown.  Caller's thread. */
	int			 mta_fd;
	const char		*mta_gone;	/* why, or NULL */
	/* Negotiated with the MTA (caller's thread). */
	uint32_t		 mta_actions;
	uint32_t		 mta_proto;
	uint32_t		 actions;
	uint32_t		 proto;
	char			*symlists[MACRO_STAGE_COUNT];
	bool			 need_headers;
	bool			 leadspc;	/* MTA sends raw values */
	/* Distinct phases of the slots, ascending; with one phase, header
	 * and body go to everyone and nothing is kept for replay. */
	unsigned		*phases;
	size_t			 nphases;
	/* Set while end of message replays to later phases, so that
	 * back-pressure waits keep the MTA informed. */
	fanout_progress_fn	*progress;
	void			*progress_arg;
	double			 nextprog;	/* when the next is due */
	/* The current message; its seq is (L), the rest the caller's. */
	struct message		 msg;
	char			*text;		/* answer text copy */
	/* The session, for the decision log (the caller's). */
	char			*client_name;	/* connect: host name */
	char			*client_addr;	/* connect: address */
	char			*helo;
	unsigned long		 nmessages;	/* that reached their end */
	bool			 gate_rcpts_done;	/* this message's */
	long long		 msg_size;	/* its SIZE=, or -1 */
};

/* Seconds on CLOCK_MONOTONIC. */
double		 fo_mono(void);
/* Sends ev to every usable upstream of phase (0: of every phase),
 * waited or pipelined; deadlines count from base. */
void		 fo_scatter(struct fanout *, const struct fanout_event *,
		    bool waited, unsigned phase, double base);
/* Waits for the waited exchanges (a reject, the deadlines or the MTA's
 * giving up end it early), reporting progress if given. */
void		 fo_wait_all(struct fanout *, fanout_progress_fn *, void *);
/* Give the loop the held sockets it must watch (fanout.c). */
void		 fo_lend(struct fanout *);
/* The merged verdict of a waited stage of phase (0: all), with text. */
enum verdict	 fo_settle(struct fanout *, const struct fanout_event *,
		    unsigned phase, struct fanout_answer *);
/* Frees the waited exchanges the caller holds. */
void		 fo_release_cur(struct fanout *);
/* Header, eoh or body to a phase, with back-pressure from start. */
void		 fo_send_content(struct fanout *, const struct fanout_event *,
		    unsigned phase, double start);

/* fanout.c: connect to and negotiate with slot i (deadline from t);
 * after the wait, take its options as negotiate() does. */
void		 fo_open_slot(struct fanout *, size_t i, double t);
void		 fo_open_wait(struct fanout *, double t);
void		 fo_opened_slot(struct fanout *, size_t i);
/* fanout.c: tell slot i the message is aborted (if it is in one). */
void		 fo_abort_slot(struct fanout *, size_t i);
/* Is slot i out of the current stage by a condition? */
static inline bool
fo_slot_out(const struct slot *s)
{
	return s->out_session || s->out_msg || s->out_rcpt || s->later;
}

/* gate.c: the conditions at connect (opens the upstreams opened only
 * once the client is known, or keeps them out), at MAIL, at RCPT, and
 * once the recipients are known (any later stage). */
void		 fo_gate_connect(struct fanout *, const struct fanout_event *);
void		 fo_gate_mail(struct fanout *, const struct fanout_event *);
void		 fo_gate_rcpt(struct fanout *, const struct fanout_event *);
void		 fo_gate_rcpts_done(struct fanout *);
/* gate.c: apply slot s's verdict map to a completed stage exchange
 * (fo->lock held; no logging).  Returns the verdict it had, or
 * VERDICT_NONE when it is kept. */
enum verdict	 fo_gate_verdict(struct fanout *, struct slot *,
		    struct exchange *);
/* gate.c: slot i's modification requests as merged: those its
 * "actions" allow (the others dropped and logged, one line), plus the
 * header its verdict map adds.  Returns a new array of shallow copies
 * (caller frees the array only) and its length in *nout. */
struct mod	*fo_gate_mods(struct fanout *, size_t i, const struct mod *,
		    size_t n, size_t *nout);
/* gate.c: the slot's word for the decision log: "skipped (why)" or
 * NULL; and a note on mapped verdicts and hidden recipients or NULL
 * (caller frees). */
char		*fo_gate_note(const struct slot *);

/* eom.c: end of message over every phase, into ans. */
void		 fo_end_of_message(struct fanout *, const struct fanout_event *,
		    struct fanout_answer *);

#endif /* FANOUT_INT_H */
