/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * load - many MTA sessions over one small pool (see load.h).
 *
 * Design: a slot is one of the --concurrency places for a session.  It
 * claims up to --per-session messages, opens a session (so a milter
 * that cannot be reached still uses the count up and the run ends),
 * runs its messages, closes, and opens the next session until every
 * message is claimed.  A session and all of its upstreams live on one
 * pool loop.  Each member (one upstream of the session) has one
 * exchange, reused stage after stage; its done() callback, on that
 * loop, decides the next step: the next member of the chain, or the
 * next stage.  With --fanout every member of a stage is asked at once
 * and the last answer decides the next step: a fan-out with no proxy
 * in between.  The main thread starts the slots, then sleeps and wakes
 * every REAP_MS to post an expiry to any slot whose exchange is past
 * its deadline; the expiry runs on the slot's loop, where it can look
 * at the slot safely.
 *
 * Locking: ld->lock protects ld->active.  A slot's fields belong to its
 * loop, except deadline and expire_posted (atomics, read by the main
 * thread).  Counters and latency samples are written by the loops and
 * read by the main thread after the last slot finished; ld->lock orders
 * the two.  The error table is written only from the log sink, which
 * log.c calls under its own lock, and read after the pool stopped.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>

#include "codec.h"
#include "load.h"
#include "log.h"
#include "pool.h"
#include "proto.h"
#include "upstream.h"
#include "xalloc.h"

#define REAP_MS		50
#define MAX_ERRTEXTS	16	/* distinct error texts kept */

enum result {
	RES_PASSED = 0,
	RES_REJECTED,
	RES_TEMPFAILED,
	RES_DISCARDED,
	RES_FAILED,
	RES_COUNT
};

static const char *const result_names[RES_COUNT] = {
	[RES_PASSED]		= "passed",
	[RES_REJECTED]		= "rejected",
	[RES_TEMPFAILED]	= "tempfailed",
	[RES_DISCARDED]		= "discarded",
	[RES_FAILED]		= "failed",
};

struct slot;
struct load;

struct member {
	struct upstream_xchg	 x;	/* first: member_done casts */
	struct slot		*sl;
	struct upstream		*up;
	bool			 leadspc;	/* raw header values */
	bool			 out;		/* asked, not answered yet */
};

struct expiry {
	struct pool_job		 job;	/* first: expire_run casts */
	struct slot		*sl;
};

struct slot {
	struct load		*ld;
	unsigned		 id;
	struct pool_loop	*loop;
	struct pool_job		 start;		/* the slot's first session */
	struct expiry		 expiry;
	atomic_bool		 expire_posted;
	atomic_llong		 deadline;	/* monotonic ns; 0: none due */
	/* The loop's only, from here on. */
	struct member		*m;
	size_t			 cur;		/* member being asked */
	size_t			 pending;	/* fanout: not yet answered */
	bool			 broken;	/* fanout: a member failed */
	size_t			 closing;	/* members not yet closed */
	bool			 opening;	/* negotiating */
	bool			 in_msg;
	enum stage		 st;
	size_t			 idx;	/* recipient, header or body offset */
	unsigned long		 first;		/* session's first message */
	unsigned long		 msg;		/* current message */
	unsigned long		 msg_end;	/* claimed: [first, msg_end) */
	long long		 sess_t0;
	long long		 msg_t0;
	size_t			 rcpt_ok;
	enum verdict		 refused;
	/* The current stage over the chain. */
	enum verdict		 stop;	/* what stopped the chain, or NONE */
	size_t			 naccept;
	size_t			 nnone;
	size_t			 nskip;
	unsigned long		 res[RES_COUNT];
	unsigned long		 nerrors;
	char			 connid[24];
	char			 qid[24];
};

struct errtext {
	char		*text;
	unsigned long	 n;
};

