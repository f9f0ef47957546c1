/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * fanout - scatter one MTA connection's events to its upstreams, gather
 * and merge their answers.
 *
 * Design: every upstream exchange is a struct exchange (exchange.h):
 * it knows its upstream, the message it was asked for, its stage and
 * deadline, and owns its answer.  The caller's thread builds the
 * packets and submits; the upstream's loop completes the exchange and
 * calls fx_done(), which records the answer under fo->lock and wakes
 * the caller.  A waited exchange belongs to the caller again once done
 * (it reads the answer, then frees it); a pipelined one (header, eoh,
 * body, abort) is freed by fx_done() itself, its verdict folded into
 * the slot's deferred verdict if it still belongs to the current
 * message; an abandoned one (the caller stopped waiting: a decisive
 * reject elsewhere, the MTA gone) is freed there too, its answer
 * dropped.  The message itself, its identity and what is known of it,
 * is a struct message (message.h); end of message over the phases is
 * in eom.c.
 *
 * Health: each slot asks health.c at open whether its upstream is down
 * (then it is failed from the start and votes its on_failure at once)
 * and reports each failure when it happens and each message or session
 * it went through without one.
 *
 * Pools: a slot's upstream may have several replicas (conf.h).  At
 * open, replica.c orders them (fewest sessions in flight first) and
 * the slot opens the first one health.c does not skip; the opens of
 * all slots then run together, and each slot whose open failed moves
 * to its next replica in a further round (open_retry), within its
 * connect timeout.  A round waits for every open of the previous one,
 * so a failover may wait for another upstream's slow negotiation; all
 * of it stays within the longest connect timeout.  After negotiation
 * the slot keeps its replica: the health reports and log lines name it
 * (s->rep).  A replica's upstream that failed is closed like any other.
 *
 * Locking: fo->lock protects everything marked (L) and the fields of
 * struct exchange after submission.  It is never held across a callback into
 * libmilter, logging, or a post to a loop... except pool_post, which
 * only takes the loop's mailbox lock (order: fo->lock, then the loop's
 * lock; loops never take fo->lock while holding theirs).
 *
 * Modes: a monitor slot is waited for like any other, but gather()
 * takes its vote out of the merge (its own word is kept for the log);
 * shadow upstreams have no slot in the exchange: their packets are
 * built here (feed_shadows) and handed to shadow.c, which never makes
 * this file wait.  Size: past 1,500 lines since then; the packet
 * builders (put_*) are the part to split out next, left in place while
 * other branches are changing them.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>

#include <jansson.h>
#include <sys/socket.h>
#include <time.h>

#include "codec.h"
#include "exchange.h"
#include "fanout.h"
#include "fanout_int.h"
#include "health.h"
#include "log.h"
#include "monotime.h"
#include "merge.h"
#include "message.h"
#include "metrics.h"
#include "names.h"
#include "replica.h"
#include "spool.h"
#include "upstream.h"
#include "xalloc.h"

/* What each macro stage sends by default: the union of Postfix's and
 * Sendmail's default lists (PROTOCOL.md 3.2), which is what a milter
 * that asks for nothing expects to see. */
static const char *const default_macros[MACRO_STAGE_COUNT] = {
	[MACRO_CONNECT]	= "j _ {daemon_name} {daemon_addr} {if_name} "
			  "{if_addr} v {client_addr} {client_name}",
	[MACRO_HELO]	= "{tls_version} {cipher} {cipher_bits} "
			  "{cert_subject} {cert_issuer}",
	[MACRO_ENVFROM]	= "i {auth_type} {auth_authen} {auth_ssf} "
			  "{auth_author} {mail_mailer} {mail_host} {mail_addr}",
	[MACRO_ENVRCPT]	= "i {rcpt_mailer} {rcpt_host} {rcpt_addr}",
	[MACRO_DATA]	= "i",
	[MACRO_EOM]	= "i {msg_id}",
	[MACRO_EOH]	= "i",
};

double
fo_mono(void)
{
	return mono_now();
}

static void
fanout_unref(struct fanout *fo)
{
	if (atomic_fetch_sub_explicit(&fo->refs, 1, memory_order_acq_rel) != 1)
		return;
	for (size_t i = 0; i < fo->n; i++) {
		free(fo->slots[i].order);
		free(fo->slots[i].deferred_text);
		free(fo->slots[i].out_why);
		for (int m = 0; m < MACRO_STAGE_COUNT; m++)
			names_fini(&fo->slots[i].names[m]);
	}
	for (size_t i = 0; i < fo->nsh; i++)
		for (int m = 0; m < MACRO_STAGE_COUNT; m++)
			names_fini(&fo->shslots[i].names[m]);
	free(fo->shslots);
	for (int m = 0; m < MACRO_STAGE_COUNT; m++)
		free(fo->symlists[m]);
	message_fini(&fo->msg);
	free(fo->text);
	free(fo->phases);
	free(fo->slots);
	free(fo->connid);
	free(fo->client_name);
	free(fo->client_addr);
	free(fo->helo);
	conf_release(fo->conf);
	pthread_cond_destroy(&fo->cond);
	pthread_mutex_destroy(&fo->lock);
	free(fo);
}

/* fx_done - an exchange completed, on its upstream's loop thread */
static void
fx_done(struct upstream_xchg *x)
{
	struct exchange	*f = (struct exchange *)x;
	struct fanout	*fo = f->owner;
	struct slot	*s = &fo->slots[f->slot];
	bool		 mine, wake, newly = false;
	int		 err = x->error;	/* x may be gone after the unlock */
	enum stage	 st = x->stage;
	enum verdict	 was, now;
	size_t		 rep;
	uint64_t	 probe;

	pthread_mutex_lock(&fo->lock);
	/* Read here: once the caller is woken it may move an open that
	 * failed to the next replica. */
	rep = s->rep;
	probe = s->probe;
	s->inflight--;
	/* Its verdict as its "verdicts" map has it, before anything
	 * counts it (a mapped reject is not decisive). */
	was = fo_gate_verdict(fo, s, f);
	now = x->verdict;
	/* Wake the caller only for what it waits on (wait_all: the last
	 * answer, a reject, a failure; wait_room: room again), so that
	 * three upstreams do not wake it three times. */
	wake = x->error != 0 || s->inflight == MAX_INFLIGHT;
	if (x->error != 0 && x->error != -ECANCELED && !s->failed) {
		s->failed = true;
		newly = true;
	}
	/* An upstream's time counts for the message it was spent on. */
	if (x->kind == XCHG_STAGE && f->msg == fo->msg.seq)
		s->msg_seconds += exchange_seconds(f);
	mine = f->state != EX_WAITED;
	if (f->state == EX_ABANDONED) {
		log_trace(TRACE_MERGE, "%s: upstream %s: %s: late %s "
		    "dropped", fo->connid, health_key(s->cfg, s->rep),
		    proto_stage_name(x->stage), x->error != 0 ? "failure" :
		    proto_verdict_name(x->verdict));
	} else if (f->state == EX_WAITED) {
		f->done = true;
		fo->pending--;
		/* A monitor's reject is only logged: the others are
		 * still waited for. */
		if (x->error == 0 && x->verdict == VERDICT_REJECT &&
		    s->cfg->mode != MODE_MONITOR)
			fo->decisive = true;
		wake = wake || fo->pending == 0 || fo->decisive;
	} else if (x->kind == XCHG_STAGE && exchange_counts(f, fo->msg.seq) &&
	    merge_verdict(s->deferred, x->verdict) != s->deferred &&
	    x->verdict != VERDICT_CONTINUE && x->verdict != VERDICT_SKIP) {
		s->deferred = x->verdict;
		free(s->deferred_text);
		s->deferred_text = x->text;
		x->text = NULL;
	}
	pthread_mutex_unlock(&fo->lock);
	/*
	 * Signalled after the unlock, or the woken caller would block at
	 * once on the mutex we hold.  fo outlives this: its last
	 * references are the close exchanges, which this upstream's loop
	 * runs only after we return.
	 */
	if (wake)
		pthread_cond_broadcast(&fo->cond);
	if (was != VERDICT_NONE)
		log_info("%s: upstream %s: %s: %s mapped to %s by its verdicts",
		    fo->connid, s->cfg->name, proto_stage_name(st),
		    proto_verdict_name(was), proto_verdict_name(now));
	if (newly)
		health_failure(s->cfg, rep, probe, err);
	if (mine)
		exchange_free(f);
}

/* close_done - an upstream was closed and freed; drop its reference */
static void
close_done(struct upstream_xchg *x)
{
	struct exchange	*f = (struct exchange *)x;
	struct fanout	*fo = f->owner;

	exchange_free(f);
	fanout_unref(fo);
}