struct load {
	const struct load_opts	*o;
	struct pool		*pool;
	struct slot		*slots;
	long long		 timeout_ns;
	atomic_ulong		 next;		/* next message to claim */
	atomic_ulong		 sessions;
	double			*lat;		/* ms by message; < 0: none */
	double			*setup;		/* ms by session's first msg */
	/* ms from the connect to the last message's final answer, by
	 * session's first msg: what an MTA waits for a whole session */
	double			*sess;
	pthread_mutex_t		 lock;		/* active */
	pthread_cond_t		 cond;
	unsigned		 active;	/* slots not finished */
	/* Written by the log sink only (under log.c's lock). */
	struct errtext		 errs[MAX_ERRTEXTS];
	size_t			 nerrs;
	unsigned long		 errs_other;
};

static void	ask(struct slot *);
static void	member_done(struct upstream_xchg *);
static void	slot_start(struct slot *);

static long long
now_ns(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double
ms_since(long long t0)
{
	return (double)(now_ns() - t0) / 1e6;
}

static bool
ends(enum verdict v)
{
	return v != VERDICT_CONTINUE && v != VERDICT_NONE &&
	    v != VERDICT_SKIP;
}

static enum result
result_of(enum verdict v)
{
	switch (v) {
	case VERDICT_REJECT:
		return RES_REJECTED;
	case VERDICT_TEMPFAIL:
		return RES_TEMPFAILED;
	case VERDICT_DISCARD:
		return RES_DISCARDED;
	default:
		return RES_PASSED;
	}
}

/* put_macros - the user's macros plus ours, as miltermux-send sends them */
static void
put_macros(struct slot *sl, struct buf *b, enum stage st,
    const char *extra_name, const char *extra_value)
{
	const struct load_opts	*o = sl->ld->o;
	const char		*pairs[2 * 64];
	size_t			 n = 0;
	bool			 have_i = false, have_extra = false;

	if (proto_stage_macro[st] < 0)
		return;
	for (size_t i = 0; i < o->nmacros && n < 62; i++, n++) {
		pairs[2 * n] = o->macros[i].name;
		pairs[2 * n + 1] = o->macros[i].value;
		if (strcmp(o->macros[i].name, "i") == 0)
			have_i = true;
		if (extra_name != NULL &&
		    strcmp(o->macros[i].name, extra_name) == 0)
			have_extra = true;
	}
	if (st >= STAGE_ENVFROM && !have_i) {
		pairs[2 * n] = "i";
		pairs[2 * n + 1] = sl->qid;
		n++;
	}
	if (extra_name != NULL && !have_extra) {
		pairs[2 * n] = extra_name;
		pairs[2 * n + 1] = extra_value;
		n++;
	}
	codec_put_macros(b, proto_stage_cmd[st], pairs, n);
}

static size_t
chunk_len(const struct slot *sl)
{
	size_t	 n = sl->ld->o->bodylen - sl->idx;

	return n > PROTO_MAX_DATA ? PROTO_MAX_DATA : n;
}

/* build - the packets of the current stage for one member */
static void
build(struct slot *sl, const struct member *mb, struct upstream_xchg *x)
{
	const struct load_opts	*o = sl->ld->o;
	const char		*v;

	switch (sl->st) {
	case STAGE_CONNECT:
		put_macros(sl, &x->macros, sl->st, NULL, NULL);
		codec_put_connect(&x->cmd, o->client_name,
		    strchr(o->client_addr, ':') != NULL ? '6' : '4',
		    (uint16_t)o->client_port, o->client_addr);
		break;
	case STAGE_HELO:
		put_macros(sl, &x->macros, sl->st, NULL, NULL);
		codec_put_str(&x->cmd, MC_HELO, o->helo);
		break;
	case STAGE_ENVFROM:
		put_macros(sl, &x->macros, sl->st, "{mail_addr}", o->from);
		codec_put_argv(&x->cmd, MC_MAIL, &o->from, 1);
		break;
	case STAGE_ENVRCPT:
		put_macros(sl, &x->macros, sl->st, "{rcpt_addr}",
		    o->rcpts[sl->idx]);
		codec_put_argv(&x->cmd, MC_RCPT, &o->rcpts[sl->idx], 1);
		break;
	case STAGE_HEADER:
		v = o->hdrs[sl->idx].value;
		/* MTAs strip one space after the colon unless the
		 * filter asked for the exact bytes (HDR_LEADSPC). */
		if (!mb->leadspc && v[0] == ' ')
			v++;
		codec_put_header(&x->cmd, o->hdrs[sl->idx].name, v);
		break;
	case STAGE_BODY:
		codec_put_packet(&x->cmd, MC_BODY, o->body + sl->idx,
		    chunk_len(sl));
		break;
	case STAGE_EOM:
		put_macros(sl, &x->macros, sl->st, NULL, NULL);
		codec_put_packet(&x->cmd, MC_BODYEOB, NULL, 0);
		break;
	default:	/* data, eoh, abort */
		put_macros(sl, &x->macros, sl->st, NULL, NULL);
		codec_put_packet(&x->cmd, proto_stage_cmd[sl->st], NULL, 0);
		break;
	}
}

/* reuse - ready a member's exchange for its next use, keeping buffers */
static void
reuse(struct member *mb, enum xchg_kind kind, enum stage st)
{
	struct upstream_xchg	*x = &mb->x;
	struct buf		 macros = x->macros, cmd = x->cmd;

	buf_init(&x->macros);
	buf_init(&x->cmd);
	upstream_xchg_fini(x);
	upstream_xchg_init(x, kind, st);
	buf_fini(&x->macros);
	buf_fini(&x->cmd);
	x->macros = macros;
	x->cmd = cmd;
	buf_reset(&x->macros);
	buf_reset(&x->cmd);
	x->done = member_done;
}

/* ask - send the current stage (or negotiation) to the current member */
static void
ask_member(struct slot *sl, struct member *mb)
{
	reuse(mb, sl->opening ? XCHG_OPEN : XCHG_STAGE, sl->st);
	if (sl->opening) {
		/* Offer everything, as Postfix and Sendmail do. */
		mb->x.offer_actions = MA_ALL;
		mb->x.offer_proto = MP_ALL_V6;
	} else
		build(sl, mb, &mb->x);
	mb->out = true;
	upstream_submit(mb->up, &mb->x);
}

/* ask - the current member (a chain), or every member at once (fanout) */
static void
ask(struct slot *sl)
{
	size_t	 n = sl->ld->o->nups;

	atomic_store(&sl->deadline, now_ns() + sl->ld->timeout_ns);
	if (!sl->ld->o->fanout) {
		ask_member(sl, &sl->m[sl->cur]);
		return;
	}
	sl->pending = n;
	for (size_t j = 0; j < n; j++)
		ask_member(sl, &sl->m[j]);
}

static void
begin_stage(struct slot *sl, enum stage st)
{
	sl->st = st;
	sl->cur = 0;
	sl->stop = VERDICT_NONE;
	sl->naccept = sl->nnone = sl->nskip = 0;
	ask(sl);
}

/* slot_finish - no message left to claim: this slot is done */
static void
slot_finish(struct slot *sl)
{
	struct load	*ld = sl->ld;

	pthread_mutex_lock(&ld->lock);
	if (--ld->active == 0)
		pthread_cond_signal(&ld->cond);
	pthread_mutex_unlock(&ld->lock);
}

/* close_session - QUIT every member; the last one closed goes on */
static void
close_session(struct slot *sl)
{
	size_t	 n = sl->ld->o->nups;

	sl->in_msg = false;
	sl->closing = n;
	for (size_t j = 0; j < n; j++) {
		reuse(&sl->m[j], XCHG_CLOSE, STAGE_QUIT);
		upstream_submit(sl->m[j].up, &sl->m[j].x);
	}
}

/* fail_rest - the messages of this session that will not be answered */
static void
fail_rest(struct slot *sl, enum result r)
{
	for (; sl->msg < sl->msg_end; sl->msg++)
		sl->res[r]++;
}

static void
start_message(struct slot *sl)
{
	if (sl->msg >= sl->msg_end) {
		sl->ld->sess[sl->first] = ms_since(sl->sess_t0);
		close_session(sl);
		return;
	}
	sl->in_msg = true;
	sl->msg_t0 = now_ns();
	snprintf(sl->qid, sizeof sl->qid, "L%08lX", sl->msg);
	sl->rcpt_ok = 0;
	sl->refused = VERDICT_NONE;
	begin_stage(sl, STAGE_ENVFROM);
}

/* end_message - the message has its answer; abort if it ended early */
static void
end_message(struct slot *sl, enum verdict v)
{
	sl->ld->lat[sl->msg] = ms_since(sl->msg_t0);
	sl->res[result_of(v)]++;
	sl->msg++;
	sl->in_msg = false;
	if (sl->st != STAGE_EOM) {
		begin_stage(sl, STAGE_ABORT);
		return;
	}
	start_message(sl);
}

static void
next_header(struct slot *sl)
{
	begin_stage(sl, sl->idx < sl->ld->o->nhdrs ? STAGE_HEADER : STAGE_EOH);
}

static void
next_body(struct slot *sl)
{
	begin_stage(sl, sl->idx < sl->ld->o->bodylen ? STAGE_BODY : STAGE_EOM);
}

/* outcome - the stage's answer over the chain */
static enum verdict
outcome(const struct slot *sl)
{
	size_t	 n = sl->ld->o->nups;

	if (sl->stop != VERDICT_NONE)
		return sl->stop;
	if (sl->naccept > 0 && sl->naccept + sl->nnone == n)
		return VERDICT_ACCEPT;
	if (sl->nskip > 0 && sl->nskip + sl->naccept + sl->nnone == n)
		return VERDICT_SKIP;
	return VERDICT_CONTINUE;
}

/* stage_done - every member asked (or one stopped the chain): go on */
static void
stage_done(struct slot *sl)
{
	const struct load_opts	*o = sl->ld->o;
	enum verdict		 v = outcome(sl);

	switch (sl->st) {
	case STAGE_CONNECT:
	case STAGE_HELO:
		if (v == VERDICT_REJECT || v == VERDICT_TEMPFAIL ||
		    v == VERDICT_DISCARD) {
			/* The whole connection is refused. */
			fail_rest(sl, result_of(v));
			close_session(sl);
		} else if (sl->st == STAGE_CONNECT)
			begin_stage(sl, STAGE_HELO);
		else {
			sl->ld->setup[sl->first] = ms_since(sl->sess_t0);
			start_message(sl);
		}
		break;
	case STAGE_ENVFROM:
		if (ends(v))
			end_message(sl, v);
		else {
			sl->idx = 0;
			begin_stage(sl, STAGE_ENVRCPT);
		}
		break;
	case STAGE_ENVRCPT:
		if (v == VERDICT_ACCEPT || v == VERDICT_DISCARD) {
			end_message(sl, v);
			break;
		}
		if (v == VERDICT_REJECT || v == VERDICT_TEMPFAIL)
			sl->refused = v == VERDICT_REJECT ||
			    sl->refused == VERDICT_REJECT ? VERDICT_REJECT :
			    VERDICT_TEMPFAIL;
		else
			sl->rcpt_ok++;
		if (++sl->idx < o->nrcpts)
			begin_stage(sl, STAGE_ENVRCPT);
		else if (sl->rcpt_ok == 0)
			/* Every recipient refused: the MTA would not go on. */
			end_message(sl, sl->refused);
		else
			begin_stage(sl, STAGE_DATA);
		break;
	case STAGE_DATA:
	case STAGE_HEADER:
		if (ends(v)) {
			end_message(sl, v);
			break;
		}
		sl->idx = sl->st == STAGE_DATA ? 0 : sl->idx + 1;
		next_header(sl);
		break;
	case STAGE_EOH:
		if (ends(v))
			end_message(sl, v);
		else {
			sl->idx = 0;
			next_body(sl);
		}
		break;
	case STAGE_BODY:
		if (v == VERDICT_SKIP)
			begin_stage(sl, STAGE_EOM);
		else if (ends(v))
			end_message(sl, v);
		else {
			sl->idx += chunk_len(sl);
			next_body(sl);
		}
		break;
	case STAGE_EOM:
		end_message(sl, v);
		break;
	case STAGE_ABORT:
		start_message(sl);
		break;
	default:
		break;
	}
}

/* session_fail - a member failed: the session's messages are lost */
static void
session_fail(struct slot *sl)
{
	sl->nerrors++;
	fail_rest(sl, RES_FAILED);
	close_session(sl);
}

/* rank - which of two stage answers stops a fanout stage */
static enum verdict
rank(enum verdict a, enum verdict b)
{
	static const enum verdict order[] = { VERDICT_REJECT,
	    VERDICT_TEMPFAIL, VERDICT_DISCARD };

	for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
		if (a == order[i] || b == order[i])
			return order[i];
	return VERDICT_NONE;
}

/* tally - count a member's answer to the stage; true for a refusal */
static bool
tally(struct slot *sl, enum verdict v)
{
	switch (v) {
	case VERDICT_REJECT:
	case VERDICT_TEMPFAIL:
	case VERDICT_DISCARD:
		return true;
	case VERDICT_ACCEPT:
		sl->naccept++;
		break;
	case VERDICT_NONE:
		sl->nnone++;
		break;
	case VERDICT_SKIP:
		sl->nskip++;
		break;
	default:
		break;
	}
	return false;
}

/* fanout_done - one member's answer to a stage asked of all at once;
 * the last one goes on */
static void
fanout_done(struct slot *sl, struct member *mb, struct upstream_xchg *x)
{
	if (x->error != 0)
		sl->broken = true;
	else if (sl->opening)
		mb->leadspc = (upstream_proto(mb->up) & MP_HDR_LEADSPC) != 0;
	else if (sl->st != STAGE_ABORT && tally(sl, x->verdict))
		sl->stop = rank(sl->stop, x->verdict);
	if (--sl->pending > 0)
		return;
	atomic_store(&sl->deadline, 0);
	if (sl->broken) {
		/* Only now: close_session() reuses every member's
		 * exchange, none of which may still be out. */
		sl->broken = false;
		session_fail(sl);
	} else if (sl->opening) {
		sl->opening = false;
		begin_stage(sl, STAGE_CONNECT);
	} else
		stage_done(sl);
}

/* member_done - one exchange of one member completed, on the loop */
static void
member_done(struct upstream_xchg *x)
{
	struct member	*mb = (struct member *)x;
	struct slot	*sl = mb->sl;

	if (x->kind == XCHG_CLOSE) {
		atomic_store(&sl->deadline, 0);
		mb->up = NULL;		/* freed by upstream.c */
		if (--sl->closing == 0)
			slot_start(sl);
		return;
	}
	mb->out = false;
	if (sl->ld->o->fanout) {
		fanout_done(sl, mb, x);
		return;
	}
	atomic_store(&sl->deadline, 0);
	if (x->error != 0) {
		session_fail(sl);
		return;
	}
	if (sl->opening) {
		mb->leadspc = (upstream_proto(mb->up) & MP_HDR_LEADSPC) != 0;
		if (++sl->cur < sl->ld->o->nups) {
			ask(sl);
			return;
		}
		sl->opening = false;
		begin_stage(sl, STAGE_CONNECT);
		return;
	}
	if (sl->st != STAGE_ABORT && tally(sl, x->verdict)) {
		/* The chain stops at the first milter that refuses, as in
		 * Postfix and Sendmail. */
		sl->stop = x->verdict;
		stage_done(sl);
		return;
	}
	if (++sl->cur < sl->ld->o->nups)
		ask(sl);
	else
		stage_done(sl);
}

/* slot_start - claim messages and open a session, or finish the slot */
static void
slot_start(struct slot *sl)
{
	struct load		*ld = sl->ld;
	const struct load_opts	*o = ld->o;
	unsigned long		 first;

	first = atomic_fetch_add(&ld->next, o->per_session);
	if (first >= o->count) {
		slot_finish(sl);
		return;
	}
	atomic_fetch_add(&ld->sessions, 1);
	sl->first = sl->msg = first;
	sl->msg_end = o->count - first < o->per_session ? o->count :
	    first + o->per_session;
	sl->sess_t0 = now_ns();
	for (size_t j = 0; j < o->nups; j++) {
		sl->m[j].sl = sl;
		sl->m[j].up = upstream_new(&o->ups[j], 0, false, sl->connid,
		    sl->loop);
	}
	sl->opening = true;
	sl->cur = 0;
	ask(sl);
}

static void
start_run(struct pool_job *job)
{
	slot_start((struct slot *)((char *)job - offsetof(struct slot,
	    start)));
}

/* expire_run - on the slot's loop: fail an exchange past its deadline */
static void
expire_run(struct pool_job *job)
{
	struct slot	*sl = ((struct expiry *)job)->sl;
	long long	 d = atomic_load(&sl->deadline);

	/* Every member still owed an answer: the current one of a chain,
	 * any of a fanout. */
	if (d != 0 && now_ns() >= d)
		for (size_t j = 0; j < sl->ld->o->nups; j++)
			if (sl->m[j].out && sl->m[j].up != NULL)
				upstream_expire(sl->m[j].up, -ETIMEDOUT);
	atomic_store(&sl->expire_posted, false);
}

/* reap - main thread: post an expiry to every slot past its deadline */
static void
reap(struct load *ld)
{
	long long	 t = now_ns(), d;

	for (unsigned i = 0; i < ld->o->concurrency; i++) {
		struct slot	*sl = &ld->slots[i];

		d = atomic_load(&sl->deadline);
		if (d == 0 || t < d || atomic_exchange(&sl->expire_posted, true))
			continue;
		sl->expiry.sl = sl;
		sl->expiry.job.run = expire_run;
		pool_post(sl->loop, &sl->expiry.job);
	}
}

/*
 * sink - upstream failures log one line each; count them by text
 * instead of flooding stderr.  Called under log.c's lock.
 */
static void
sink(void *arg, int priority, const char *line)
{
	struct load	*ld = arg;
	const char	*p = strstr(line, ": ");
	const char	*e;
	size_t		 len;

	(void)priority;
	/* Drop the "load-N: " session prefix and the on_failure tail. */
	p = p != NULL && strncmp(line, "load-", 5) == 0 ? p + 2 : line;
	e = strstr(p, "; applying on_failure=");
	len = e != NULL ? (size_t)(e - p) : strlen(p);
	for (size_t i = 0; i < ld->nerrs; i++)
		if (strlen(ld->errs[i].text) == len &&
		    strncmp(ld->errs[i].text, p, len) == 0) {
			ld->errs[i].n++;
			return;
		}
	if (ld->nerrs == MAX_ERRTEXTS) {
		ld->errs_other++;
		return;
	}
	ld->errs[ld->nerrs].text = xstrndup(p, len);
	ld->errs[ld->nerrs].n = 1;
	ld->nerrs++;
}

static int
cmp_double(const void *a, const void *b)
{
	double	 x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y ? 1 : 0;
}

struct dist {
	size_t	 n;
	double	 p50, p95, p99, max, mean;
};

/* distribution - nearest-rank percentiles of the samples >= 0 */
static struct dist
distribution(const double *v, size_t nv)
{
	struct dist	 d;
	double		*s = xcalloc(nv == 0 ? 1 : nv, sizeof *s);
	double		 sum = 0;
	size_t		 n = 0;

	memset(&d, 0, sizeof d);
	for (size_t i = 0; i < nv; i++)
		if (v[i] >= 0) {
			s[n++] = v[i];
			sum += v[i];
		}
	d.n = n;
	if (n > 0) {
		qsort(s, n, sizeof *s, cmp_double);
#define RANK(p)	s[((p) * n + 99) / 100 - 1]
		d.p50 = RANK(50);
		d.p95 = RANK(95);
		d.p99 = RANK(99);
#undef RANK
		d.max = s[n - 1];
		d.mean = sum / (double)n;
	}
	free(s);
	return d;
}

static void
json_string(FILE *out, const char *s)
{
	fputc('"', out);
	for (; *s != '\0'; s++) {
		unsigned char	 c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(out, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			fprintf(out, "\\u%04x", c);
		else
			fputc(c, out);
	}
	fputc('"', out);
}

static void
json_dist(FILE *out, const char *name, const struct dist *d)
{
	fprintf(out, "  \"%s\": {\"n\": %zu, \"p50\": %.3f, \"p95\": %.3f, "
	    "\"p99\": %.3f, \"max\": %.3f, \"mean\": %.3f},\n", name, d->n,
	    d->p50, d->p95, d->p99, d->max, d->mean);
}

/* report - the figures, as text or JSON */
static void
report(struct load *ld, FILE *out, double seconds)
{
	const struct load_opts	*o = ld->o;
	unsigned long		 res[RES_COUNT] = { 0 }, nerrors = 0;
	struct dist		 lat, setup, sess;
	double			 rate;

	for (unsigned i = 0; i < o->concurrency; i++) {
		for (int r = 0; r < RES_COUNT; r++)
			res[r] += ld->slots[i].res[r];
		nerrors += ld->slots[i].nerrors;
	}
	lat = distribution(ld->lat, o->count);
	setup = distribution(ld->setup, o->count);
	sess = distribution(ld->sess, o->count);
	rate = seconds > 0 ? (double)(o->count - res[RES_FAILED]) / seconds :
	    0;
	if (o->json) {
		fputs("{\n  \"mode\": \"load\",\n  \"servers\": [", out);
		for (size_t j = 0; j < o->nups; j++) {
			fputs(j > 0 ? ", " : "", out);
			json_string(out, o->ups[j].address);
		}
		fprintf(out, "],\n  \"chain\": %s,\n  \"fanout\": %s,\n"
		    "  \"count\": %lu,\n"
		    "  \"concurrency\": %u,\n  \"per_session\": %u,\n"
		    "  \"threads\": %u,\n  \"size\": %zu,\n  \"rcpts\": %zu,\n"
		    "  \"sessions\": %lu,\n  \"seconds\": %.6f,\n"
		    "  \"messages_per_second\": %.3f,\n  \"results\": {",
		    o->nups > 1 && !o->fanout ? "true" : "false",
		    o->fanout ? "true" : "false", o->count, o->concurrency,
		    o->per_session, o->threads, o->size, o->nrcpts,
		    atomic_load(&ld->sessions), seconds, rate);
		for (int r = 0; r < RES_COUNT; r++)
			fprintf(out, "%s\"%s\": %lu", r > 0 ? ", " : "",
			    result_names[r], res[r]);
		fputs("},\n", out);
		json_dist(out, "latency_ms", &lat);
		json_dist(out, "setup_ms", &setup);
		json_dist(out, "session_ms", &sess);
		fprintf(out, "  \"errors\": %lu,\n  \"error_texts\": [",
		    nerrors);
		for (size_t i = 0; i < ld->nerrs; i++) {
			fprintf(out, "%s{\"count\": %lu, \"text\": ",
			    i > 0 ? ", " : "", ld->errs[i].n);
			json_string(out, ld->errs[i].text);
			fputc('}', out);
		}
		fputs("]\n}\n", out);
		return;
	}
	fprintf(out, "load: %lu messages, %u sessions at once, up to %u "
	    "message%s per session, %zu bytes, %zu recipient%s\n", o->count,
	    o->concurrency, o->per_session, o->per_session == 1 ? "" : "s",
	    o->size, o->nrcpts, o->nrcpts == 1 ? "" : "s");
	fprintf(out, "%s:", o->fanout ? "fanout" : o->nups > 1 ? "chain" :
	    "milter");
	for (size_t j = 0; j < o->nups; j++)
		fprintf(out, " %s", o->ups[j].address);
	fputc('\n', out);
	fputs("results:", out);
	for (int r = 0; r < RES_COUNT; r++)
		fprintf(out, "%s %lu %s", r > 0 ? "," : "", res[r],
		    result_names[r]);
	fputc('\n', out);
	fprintf(out, "throughput: %.1f messages/s (%lu sessions in %.3f s)\n",
	    rate, atomic_load(&ld->sessions), seconds);
	fprintf(out, "latency ms: p50 %.3f p95 %.3f p99 %.3f max %.3f "
	    "mean %.3f (%zu messages, MAIL to final answer)\n", lat.p50,
	    lat.p95, lat.p99, lat.max, lat.mean, lat.n);
	fprintf(out, "setup ms: p50 %.3f p95 %.3f p99 %.3f max %.3f mean "
	    "%.3f (%zu sessions, connect to HELO answer)\n", setup.p50,
	    setup.p95, setup.p99, setup.max, setup.mean, setup.n);
	fprintf(out, "session ms: p50 %.3f p95 %.3f p99 %.3f max %.3f mean "
	    "%.3f (%zu sessions, connect to the last final answer)\n",
	    sess.p50, sess.p95, sess.p99, sess.max, sess.mean, sess.n);
	fprintf(out, "errors: %lu\n", nerrors);
	for (size_t i = 0; i < ld->nerrs; i++)
		fprintf(out, "error: %lu x %s\n", ld->errs[i].n,
		    ld->errs[i].text);
	if (ld->errs_other > 0)
		fprintf(out, "error: %lu x (other texts)\n", ld->errs_other);
}

int
load_run(const struct load_opts *o, FILE *out)
{
	struct load	 ld;
	struct timespec	 ts;
	long long	 t0;
	double		 seconds;
	unsigned long	 failed = 0;
	int		 rc;

	memset(&ld, 0, sizeof ld);
	ld.o = o;
	ld.timeout_ns = (long long)(o->timeout * 1e9);
	ld.lat = xcalloc(o->count, sizeof *ld.lat);
	ld.setup = xcalloc(o->count, sizeof *ld.setup);
	ld.sess = xcalloc(o->count, sizeof *ld.sess);
	for (unsigned long i = 0; i < o->count; i++)
		ld.lat[i] = ld.setup[i] = ld.sess[i] = -1;
	pthread_mutex_init(&ld.lock, NULL);
	pthread_cond_init(&ld.cond, NULL);
	if ((rc = pool_new(o->threads, &ld.pool)) != 0) {
		fprintf(stderr, "miltermux-send: %s\n", strerror(-rc));
		return EX_OSERR;
	}
	log_set_sink(sink, &ld);
	ld.slots = xcalloc(o->concurrency, sizeof *ld.slots);
	ld.active = o->concurrency;
	t0 = now_ns();
	for (unsigned i = 0; i < o->concurrency; i++) {
		struct slot	*sl = &ld.slots[i];

		sl->ld = &ld;
		sl->id = i;
		sl->loop = pool_pick(ld.pool);
		sl->m = xcalloc(o->nups, sizeof *sl->m);
		snprintf(sl->connid, sizeof sl->connid, "load-%u", i);
		sl->start.run = start_run;
		pool_post(sl->loop, &sl->start);
	}
	pthread_mutex_lock(&ld.lock);
	while (ld.active > 0) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += REAP_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&ld.cond, &ld.lock, &ts);
		if (ld.active == 0)
			break;
		pthread_mutex_unlock(&ld.lock);
		reap(&ld);
		pthread_mutex_lock(&ld.lock);
	}
	pthread_mutex_unlock(&ld.lock);
	seconds = (double)(now_ns() - t0) / 1e9;
	pool_free(ld.pool);
	log_set_sink(NULL, NULL);
	report(&ld, out, seconds);
	fflush(out);
	for (unsigned i = 0; i < o->concurrency; i++) {
		failed += ld.slots[i].res[RES_FAILED];
		for (size_t j = 0; j < o->nups; j++)
			upstream_xchg_fini(&ld.slots[i].m[j].x);
		free(ld.slots[i].m);
	}
	for (size_t i = 0; i < ld.nerrs; i++)
		free(ld.errs[i].text);
	free(ld.slots);
	free(ld.lat);
	free(ld.setup);
	free(ld.sess);
	pthread_cond_destroy(&ld.cond);
	pthread_mutex_destroy(&ld.lock);
	return failed > 0 ? EX_UNAVAILABLE : 0;
}