/* cancel_run - on the loop: expire an upstream the caller gave up on */
static void
cancel_run(struct pool_job *job)
{
	struct cancel	*c = (struct cancel *)job;
	struct slot	*s = &c->fo->slots[c->slot];

	upstream_expire(s->up, -ETIMEDOUT);
	pthread_mutex_lock(&c->fo->lock);
	s->cancel_posted = false;
	pthread_mutex_unlock(&c->fo->lock);
	/* open_retry may wait for this before it replaces s->up. */
	pthread_cond_broadcast(&c->fo->cond);
}

/* fx_new - an exchange for slot i, of the current message (whose seq
 * only the caller's thread writes) */
static struct exchange *
fx_new(struct fanout *fo, size_t i, enum xchg_kind kind, enum stage st)
{
	return exchange_new(fo, i, fo->msg.seq, kind, st,
	    kind == XCHG_CLOSE ? close_done : fx_done);
}

/* submit - hand f to its upstream; waited ones count as pending */
static void
submit(struct fanout *fo, struct exchange *f, bool waited, double deadline)
{
	struct slot	*s = &fo->slots[f->slot];

	pthread_mutex_lock(&fo->lock);
	f->state = waited ? EX_WAITED : EX_PIPELINED;
	f->deadline = deadline;
	s->inflight++;
	if (waited) {
		fo->pending++;
		s->cur = f;
	}
	pthread_mutex_unlock(&fo->lock);
	upstream_submit(s->up, &f->x);
}

/* stage_timeout - the budget for one stage of one upstream */
static double
stage_timeout(const struct slot *s, enum stage st)
{
	switch (st) {
	case STAGE_HEADER:
	case STAGE_EOH:
	case STAGE_BODY:
	case STAGE_EOM:
		return s->cfg->timeouts.content;
	default:
		return s->cfg->timeouts.command;
	}
}

static void	post_cancel(struct fanout *, size_t);

/* Upstreams a stage's waiter polls itself at most; more take the loop. */
#define DIRECT_MAX	32
/* How often a waiter on the condition variable looks at the MTA's
 * socket, in seconds. */
#define MTA_WATCH	0.1

/*
 * mta_gave_up - has the MTA sent something (an abort or quit) or closed
 * while it waits for our answer?  It sends nothing else then: every
 * stage we wait on is one it waits on too.  Records why in fo->mta_gone.
 */
static bool
mta_gave_up(struct fanout *fo)
{
	struct pollfd	 p = { .fd = fo->mta_fd, .events = POLLIN };
	uint8_t		 hdr[CODEC_HDR_LEN];
	ssize_t		 r;
	const char	*why;

	if (fo->mta_fd == -1 || poll(&p, 1, 0) <= 0)
		return false;
	r = recv(fo->mta_fd, hdr, sizeof hdr, MSG_PEEK | MSG_DONTWAIT);
	if (r == -1 && (errno == EAGAIN || errno == EINTR))
		return false;
	if (r <= 0)
		why = "the MTA closed the connection";
	else if (r == CODEC_HDR_LEN && hdr[4] == MC_ABORT)
		why = "the MTA aborted the message";
	else if (r == CODEC_HDR_LEN && (hdr[4] == MC_QUIT ||
	    hdr[4] == MC_QUIT_NC))
		why = "the MTA quit";
	else if (r < CODEC_HDR_LEN)
		return false;	/* the rest of the header is on its way */
	else
		why = "the MTA sent a command before our answer";
	pthread_mutex_lock(&fo->lock);
	fo->mta_gone = why;
	pthread_mutex_unlock(&fo->lock);
	pthread_cond_broadcast(&fo->cond);
	return true;
}

/*
 * fo_lend - give the loop back the held sockets of upstreams still owed
 * something (upstream.h, holding), before this thread sleeps on the
 * condition variable or returns to libmilter: only the loop watches them
 * then.  Idle ones stay held, out of the loop's epoll set: nothing is
 * due on them, and whatever comes anyway (a close, stray bytes) is found
 * by the next exchange, as the loop would have found it, only later.
 * Takes the loop, so never with fo->lock held (the loop's order is run
 * lock, then fo->lock).
 */
void
fo_lend(struct fanout *fo)
{
	bool	 any = false;

	/* Submitted counts too: a job in the loop's mailbox has not
	 * queued its exchange yet, and the loop writes it later. */
	pthread_mutex_lock(&fo->lock);
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];

		s->lend = s->up != NULL && upstream_held(s->up);
		any = any || s->lend;
		s->lend_busy = s->inflight > 0;
	}
	pthread_mutex_unlock(&fo->lock);
	if (!any)
		return;
	pool_enter(fo->loop, true);
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];

		if (s->lend && (s->lend_busy || !upstream_idle(s->up)))
			upstream_unborrow(s->up);
	}
	pool_leave(fo->loop);
}

/*
 * wait_direct - wait_all's short way: when the connection's loop is
 * idle, this thread polls the upstreams' sockets and reads the answers
 * itself.  Sleeping until the loop thread has read them and woken us
 * costs two threads a wake-up each per stage; this costs one, and the
 * answer is seen a hand-off sooner.  Gives up, leaving the rest to
 * wait_all, when a deadline or a progress report comes due or an
 * exchange cannot be polled here.
 */
static void
wait_direct(struct fanout *fo, fanout_progress_fn *progress)
{
	struct pollfd	 pfd[DIRECT_MAX + 1];
	size_t		 idx[DIRECT_MAX], n = 0;
	double		 until, t;
	bool		 over, ok = true;
	int		 r;

	if (fo->n == 0 || fo->n > DIRECT_MAX || !pool_enter(fo->loop, false)) {
		fo_lend(fo);
		return;
	}
	until = progress != NULL ? fo->nextprog : fo_mono() + 3600;
	pthread_mutex_lock(&fo->lock);
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];
		struct exchange	*f = s->cur;

		if (f == NULL || f->done)
			continue;
		if ((pfd[n].fd = upstream_borrow(s->up)) == -1) {
			ok = false;
			break;
		}
		pfd[n].events = upstream_poll_events(s->up);
		idx[n++] = i;
		if (f->deadline < until)
			until = f->deadline;
	}
	pthread_mutex_unlock(&fo->lock);
	pool_leave(fo->loop);
	/* The MTA's socket last, outside idx: watched, never handled. */
	pfd[n].fd = fo->mta_fd;
	pfd[n].events = POLLIN;
	pfd[n].revents = 0;
	while (ok && n > 0) {
		pthread_mutex_lock(&fo->lock);
		over = fo->pending == 0 || fo->decisive;
		pthread_mutex_unlock(&fo->lock);
		if (over || (t = fo_mono()) >= until)
			break;
		r = poll(pfd, n + 1, (int)((until - t) * 1000) + 1);
		if (r == -1 && errno != EINTR)
			break;
		if (r <= 0)
			continue;
		if (pfd[n].revents != 0 && mta_gave_up(fo))
			break;
		pool_enter(fo->loop, true);
		for (size_t k = 0; k < n; k++) {
			struct upstream	*up = fo->slots[idx[k]].up;

			if (pfd[k].revents != 0)
				pfd[k].fd = upstream_handle(up, pfd[k].revents);
			pfd[k].events = upstream_poll_events(up);
			pfd[k].revents = 0;
		}
		pool_leave(fo->loop);
	}
	fo_lend(fo);
}

/*
 * wait_all - wait until every waited exchange is done, a reject arrived,
 * or deadlines pass (those upstreams are then expired).  Returns with
 * fo->lock NOT held.
 */
void
fo_wait_all(struct fanout *fo, fanout_progress_fn *progress, void *parg)
{
	double		 t, next;
	struct timespec	 ts;
	bool		 expired;

	wait_direct(fo, progress);
	pthread_mutex_lock(&fo->lock);
	while (fo->pending > 0 && !fo->decisive && fo->mta_gone == NULL) {
		t = fo_mono();
		next = progress != NULL ? fo->nextprog : t + 3600;
		/* Look at the MTA's socket a few times a second: it cannot
		 * wake a condition variable. */
		if (fo->mta_fd != -1) {
			pthread_mutex_unlock(&fo->lock);
			if (mta_gave_up(fo)) {
				pthread_mutex_lock(&fo->lock);
				break;
			}
			pthread_mutex_lock(&fo->lock);
			if (next > t + MTA_WATCH)
				next = t + MTA_WATCH;
		}
		expired = false;
		for (size_t i = 0; i < fo->n; i++) {
			struct slot	*s = &fo->slots[i];
			struct exchange	*f = s->cur;

			if (f == NULL || f->done)
				continue;
			if (f->deadline <= t) {
				post_cancel(fo, i);
				expired = true;
			} else if (f->deadline < next)
				next = f->deadline;
		}
		if (expired) {
			/* The loops fail those upstreams promptly. */
			pthread_cond_wait(&fo->cond, &fo->lock);
			continue;
		}
		if (progress != NULL && t >= fo->nextprog) {
			pthread_mutex_unlock(&fo->lock);
			progress(parg);
			fo->nextprog = fo_mono() + PROGRESS_INTERVAL;
			pthread_mutex_lock(&fo->lock);
			continue;
		}
		ts = mono_ts(next);
		pthread_cond_timedwait(&fo->cond, &fo->lock, &ts);
	}
	/* Exchanges still out after a decisive reject (or the MTA gone)
	 * are abandoned: their upstream's queue reads the answer, fx_done
	 * drops and frees it.  The upstream may take until the exchange's
	 * deadline to catch up; its next exchange's budget starts then. */
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];
		struct exchange	*f = s->cur;

		if (f != NULL && !f->done) {
			exchange_abandon(f, &s->busy_until);
			s->cur = NULL;
		}
	}
	fo->pending = 0;
	fo->decisive = false;
	pthread_mutex_unlock(&fo->lock);
}

/* onfail_vote - how a failed upstream votes */
static enum verdict
onfail_vote(const struct slot *s)
{
	switch (s->cfg->on_failure) {
	case ONFAIL_TEMPFAIL:
		return VERDICT_TEMPFAIL;
	case ONFAIL_REJECT:
		return VERDICT_REJECT;
	default:
		return VERDICT_NONE;
	}
}

static bool
slot_failed(struct fanout *fo, struct slot *s)
{
	bool	 failed;

	pthread_mutex_lock(&fo->lock);
	failed = s->failed;
	pthread_mutex_unlock(&fo->lock);
	return failed;
}

/*
 * gate_action_bits - of the action bits act, those an upstream's
 * "actions" let it use (with ADDHDRS for a verdict it has mapped to a
 * header): the MTA is not asked for the others.  Its requests are
 * still checked when merged (gate.c): it may send them all the same.
 */
static uint32_t
gate_action_bits(const struct conf_upstream *u, uint32_t act)
{
	uint32_t	 mods = 0, allowed = 0, hdr = 0;

	for (int k = 0; k < MOD_KIND_COUNT; k++) {
		mods |= codec_mod_action((enum mod_kind)k);
		if ((u->actions & (1u << k)) != 0)
			allowed |= codec_mod_action((enum mod_kind)k);
	}
	for (int v = 0; v < VERDICT_COUNT; v++)
		if (u->verdicts[v].hname != NULL)
			hdr = MA_ADDHDRS;
	return (act & ~mods) | (act & allowed) | hdr;
}

/* gate_cond_macros - request the macros an upstream's conditions test */
static void
gate_cond_macros(struct names *list, const struct conf_upstream *u)
{
	for (size_t k = 0; k < u->apply_if.nmacros; k++)
		names_add_list(list, u->apply_if.macros[k].name);
	for (size_t k = 0; k < u->skip_if.nmacros; k++)
		names_add_list(list, u->skip_if.macros[k].name);
}

/* negotiate - merge the live upstreams' options into the MTA's request */
static void
negotiate(struct fanout *fo)
{
	/* Stages no upstream wants are not asked of the MTA: each costs
	 * a round trip with it.  Connect, HELO, MAIL and RCPT are asked
	 * for all the same: the decision log names the client, HELO name,
	 * sender and recipients. */
	uint32_t	 no = MP_NOHDRS | MP_NOEOH | MP_NOBODY | MP_NOUNKNOWN |
			    MP_NODATA;
	uint32_t	 act = 0;
	bool		 leadspc = false, rcpt_rej = false;
	size_t		 live = 0, reused = 0;

	/* A shadow upstream is negotiated with only when a message is
	 * replayed to it: it gets every stage, as if it wanted them all. */
	if (fo->nsh > 0)
		no = 0;
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];
		uint32_t	 p;

		if (s->failed)
			continue;
		live++;
		if (s->later) {
			/* Opened once the client is known: ask the MTA for
			 * every step and whatever it may be allowed to do. */
			no = 0;
			act |= gate_action_bits(s->cfg, MA_ALL);
			continue;
		}
		p = upstream_proto(s->up);
		act |= gate_action_bits(s->cfg, upstream_actions(s->up));
		no &= p;
		if ((p & MP_HDR_LEADSPC) != 0)
			leadspc = true;
		if ((p & MP_RCPT_REJ) != 0)
			rcpt_rej = true;
		if ((gate_action_bits(s->cfg, upstream_actions(s->up)) &
		    (MA_ADDHDRS | MA_CHGHDRS)) != 0)
			fo->need_headers = true;
	}
	/* Header edits are rebased on the original headers, and later
	 * phases are shown them: see them whenever that matters. */
	if (fo->nphases > 1)
		fo->need_headers = true;
	if (fo->need_headers)
		no &= ~(uint32_t)MP_NOHDRS;
	/* A change of a header that is not there adds it (PROTOCOL.md
	 * 5.1), and the merged script says so with addheader. */
	if ((act & MA_CHGHDRS) != 0)
		act |= MA_ADDHDRS;
	fo->actions = (act | MA_SETSYMLIST) & fo->mta_actions;
	fo->proto = no & fo->mta_proto;
	if ((fo->mta_proto & MP_SKIP) != 0)
		fo->proto |= MP_SKIP;
	if (leadspc && (fo->mta_proto & MP_HDR_LEADSPC) != 0) {
		fo->proto |= MP_HDR_LEADSPC;
		fo->leadspc = true;
	}
	/* Rejected recipients go to the upstreams that asked for them
	 * (fanout_event); the others never see them. */
	if (rcpt_rej && (fo->mta_proto & MP_RCPT_REJ) != 0)
		fo->proto |= MP_RCPT_REJ;
	/* The no-reply bits the upstreams asked for are not passed on to
	 * the MTA for the envelope stages: an upstream that fails there,
	 * or a later phase, must still be answered for, and the answer
	 * costs no upstream round trip (upstream.c sends and completes
	 * at once).  Headers, end of headers and body are asked of the
	 * MTA without reply by front.c in any case. */
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];

		s->leadspc_fix = fo->leadspc && !s->failed &&
		    (upstream_proto(s->up) & MP_HDR_LEADSPC) == 0;
	}
	for (int m = 0; m < MACRO_STAGE_COUNT; m++) {
		struct names	 all = { 0 };

		names_add_list(&all, default_macros[m]);
		for (size_t k = 0; k < fo->conf->nmacros[m]; k++)
			names_add_list(&all, fo->conf->macros[m][k]);
		for (size_t i = 0; i < fo->n; i++) {
			struct slot	*s = &fo->slots[i];
			const char	*own = s->failed || s->later ? NULL :
			    upstream_symlist(s->up, m);

			/* The macros its conditions look at, at connect
			 * and at MAIL, where they are decided. */
			if (m == MACRO_CONNECT || m == MACRO_ENVFROM)
				gate_cond_macros(&all, s->cfg);

			names_add_list(&all, own);
			/* One opened late gets its list when it is opened
			 * (fo_opened_slot); one that never is, none: the
			 * cost of an upstream a condition leaves out. */
			if (s->later)
				continue;
			names_add_list(&s->names[m], own != NULL ? own :
			    default_macros[m]);
			for (size_t k = 0; k < fo->conf->nmacros[m]; k++)
				names_add_list(&s->names[m],
				    fo->conf->macros[m][k]);
		}
		if ((fo->mta_actions & MA_SETSYMLIST) != 0)
			fo->symlists[m] = names_join(&all);
		names_fini(&all);
	}
	/* Shadows get the default macros and the configured ones. */
	for (size_t i = 0; i < fo->nsh; i++) {
		struct slot	*s = &fo->shslots[i];

		s->leadspc_fix = fo->leadspc;
		for (int m = 0; m < MACRO_STAGE_COUNT; m++) {
			names_add_list(&s->names[m], default_macros[m]);
			for (size_t k = 0; k < fo->conf->nmacros[m]; k++)
				names_add_list(&s->names[m],
				    fo->conf->macros[m][k]);
		}
	}
	for (size_t i = 0; i < fo->n; i++)
		if (!fo->slots[i].failed && upstream_is_reused(fo->slots[i].up))
			reused++;
	log_debug("%s: %zu of %zu upstreams live (%zu on connections "
	    "reused with QUIT_NC); asking the MTA for actions 0x%x protocol "
	    "0x%x", fo->connid, live, fo->n, reused, fo->actions, fo->proto);
}

static bool	open_next(struct fanout *, size_t i, double t);
static bool	open_retry(struct fanout *, double t);

/* fo_open_slot - start connecting slot i's upstream, on the replica
 * with the fewest sessions first; fo_open_wait waits for it */
void
fo_open_slot(struct fanout *fo, size_t i, double t)
{
	struct slot	*s = &fo->slots[i];
	struct exchange	*f;

	if (s->up != NULL) {
		/* The stand-in of a slot opened late: freed by its close. */
		f = fx_new(fo, i, XCHG_CLOSE, STAGE_QUIT);
		atomic_fetch_add(&fo->refs, 1);
		upstream_submit(s->up, &f->x);
		s->up = NULL;
	}
	s->order = xcalloc(s->cfg->nreplicas + 1, sizeof *s->order);
	s->norder = replica_choose(s->cfg, s->order);
	s->rep = s->order[0];
	s->held = true;
	(void)open_next(fo, i, t);
}

/* fo_open_wait - the opens started, each moved on to its next replica
 * while one fails (at most one round per replica) */
void
fo_open_wait(struct fanout *fo, double t)
{
	do
		fo_wait_all(fo, NULL, NULL);
	while (open_retry(fo, t));
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];

		if (s->cur != NULL) {
			exchange_free(s->cur);
			s->cur = NULL;
		}
		if (s->failed && s->held) {
			/* Not a session of that replica's any more. */
			replica_release(s->cfg, s->rep);
			s->held = false;
		}
	}
}

/* fo_opened_slot - a slot opened after the MTA's negotiation: what
 * negotiate() would have set for it (the MTA was asked for all) */
void
fo_opened_slot(struct fanout *fo, size_t i)
{
	struct slot	*s = &fo->slots[i];

	if (slot_failed(fo, s))
		return;
	s->leadspc_fix = fo->leadspc &&
	    (upstream_proto(s->up) & MP_HDR_LEADSPC) == 0;
	for (int m = 0; m < MACRO_STAGE_COUNT; m++) {
		const char	*own = upstream_symlist(s->up, m);

		names_fini(&s->names[m]);
		names_add_list(&s->names[m], own != NULL ? own :
		    default_macros[m]);
		for (size_t k = 0; k < fo->conf->nmacros[m]; k++)
			names_add_list(&s->names[m], fo->conf->macros[m][k]);
	}
	if (s->probe != 0)
		health_alive(s->cfg, s->rep, s->probe);
}

/* report_alive - a probe that negotiated brings its upstream back */
static void
report_alive(struct fanout *fo)
{
	for (size_t i = 0; i < fo->n; i++) {
		bool	 ok;

		pthread_mutex_lock(&fo->lock);
		ok = !fo->slots[i].failed && !fo->slots[i].later;
		pthread_mutex_unlock(&fo->lock);
		if (ok && fo->slots[i].probe != 0)
			health_alive(fo->slots[i].cfg, fo->slots[i].rep,
			    fo->slots[i].probe);
	}
}

/*
 * fanout_offer - the protocol bits offered to every upstream, as an MTA
 * would (PROTOCOL.md 2.6)
 *
 * Any step can be left out (MP_ALL_NO): that is emulated per upstream.
 * Any reply can go unread (MP_ALL_NR): Postfix and Sendmail offer them,
 * and a filter such as rspamd asks for all of them whatever it is
 * offered; a libmilter filter that negotiated NR must answer NOREPLY,
 * which libmilter turns into silence.  The residual risk is a filter
 * that negotiates NR and replies all the same: the protocol has no
 * sequence numbers, so such a reply is caught (upstream.c, stray_why)
 * only when it arrives before the next command is written; one that
 * comes later is taken for the answer to that command, exactly as
 * Postfix would take it.  SKIP is emulated per upstream.  HDR_LEADSPC
 * and RCPT_REJ only when the MTA has them: header bytes as the MTA
 * sends them cannot be restored, and recipients the MTA rejected are
 * only ever seen if it sends them.  No MDS bits: packets stay 64 KiB.
 */
uint32_t
fanout_offer(uint32_t mta_proto)
{
	return MP_ALL_NO | MP_ALL_NR | MP_SKIP |
	    (mta_proto & (MP_HDR_LEADSPC | MP_RCPT_REJ));
}

/*
 * open_next - open slot i on the next replica of its order that health
 * lets us use (replica.h, health.h), within the connect budget counted
 * from t.  The upstream of a replica that failed is closed first.  When
 * none is left the slot is failed (down, if every replica was skipped
 * and none tried), and its on_failure applies.  Returns whether an
 * open was submitted.
 */
static bool
open_next(struct fanout *fo, size_t i, double t)
{
	struct slot	*s = &fo->slots[i];
	const struct conf_upstream *cfg = s->cfg;
	struct exchange	*f;
	double		 now, left;
	size_t		 r;

	while (s->next < s->norder) {
		r = s->order[s->next++];
		if (health_check(cfg, r, &s->probe) == HEALTH_SKIP) {
			log_debug("%s: upstream %s: down; %s", fo->connid,
			    health_key(cfg, r), s->next < s->norder ?
			    "trying the next replica" : "no replica left");
			continue;
		}
		if (s->up != NULL) {
			/* The failed replica's: freed by its close. */
			f = fx_new(fo, i, XCHG_CLOSE, STAGE_QUIT);
			atomic_fetch_add(&fo->refs, 1);
			upstream_submit(s->up, &f->x);
		}
		replica_move(cfg, s->rep, r);
		s->rep = r;
		s->up = upstream_new(cfg, r, s->next < s->norder, fo->connid,
		    fo->loop);
		upstream_hold(s->up);
		pthread_mutex_lock(&fo->lock);
		s->failed = false;
		pthread_mutex_unlock(&fo->lock);
		f = fx_new(fo, i, XCHG_OPEN, STAGE_CONNECT);
		f->x.offer_actions = fo->mta_actions & MA_ALL;
		f->x.offer_proto = fanout_offer(fo->mta_proto);
		/* An equal share of what is left of the budget for each
		 * replica still to try, so that one that hangs leaves time
		 * for the others; the last one gets all that is left. */
		now = fo_mono();
		left = t + cfg->timeouts.connect - now;
		submit(fo, f, true, now + (left > 0 ? left : 0) /
		    (double)(s->norder - s->next + 1));
		return true;
	}
	pthread_mutex_lock(&fo->lock);
	s->failed = true;
	pthread_mutex_unlock(&fo->lock);
	if (s->up == NULL) {
		/* Never opened; fanout_close still frees it. */
		s->down = true;
		s->up = upstream_new(cfg, s->rep, false, fo->connid, fo->loop);
		log_debug("%s: upstream %s: down; applying on_failure=%s",
		    fo->connid, cfg->name,
		    conf_on_failure_name(cfg->on_failure));
	} else if (cfg->nreplicas > 1)
		log_warnx("%s: upstream %s: no replica left to try; applying "
		    "on_failure=%s", fo->connid, cfg->name,
		    conf_on_failure_name(cfg->on_failure));
	return false;
}

/*
 * open_retry - after a round of opens, move each slot whose replica
 * failed to connect or negotiate to its next replica, while the
 * upstream's connect budget (timeouts.connect, counted once from t for
 * all its replicas together; open_next gives each attempt a share)
 * lasts.  Returns whether any was moved.
 */
static bool
open_retry(struct fanout *fo, double t)
{
	bool	 moved = false, failed;

	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];

		pthread_mutex_lock(&fo->lock);
		failed = s->failed;
		/* An expiry posted for the failed upstream must have run
		 * before s->up changes (cancel_run reads it): it is on its
		 * way (the loop runs it next), and wakes us. */
		while (failed && s->cancel_posted)
			pthread_cond_wait(&fo->cond, &fo->lock);
		pthread_mutex_unlock(&fo->lock);
		if (!failed || s->down || s->next >= s->norder)
			continue;
		if (fo_mono() >= t + s->cfg->timeouts.connect) {
			log_warnx("%s: upstream %s: connect timeout spent "
			    "before every replica was tried; applying "
			    "on_failure=%s", fo->connid, s->cfg->name,
			    conf_on_failure_name(s->cfg->on_failure));
			continue;
		}
		if (s->cur != NULL) {
			exchange_free(s->cur);
			s->cur = NULL;
		}
		if (open_next(fo, i, t))
			moved = true;
	}
	return moved;
}

struct fanout *
fanout_open(struct conf *conf, struct pool *pool, const char *connid,
    uint32_t mta_actions, uint32_t mta_proto)
{
	struct fanout		*fo = xcalloc(1, sizeof *fo);
	struct pool_loop	*loop;
	pthread_condattr_t	 ca;
	double			 t = fo_mono();
	size_t			 k = 0, nsh = 0;

	pthread_mutex_init(&fo->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&fo->cond, &ca);
	pthread_condattr_destroy(&ca);
	fo->conf = conf;
	atomic_fetch_add(&conf->refs, 1);
	fo->connid = xstrdup(connid);
	fo->mta_fd = -1;
	fo->mta_actions = mta_actions;
	fo->mta_proto = mta_proto;
	/* Each array its own size: a slot is some 1.8 KiB to zero, for
	 * every session. */
	for (size_t i = 0; i < conf->nupstreams; i++)
		if (conf->upstreams[i].enabled &&
		    conf->upstreams[i].mode == MODE_SHADOW)
			nsh++;
	fo->slots = xcalloc(conf->nenabled - nsh == 0 ? 1 :
	    conf->nenabled - nsh, sizeof *fo->slots);
	fo->shslots = xcalloc(nsh == 0 ? 1 : nsh, sizeof *fo->shslots);
	for (size_t i = 0; i < conf->nupstreams; i++) {
		if (!conf->upstreams[i].enabled)
			continue;
		if (conf->upstreams[i].mode == MODE_SHADOW)
			fo->shslots[fo->nsh++].cfg = &conf->upstreams[i];
		else
			fo->slots[k++].cfg = &conf->upstreams[i];
	}
	fo->n = k;
	fo->phases = xcalloc(fo->n == 0 ? 1 : fo->n, sizeof *fo->phases);
	for (size_t i = 0; i < fo->n; i++) {
		unsigned	 ph = fo->slots[i].cfg->phase;
		size_t		 j = 0;

		while (j < fo->nphases && fo->phases[j] < ph)
			j++;
		if (j < fo->nphases && fo->phases[j] == ph)
			continue;
		memmove(&fo->phases[j + 1], &fo->phases[j],
		    (fo->nphases - j) * sizeof *fo->phases);
		fo->phases[j] = ph;
		fo->nphases++;
	}
	message_init(&fo->msg, conf->replay_memory, conf->replay_dir);
	atomic_store(&fo->refs, 1 + (unsigned)fo->n);
	/* All of a connection's upstreams on one loop: their answers to a
	 * stage arrive together and one wake-up of that loop handles them;
	 * connections still spread over the loops. */
	loop = pool_pick(pool);
	fo->loop = loop;
	for (size_t i = 0; i < fo->nsh; i++)
		fo->shslots[i].shadow = shadow_rec_new(fo->shslots[i].cfg,
		    conf, connid, loop);
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];

		/* A condition on the client: connected at the MTA's
		 * connect, if it applies (gate.c).  Meanwhile an upstream
		 * that is never connected stands for it, as for one that
		 * is down: the slots' code may rely on s->up. */
		if (s->cfg->cond_session) {
			s->later = true;
			s->up = upstream_new(s->cfg, 0, false, connid, loop);
		} else
			fo_open_slot(fo, i, t);
	}
	fo_open_wait(fo, t);
	negotiate(fo);
	report_alive(fo);
	fo_lend(fo);
	return fo;
}

void
fanout_options(struct fanout *fo, uint32_t *actions, uint32_t *proto,
    const char *symlists[MACRO_STAGE_COUNT])
{
	*actions = fo->actions;
	*proto = fo->proto;
	for (int m = 0; m < MACRO_STAGE_COUNT; m++)
		symlists[m] = fo->symlists[m];
}

size_t
fanout_live(const struct fanout *fo)
{
	size_t	 n = 0;

	pthread_mutex_lock((pthread_mutex_t *)&fo->lock);
	for (size_t i = 0; i < fo->n; i++)
		if (!fo->slots[i].failed)
			n++;
	pthread_mutex_unlock((pthread_mutex_t *)&fo->lock);
	return n;
}

/* put_macros - the 'D' packet with the values this upstream wants */
static void
put_macros(struct buf *b, const struct slot *s, const struct fanout_event *ev)
{
	int		 m = proto_stage_macro[ev->stage];
	const char	*pairs[2 * NAMES_MAX];
	size_t		 n = 0, used = 1, need;

	if (m < 0 || ev->macro == NULL || s->names[m].n == 0)
		return;
	for (size_t i = 0; i < s->names[m].n; i++) {
		const char	*tok = names_at(&s->names[m], i);
		const char	*v = ev->macro(ev->macro_arg, tok);

		if (v == NULL)
			continue;
		/* The MTA may send macros of up to 1 MiB (front.c); one
		 * that would push the packet over 64 KiB is left out, as
		 * if it had no value. */
		need = strlen(tok) + strnlen(v, PROTO_MAX_DATA) + 2;
		if (used + need > PROTO_MAX_DATA)
			continue;
		used += need;
		/* Borrowed from s->names, which outlives the packet. */
		pairs[2 * n] = tok;
		pairs[2 * n + 1] = v;
		n++;
	}
	codec_put_macros(b, proto_stage_cmd[ev->stage], pairs, n);
}

/* fit - s, or a copy of its first max bytes in *cut (caller frees) */
static const char *
fit(const char *s, size_t max, char **cut)
{
	if (strnlen(s, max + 1) <= max)
		return s;
	*cut = xstrndup(s, max);
	return *cut;
}

/*
 * put_argv - MAIL or RCPT within one packet: the address cut to fit,
 * then the ESMTP parameters that still fit whole
 */
static void
put_argv(struct buf *b, char cmd, const char *const *argv, size_t argc)
{
	const char	**v = xcalloc(argc == 0 ? 1 : argc, sizeof *v);
	char		*cut = NULL;
	size_t		 n = 0, used = 0, len;

	if (argc > 0) {
		v[n++] = fit(argv[0], PROTO_MAX_DATA - 1, &cut);
		used = strlen(v[0]) + 1;
	}
	for (size_t i = 1; i < argc; i++) {
		len = strnlen(argv[i], PROTO_MAX_DATA) + 1;
		if (used + len <= PROTO_MAX_DATA) {
			v[n++] = argv[i];
			used += len;
		}
	}
	codec_put_argv(b, cmd, v, n);
	free(cut);
	free(v);
}

/*
 * put_command - the stage's command packet for one upstream
 *
 * The MTA may send packets of up to 1 MiB (front.c), but a packet over
 * 64 KiB makes libmilter drop the connection: what does not fit is cut
 * (strings) or left out (ESMTP parameters).
 */
static void
put_command(struct buf *b, const struct slot *s, const struct fanout_event *ev)
{
	const char	*v, *name, *addr;
	char		*cut = NULL, *cut2 = NULL;

	switch (ev->stage) {
	case STAGE_CONNECT:
		addr = ev->argc > 1 && ev->argv[1] != NULL ? ev->argv[1] : "";
		addr = fit(addr, 1024, &cut2);
		/* host, NUL, family, port, address, NUL */
		v = fit(ev->argv[0], PROTO_MAX_DATA - 5 - strlen(addr), &cut);
		codec_put_connect(b, v, ev->family, ev->port, addr);
		break;
	case STAGE_HELO:
	case STAGE_UNKNOWN:
		codec_put_str(b, proto_stage_cmd[ev->stage],
		    fit(ev->argv[0], PROTO_MAX_DATA - 1, &cut));
		break;
	case STAGE_ENVFROM:
	case STAGE_ENVRCPT:
		put_argv(b, proto_stage_cmd[ev->stage], ev->argv, ev->argc);
		break;
	case STAGE_HEADER:
		v = ev->value;
		if (s->leadspc_fix && v[0] == ' ')
			v++;	/* what the MTA would have sent it */
		/* The value is cut to fit, and the name too when even it
		 * alone would not. */
		name = fit(ev->name, PROTO_MAX_DATA - 2, &cut2);
		v = fit(v, PROTO_MAX_DATA - strlen(name) - 2, &cut);
		codec_put_header(b, name, v);
		break;
	case STAGE_BODY:
		codec_put_packet(b, MC_BODY, ev->data, ev->len);
		break;
	default:
		codec_put_packet(b, proto_stage_cmd[ev->stage], NULL, 0);
		break;
	}
	free(cut);
	free(cut2);
}

/*
 * scatter - send ev to every usable upstream of phase (0: of every
 * phase); deadlines count from base
 */
void
fo_scatter(struct fanout *fo, const struct fanout_event *ev, bool waited,
    unsigned phase, double base)
{
	double	 t = base;

	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];
		struct exchange	*f;

		s->cur = NULL;
		if (phase != 0 && s->cfg->phase != phase)
			continue;
		if (fo_slot_out(s) || slot_failed(fo, s))
			continue;
		if (ev->rejected &&
		    (upstream_proto(s->up) & MP_RCPT_REJ) == 0)
			continue;
		f = fx_new(fo, i, XCHG_STAGE, ev->stage);
		put_macros(&f->x.macros, s, ev);
		put_command(&f->x.cmd, s, ev);
		submit(fo, f, waited, (s->busy_until > t ? s->busy_until : t) +
		    stage_timeout(s, ev->stage));
	}
}

/*
 * gather - fold the answers of a waited stage into votes; with a phase,
 * only its upstreams vote (and failed ones, which vote everywhere)
 */
static void
gather(struct fanout *fo, struct merge_vote *votes, bool with_deferred,
    unsigned phase, enum verdict *own)
{
	pthread_mutex_lock(&fo->lock);
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];
		struct exchange	*f = s->cur;

		votes[i].verdict = VERDICT_NONE;
		votes[i].text = NULL;
		if (fo_slot_out(s))
			continue;	/* out by a condition: continue */
		if (s->failed) {
			votes[i].verdict = onfail_vote(s);
			continue;
		}
		if (phase != 0 && s->cfg->phase != phase)
			continue;
		if (f != NULL && f->done && f->x.error == 0) {
			votes[i].verdict = f->x.verdict;
			votes[i].text = f->x.text;
		}
		if (with_deferred &&
		    merge_verdict(votes[i].verdict, s->deferred) !=
		    votes[i].verdict) {
			votes[i].verdict = s->deferred;
			votes[i].text = s->deferred_text;
		}
	}
	pthread_mutex_unlock(&fo->lock);
	/* A monitor's word is its own, never the merge's: whatever it
	 * said, and whatever its on_failure, it does not vote. */
	for (size_t i = 0; i < fo->n; i++) {
		bool	 mon = fo->slots[i].cfg->mode == MODE_MONITOR;

		if (own != NULL)
			own[i] = mon && fo->slots[i].failed ? VERDICT_NONE :
			    votes[i].verdict;
		if (mon) {
			votes[i].verdict = VERDICT_NONE;
			votes[i].text = NULL;
		}
	}
}

void
fo_release_cur(struct fanout *fo)
{
	for (size_t i = 0; i < fo->n; i++) {
		if (fo->slots[i].cur != NULL)
			exchange_free(fo->slots[i].cur);
		fo->slots[i].cur = NULL;
	}
}

void
fo_abort_slot(struct fanout *fo, size_t i)
{
	struct slot	*s = &fo->slots[i];
	struct exchange	*f;

	/* Never opened, or never in this message: nothing to tell. */
	if (s->out_session || s->later || s->out_msg || slot_failed(fo, s))
		return;
	f = fx_new(fo, i, XCHG_STAGE, STAGE_ABORT);
	codec_put_packet(&f->x.cmd, MC_ABORT, NULL, 0);
	submit(fo, f, false, 0);
}

static void
abort_upstreams(struct fanout *fo)
{
	for (size_t i = 0; i < fo->n; i++)
		fo_abort_slot(fo, i);
}

/*
 * message_reset - the message is over (sender NULL) or the next one
 * begins: a new number, so that answers still on their way to the old
 * one are dropped (fx_done), and the upstreams' per-message state
 * cleared
 */
static void
message_reset(struct fanout *fo, const char *sender)
{
	if (sender != NULL)
		message_begin(&fo->msg, sender);
	else
		message_clear(&fo->msg);
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];

		upstream_set_queueid(s->up, NULL);
		s->out_msg = s->out_rcpt = false;
		s->rcpts_shown = s->rcpts_hidden = 0;
	}
	pthread_mutex_lock(&fo->lock);
	fo->msg.seq++;
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];

		s->mapped_from = s->mapped_to = VERDICT_NONE;
		s->hdr_msg = NULL;
		s->deferred = VERDICT_NONE;
		free(s->deferred_text);
		s->deferred_text = NULL;
		s->msg_seconds = 0;
		s->msg_verdict = VERDICT_NONE;
		s->mon_mods = 0;
	}
	pthread_mutex_unlock(&fo->lock);
}

static bool
is_tx_stage(enum stage st)
{
	return st >= STAGE_ENVFROM && st != STAGE_UNKNOWN &&
	    st <= STAGE_EOM;
}

/* post_cancel - have the upstream's loop expire it (fo->lock held) */
static void
post_cancel(struct fanout *fo, size_t i)
{
	struct slot	*s = &fo->slots[i];

	if (s->cancel_posted)
		return;
	s->cancel_posted = true;
	s->cancel.fo = fo;
	s->cancel.slot = i;
	s->cancel.job.run = cancel_run;
	pool_post(upstream_loop(s->up), &s->cancel.job);
}

/*
 * wait_room - back-pressure for pipelined stages: wait while an upstream
 * has too much in flight; one still full after its command timeout (or
 * content timeout, if shorter) is too slow and is expired.  The MTA
 * waits for the answer to a header or body chunk as for a command, and
 * only at end of message can progress packets make it wait longer
 * (Sendmail: PROTOCOL.md 7.2).
 */
static void
wait_room(struct fanout *fo, double start)
{
	struct timespec	 ts;
	double		 t, next;
	bool		 full;

	pthread_mutex_lock(&fo->lock);
	for (;;) {
		full = false;
		t = fo_mono();
		next = fo->progress != NULL ? fo->nextprog : t + 3600;
		for (size_t i = 0; i < fo->n; i++) {
			struct slot	*s = &fo->slots[i];
			double		 cmd = s->cfg->timeouts.command;
			double		 cnt = s->cfg->timeouts.content;
			/* A replay to a later phase runs inside the
			 * MTA's end of message, kept alive by progress:
			 * the content timeout bounds it. */
			double		 dl = start + (cmd < cnt &&
			    fo->progress == NULL ? cmd : cnt);

			if (s->failed || s->inflight <= MAX_INFLIGHT)
				continue;
			if (dl <= t) {
				post_cancel(fo, i);
				continue;	/* it fails promptly */
			}
			full = true;
			if (dl < next)
				next = dl;
		}
		if (!full)
			break;
		if (fo->progress != NULL && t >= fo->nextprog) {
			pthread_mutex_unlock(&fo->lock);
			fo->progress(fo->progress_arg);
			fo->nextprog = fo_mono() + PROGRESS_INTERVAL;
			pthread_mutex_lock(&fo->lock);
			continue;
		}
		/* The loop reads the answers that make room. */
		pthread_mutex_unlock(&fo->lock);
		fo_lend(fo);
		pthread_mutex_lock(&fo->lock);
		ts = mono_ts(next);
		pthread_cond_timedwait(&fo->cond, &fo->lock, &ts);
	}
	pthread_mutex_unlock(&fo->lock);
}

/* send_content - header, eoh or body to a phase, body in packet-sized
 * pieces, each after there is room */
void
fo_send_content(struct fanout *fo, const struct fanout_event *ev,
    unsigned phase, double start)
{
	struct fanout_event	 part = *ev;

	if (ev->stage != STAGE_BODY || ev->len <= PROTO_MAX_DATA) {
		wait_room(fo, start);
		fo_scatter(fo, ev, false, phase, fo_mono());
		return;
	}
	for (size_t off = 0; off < ev->len; off += PROTO_MAX_DATA) {
		part.data = ev->data + off;
		part.len = ev->len - off > PROTO_MAX_DATA ? PROTO_MAX_DATA :
		    ev->len - off;
		wait_room(fo, start);
		fo_scatter(fo, &part, false, phase, fo_mono());
	}
}

/* pipelined - header, eoh, body: send without waiting for the answers */
static void
pipelined(struct fanout *fo, const struct fanout_event *ev,
    struct fanout_answer *ans)
{
	struct merge_vote	*votes;
	enum verdict		 v;
	double			 start = fo_mono();
	unsigned		 first = fo->nphases > 1 ? fo->phases[0] : 0;
	int			 d;

	/* The MTA's content goes to the first phase as it comes; later
	 * phases get it, as changed, at end of message. */
	fo_send_content(fo, ev, first, start);
	/* A reject already given is decisive; anything weaker waits for
	 * end of message, where every upstream has answered. */
	votes = xcalloc(fo->n == 0 ? 1 : fo->n, sizeof *votes);
	gather(fo, votes, true, 0, NULL);
	v = merge_stage(votes, fo->n, &d);
	if (v == VERDICT_REJECT) {
		ans->verdict = v;
		if (votes[d].text != NULL) {
			free(fo->text);
			fo->text = xstrdup(votes[d].text);
			ans->text = fo->text;
		}
		ans->decider = fo->slots[d].cfg->name;
	}
	free(votes);
}

/* rcpt_hidden - is this recipient hidden from an upstream that takes
 * part in the message?  Nobody voting on it then does not end it. */
static bool
rcpt_hidden(const struct fanout *fo)
{
	for (size_t i = 0; i < fo->n; i++)
		if (fo->slots[i].out_rcpt)
			return true;
	return false;
}

/* settle - the merged verdict of a waited stage, with its text */
enum verdict
fo_settle(struct fanout *fo, const struct fanout_event *ev, unsigned phase,
    struct fanout_answer *ans)
{
	struct merge_vote	*votes;
	enum verdict		*own, v;
	bool			 listening = fo->nsh > 0;
	int			 d;

	votes = xcalloc(fo->n == 0 ? 1 : fo->n, sizeof *votes);
	own = xcalloc(fo->n == 0 ? 1 : fo->n, sizeof *own);
	gather(fo, votes, ev->stage == STAGE_EOM, phase, own);
	v = merge_stage(votes, fo->n, &d);
	for (size_t i = 0; i < fo->n; i++)
		if (fo->slots[i].cfg->mode == MODE_MONITOR &&
		    own[i] == VERDICT_CONTINUE)
			listening = true;
	for (size_t i = 0; i < fo->n && is_tx_stage(ev->stage); i++) {
		struct slot	*s = &fo->slots[i];
		enum verdict	 u = own[i];

		/* What the upstream said of the message: a recipient's
		 * refusal is not, and its end-of-message word is final. */
		if (u == VERDICT_NONE || (ev->stage == STAGE_ENVRCPT &&
		    u != VERDICT_ACCEPT && u != VERDICT_DISCARD) ||
		    (phase != 0 && s->cfg->phase != phase && !s->failed))
			continue;
		s->msg_verdict = ev->stage == STAGE_EOM ? u :
		    merge_verdict(s->msg_verdict, u);
	}
	/* Nobody voted: accept, unless a monitor still in the message or
	 * a shadow wants to see the rest of it. */
	if (v == VERDICT_NONE)
		v = ev->stage == STAGE_UNKNOWN || (ev->stage == STAGE_ENVRCPT &&
		    rcpt_hidden(fo)) || (listening && ev->stage != STAGE_EOM) ?
		    VERDICT_CONTINUE : VERDICT_ACCEPT;
	if (v == VERDICT_SKIP || (ev->stage == STAGE_UNKNOWN &&
	    (v == VERDICT_ACCEPT || v == VERDICT_DISCARD)))
		v = VERDICT_CONTINUE;
	ans->verdict = v;
	ans->text = NULL;
	ans->decider = NULL;
	if (d >= 0 && votes[d].verdict == v) {
		if (votes[d].text != NULL &&
		    (v == VERDICT_REJECT || v == VERDICT_TEMPFAIL)) {
			free(fo->text);
			fo->text = xstrdup(votes[d].text);
			ans->text = fo->text;
		}
		ans->decider = fo->slots[d].cfg->name;
	}
	free(own);
	free(votes);
	log_trace(TRACE_MERGE, "%s: %s: merged %s%s%s", fo->connid,
	    proto_stage_name(ev->stage), proto_verdict_name(v),
	    ans->decider != NULL ? ", decided by " : "",
	    ans->decider != NULL ? ans->decider : "");
	return v;
}

/*
 * gave_up - the MTA aborted or closed while the upstreams were still
 * working on a stage: nothing of it is merged or applied, the upstreams
 * are told at once, and the message is logged as aborted.  The answer
 * (a tempfail) reaches an MTA that no longer listens.
 */
static void
gave_up(struct fanout *fo, const struct fanout_event *ev,
    struct fanout_answer *ans)
{
	ans->verdict = VERDICT_TEMPFAIL;
	ans->text = NULL;
	ans->decider = NULL;
	ans->mods = NULL;
	ans->mta_gone = true;
	abort_upstreams(fo);
	fo->msg.end_stage = ev->stage;
	if (fo->msg.active) {
		fo->msg.end_why = fo->mta_gone;
		fanout_message_done(fo, VERDICT_NONE, 0);
	} else
		log_info("%s: %s: %s while the upstreams were working",
		    fo->connid, proto_stage_name(ev->stage), fo->mta_gone);
}

/*
 * feed_shadows - a copy of the event's packets for each shadow upstream
 * (body in packet-sized pieces); recorded, never waited for
 */
static void
feed_shadows(struct fanout *fo, const struct fanout_event *ev)
{
	struct fanout_event	 part = *ev;

	if (fo->nsh == 0 || ev->rejected || ev->stage == STAGE_UNKNOWN)
		return;
	for (size_t i = 0; i < fo->nsh; i++) {
		struct slot	*s = &fo->shslots[i];
		size_t		 off = 0;

		do {
			struct buf	 m = BUF_INIT, c = BUF_INIT;

			if (ev->stage == STAGE_BODY) {
				part.data = ev->data + off;
				part.len = ev->len - off > PROTO_MAX_DATA ?
				    PROTO_MAX_DATA : ev->len - off;
				off += part.len;
			}
			put_macros(&m, s, &part);
			put_command(&c, s, &part);
			shadow_rec_add(s->shadow, ev->stage, &m, &c);
			buf_fini(&m);
			buf_fini(&c);
		} while (ev->stage == STAGE_BODY && off < ev->len);
	}
}

static void
event(struct fanout *fo, const struct fanout_event *ev,
    struct fanout_answer *ans)
{
	enum verdict		 v;
	const char		*qid;

	memset(ans, 0, sizeof ans[0]);
	ans->verdict = VERDICT_CONTINUE;
	free(fo->text);
	fo->text = NULL;
	fo->mta_gone = NULL;
	for (size_t i = 0; i < fo->n; i++)
		fo->slots[i].out_rcpt = false;
	if (ev->stage == STAGE_ENVFROM) {
		if (fo->msg.active)
			fanout_abort(fo);
		message_reset(fo, ev->argc > 0 ? ev->argv[0] : "");
		fo_gate_mail(fo, ev);
	} else if (ev->stage == STAGE_ENVRCPT)
		fo_gate_rcpt(fo, ev);
	else if (ev->stage >= STAGE_DATA && ev->stage <= STAGE_EOM &&
	    ev->stage != STAGE_UNKNOWN)
		fo_gate_rcpts_done(fo);
	if (ev->stage == STAGE_CONNECT) {
		free(fo->client_name);
		free(fo->client_addr);
		fo->client_name = xstrdup(ev->argc > 0 && ev->argv[0] != NULL ?
		    ev->argv[0] : "unknown");
		fo->client_addr = xstrdup(ev->argc > 1 && ev->argv[1] != NULL ?
		    ev->argv[1] : "");
		fo_gate_connect(fo, ev);
	}
	if (ev->stage == STAGE_HELO) {
		free(fo->helo);
		fo->helo = xstrdup(ev->argc > 0 && ev->argv[0] != NULL ?
		    ev->argv[0] : "");
	}
	if (is_tx_stage(ev->stage) && ev->macro != NULL &&
	    (qid = ev->macro(ev->macro_arg, "i")) != NULL &&
	    (fo->msg.queueid == NULL || strcmp(fo->msg.queueid, qid) != 0)) {
		message_set_queueid(&fo->msg, qid);
		for (size_t i = 0; i < fo->n; i++)
			upstream_set_queueid(fo->slots[i].up, qid);
	}
	feed_shadows(fo, ev);
	if (ev->stage == STAGE_HEADER && fo->need_headers)
		message_note_header(&fo->msg, ev->name, ev->value);
	if (ev->stage == STAGE_BODY && fo->nphases > 1 && fo->msg.spool_err == 0 &&
	    (fo->msg.spool_err = spool_write(&fo->msg.body, ev->data, ev->len)) != 0)
		log_warnc(fo->msg.spool_err, "%s: cannot keep the body for "
		    "later phases in %s", message_name(&fo->msg, fo->connid),
		    fo->conf->replay_dir);
	if (ev->stage == STAGE_HEADER || ev->stage == STAGE_EOH ||
	    ev->stage == STAGE_BODY) {
		pipelined(fo, ev, ans);
		if (ans->verdict != VERDICT_REJECT && fo->msg.spool_err != 0)
			ans->verdict = VERDICT_TEMPFAIL;
		if (ans->verdict == VERDICT_REJECT ||
		    ans->verdict == VERDICT_TEMPFAIL) {
			abort_upstreams(fo);
			fanout_message_done(fo, ans->verdict, 0);
		}
		return;
	}
	if (ev->stage == STAGE_EOM) {
		fo_end_of_message(fo, ev, ans);
		if (fo->mta_gone != NULL) {
			gave_up(fo, ev, ans);
			return;
		}
		fo->msg.decider = ans->decider;
		if (ans->verdict != VERDICT_CONTINUE &&
		    ans->verdict != VERDICT_ACCEPT)
			abort_upstreams(fo);	/* later phases */
		return;
	}
	fo_scatter(fo, ev, true, 0, fo_mono());
	fo_wait_all(fo, NULL, NULL);
	if (fo->mta_gone != NULL) {
		fo_release_cur(fo);
		gave_up(fo, ev, ans);
		return;
	}
	if (ev->rejected) {
		/* The MTA rejected it already: what the upstreams that
		 * asked to see it say changes nothing, for the MTA
		 * (Postfix ignores it; Sendmail would act on a discard or
		 * a 421) nor for the message. */
		log_debug("%s: rejected recipient %s shown to the upstreams "
		    "that asked for it", fo->connid,
		    ev->argc > 0 ? ev->argv[0] : "");
		fo_release_cur(fo);
		return;
	}
	v = fo_settle(fo, ev, 0, ans);
	if (ev->stage == STAGE_ENVRCPT && fo->msg.active && ev->argc > 0)
		message_note_rcpt(&fo->msg, ev->argv[0], v, ans->decider);
	fo_release_cur(fo);
	if (!is_tx_stage(ev->stage))
		return;
	if (v == VERDICT_CONTINUE ||
	    (ev->stage == STAGE_ENVRCPT && v != VERDICT_ACCEPT &&
	    v != VERDICT_DISCARD))
		return;
	/* The MTA is done with this transaction: so are the upstreams. */
	fo->msg.decider = ans->decider;
	abort_upstreams(fo);
	fanout_message_done(fo, v, 0);
}

/* fanout_event - event(), timed for metrics.h's stage histogram */
void
fanout_event(struct fanout *fo, const struct fanout_event *ev,
    struct fanout_answer *ans)
{
	double	 start = fo_mono();

	event(fo, ev, ans);
	fo_lend(fo);
	metrics_stage(ev->stage, fo_mono() - start);
}

void
fanout_abort(struct fanout *fo)
{
	abort_upstreams(fo);
	if (fo->msg.active)
		fanout_message_done(fo, VERDICT_NONE, 0);
	fo_lend(fo);
}

/* report_ok - tell health.c of every upstream that has not failed */
static void
report_ok(struct fanout *fo)
{
	bool	*ok = xcalloc(fo->n == 0 ? 1 : fo->n, sizeof *ok);

	pthread_mutex_lock(&fo->lock);
	for (size_t i = 0; i < fo->n; i++)
		ok[i] = !fo->slots[i].failed && !fo->slots[i].out_session &&
		    !fo->slots[i].later;
	pthread_mutex_unlock(&fo->lock);
	for (size_t i = 0; i < fo->n; i++)
		if (ok[i])
			health_report(fo->slots[i].cfg, fo->slots[i].rep,
			    fo->slots[i].probe, true);
	free(ok);
}

/*
 * fanout_message_done - one line says everything about the message:
 * its sender, each recipient with its own answer and who gave it, each
 * upstream's verdict and time, the merged verdict and who decided it
 */
void
fanout_message_applied(struct fanout *fo, const size_t kinds[MOD_KIND_COUNT])
{
	memcpy(fo->msg.applied, kinds, sizeof fo->msg.applied);
}

/* client_json - the session's own fields of a decision log record */
static json_t *
client_json(const struct fanout *fo, const char *event)
{
	json_t	*o = json_object();

	json_object_set_new(o, "event", json_string(event));
	json_object_set_new(o, "session", log_jstr(fo->connid));
	json_object_set_new(o, "client_name", log_jstr(fo->client_name));
	json_object_set_new(o, "client_addr", log_jstr(fo->client_addr));
	if (fo->helo != NULL)
		json_object_set_new(o, "helo", log_jstr(fo->helo));
	return o;
}

void
fanout_message_done(struct fanout *fo, enum verdict merged, size_t napplied)
{
	struct buf	 line = BUF_INIT;
	json_t		*o = NULL, *ups = NULL;

	if (!fo->msg.active)
		return;
	fo->nmessages++;
	/* The structured record only where it is logged: in text mode it
	 * would cost a score of allocations per message for nothing. */
	if (log_get_json()) {
		o = client_json(fo, "message");
		json_object_set_new(o, "queue_id", fo->msg.queueid != NULL ?
		    log_jstr(fo->msg.queueid) : json_null());
		ups = json_array();
	}
	message_put(&line, "upstreams");
	pthread_mutex_lock(&fo->lock);
	for (size_t i = 0; i < fo->n; i++) {
		const struct slot *s = &fo->slots[i];
		enum verdict	 v = merge_verdict(s->msg_verdict, s->deferred);
		bool		 out = s->out_session || s->out_msg;
		const char	*vs = out ? "skipped" : s->down ? "down" :
				    s->failed ? "failed" :
				    v == VERDICT_NONE ? "-" :
				    proto_verdict_name(v);
		char		*note = out ? NULL : fo_gate_note(s);
		const char	*why = out ? s->out_why : note;
		bool		 mon = s->cfg->mode == MODE_MONITOR;
		char		 tag[48] = "";

		/* A monitor's part says what it would have done. */
		if (mon)
			snprintf(tag, sizeof tag, s->mon_mods == 0 ?
			    "(monitor)" : "(monitor, %zu modification%s)",
			    s->mon_mods, s->mon_mods == 1 ? "" : "s");
		/* A pool's replica that served; a pool all down has none. */
		message_put(&line, " %s=%s%s", s->down || s->up == NULL ?
		    s->cfg->name : health_key(s->cfg, s->rep), vs, tag);
		if (why != NULL)
			message_put(&line, " (%s)", why);
		message_put(&line, "/%.0fms", s->msg_seconds * 1000);
		if (!out)
			metrics_upstream_verdict(s->cfg->name, s->down ?
			    METRICS_UV_DOWN : s->failed ? METRICS_UV_FAILED :
			    (int)v);
		if (!out && mon && !s->failed && (s->mon_mods > 0 ||
		    v == VERDICT_REJECT || v == VERDICT_TEMPFAIL ||
		    v == VERDICT_DISCARD))
			metrics_unapplied(s->cfg->name);
		if (ups != NULL) {
			json_t	*u = json_pack("{s:o, s:s, s:f}", "name",
			    log_jstr(s->cfg->name), "verdict", vs, "ms",
			    s->msg_seconds * 1000);

			if (why != NULL)
				json_object_set_new(u, out ? "skipped" : "note",
				    log_jstr(why));
			if (s->cfg->pool && !s->down && s->up != NULL)
				json_object_set_new(u, "replica", log_jstr(
				    s->cfg->replicas[s->rep].address));
			if (mon)
				json_object_update_new(u, json_pack(
				    "{s:s, s:I}", "mode", "monitor",
				    "modifications",
				    (json_int_t)s->mon_mods));
			json_array_append_new(ups, u);
		}
		free(note);
	}
	pthread_mutex_unlock(&fo->lock);
	report_ok(fo);
	metrics_message(merged);
	message_describe(&fo->msg, &line, merged, napplied);
	if (o != NULL) {
		json_object_set_new(o, "upstreams", ups);
		message_json(&fo->msg, o, merged, napplied);
	}
	message_put(&line, "; client %s[%s]", fo->client_name != NULL ?
	    fo->client_name : "unknown", fo->client_addr != NULL ?
	    fo->client_addr : "");
	buf_add_u8(&line, '\0');
	log_record(LOG_INFO, o, "%s: message (%s): %s",
	    message_name(&fo->msg, fo->connid), fo->connid,
	    (const char *)buf_head(&line));
	json_decref(o);
	buf_fini(&line);
	for (size_t i = 0; i < fo->nsh; i++)
		shadow_rec_end(fo->shslots[i].shadow, fo->msg.queueid);
	message_reset(fo, NULL);
}

void
fanout_watch_mta(struct fanout *fo, int fd)
{
	fo->mta_fd = fd;
}

void
fanout_close(struct fanout *fo)
{
	if (fo == NULL)
		return;
	if (fo->msg.active)
		fanout_message_done(fo, VERDICT_NONE, 0);
	if (fo->nmessages == 0) {
		json_t		*o = client_json(fo, "session");
		struct buf	 skipped = BUF_INIT;
		json_t		*sk = NULL;

		for (size_t i = 0; i < fo->n; i++) {
			const struct slot *s = &fo->slots[i];

			if (!s->out_session)
				continue;
			message_put(&skipped, "; upstream %s skipped (%s)",
			    s->cfg->name, s->out_why);
			if (sk == NULL)
				sk = json_object();
			json_object_set_new(sk, s->cfg->name,
			    log_jstr(s->out_why));
		}
		if (sk != NULL)
			json_object_set_new(o, "skipped", sk);
		buf_add_u8(&skipped, '\0');
		log_record(LOG_INFO, o, "%s: session without a message: "
		    "client %s[%s]%s%s%s", fo->connid, fo->client_name != NULL ?
		    fo->client_name : "unknown", fo->client_addr != NULL ?
		    fo->client_addr : "", fo->helo != NULL ? "; helo " : "",
		    fo->helo != NULL ? fo->helo : "",
		    (const char *)buf_head(&skipped));
		buf_fini(&skipped);
		json_decref(o);
	}
	report_ok(fo);
	for (size_t i = 0; i < fo->nsh; i++) {
		shadow_rec_free(fo->shslots[i].shadow);
		fo->shslots[i].shadow = NULL;
	}
	for (size_t i = 0; i < fo->n; i++) {
		struct exchange	*f = fx_new(fo, i, XCHG_CLOSE, STAGE_QUIT);

		if (fo->slots[i].held)
			replica_release(fo->slots[i].cfg, fo->slots[i].rep);
		upstream_submit(fo->slots[i].up, &f->x);
	}
	fanout_unref(fo);
}
