/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_interleave - the randomized interleaving test: thousands of MTA
 * sessions of several messages each, through the real miltermux, to
 * real libmilter upstreams (tests/milters/randmilter) that answer every
 * stage after a random delay with a random verdict; every answer the
 * MTA gets is checked against an independent model of what it should
 * be.
 *
 * The upstreams' answers are a pure function of (seed, upstream name,
 * stage, session, message, item) (tests/milters/randplan.h), so the test
 * knows them all.  The merge is modelled here from the documented rules
 * (README.md "How answers are merged", miltermux(8) "How verdicts are
 * merged"), not taken from src/merge.c.  Timing decides only which
 * answers arrive late; under the rules no late answer can change any
 * result, so the expectations do not depend on timing, except where
 * the rules themselves name the first to arrive (which reject text).
 *
 * The model:
 *  - Merged verdict of a stage over the upstreams still in it: reject
 *    if any rejects; else tempfail if any; else discard if any; else
 *    accept if every one accepts; else continue.
 *  - Reply text: a reject carries the text of one of the upstreams that
 *    rejected: README.md says the first to arrive (timing decides
 *    which, so any of them passes), miltermux(8) says the first listed
 *    in the configuration, which holds only when their answers are all
 *    in.  A tempfail is waited for, and carries the text of the first
 *    tempfailing upstream in configuration order.
 *  - An upstream that accepts at connect or helo gets nothing more on
 *    that connection; one that accepts at mail, rcpt, data or in the
 *    content gets nothing more of that message.  A reject, tempfail or
 *    accept at connect or helo (merged) ends the session for the test.
 *  - MAIL and DATA: a merged reject, tempfail, discard or accept ends
 *    the message (the MTA sends no more of it).
 *  - RCPT: a merged reject or tempfail refuses only that recipient; a
 *    merged accept or discard applies to the whole message and ends it.
 *    A message whose recipients are all refused ends there.
 *  - Headers, end of headers and body chunks get no reply (the MTA
 *    offers SMFIP_NR_*, miltermux asks for them).  Each upstream's word
 *    on the content is its first answer other than continue among its
 *    headers, end of headers, body chunks and end of message; the end
 *    of message gets the merge of those words, with the texts as above
 *    (a held reject from a header is a reject at end of message).
 *  - An MTA abort, or a new MAIL after a message ended, starts the next
 *    message from the upstreams still in the connection; nothing of the
 *    previous message counts, in particular no late answer to it.
 *  - An upstream's accept at RCPT takes it out of the message even when
 *    another upstream's reject or tempfail refused that recipient,
 *    whether its accept came before or after the refusal (its
 *    libmilter is done with the message either way).
 *  - Ambiguous, so not checked: an upstream's discard at RCPT when the
 *    merged verdict for that recipient is reject or tempfail (the
 *    recipient is refused, but does the discard still end the whole
 *    message, "as in libmilter"?).  The test then aborts that message
 *    and counts it as not modelled.
 *  - The upstreams never discard at connect or helo (ignored there).
 *
 * The MTA side (tests/mtaclient.c) runs THREADS sessions at once, each
 * drawing from (seed, session) its messages, recipients, headers, body
 * chunks, whether it aborts a message at a random step, whether it
 * closes the connection at a random step (right after sending a
 * command, without reading the answer), and whether it sends an abort
 * after a message that ended early.  A session stops at its first
 * mismatch (what follows would be judged against a state the proxy no
 * longer shares).  Also checked: no upstream was counted as failed
 * (miltermux logs "applying on_failure"), and miltermux is still
 * running.
 *
 * interleave/random is the test of the issue: three upstreams, random
 * delays, some answers very late (LATE_MS below), MTA aborts and
 * closes.  The others check the model itself where today's code has no
 * late answers to mishandle (see above them).
 *
 * Environment (for long runs and replays):
 *   INTERLEAVE_SEED      seed (default below; "time" for a fresh one)
 *   INTERLEAVE_SESSIONS  sessions (default 2000; the model checks 400;
 *                        a sanitizer build a quarter of that)
 *   INTERLEAVE_FIRST     number of the first session (default 1)
 *   INTERLEAVE_THREADS   sessions at once (default 32; sanitized 16)
 *   INTERLEAVE_DELAY     the upstreams' delay scale in ms (default 20)
 *   INTERLEAVE_LATE_MS   how late an answer to an abandoned exchange
 *                        and the abort after it are (default 1200, below
 *                        the command timeout of 2 s; 0: never)
 *   INTERLEAVE_SHOW      how many mismatches to print (default 20)
 *   INTERLEAVE_REUSE     1 (default): upstream connections are kept
 *                        across sessions with QUIT_NC ("reuse"); 0: not
 *   INTERLEAVE_MODE      the upstreams' delays (randplan.h): random,
 *                        zero, slowreject or noreject (default: the
 *                        test's own)
 * A failure prints the seed and the command line that replays it.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fixture.h"
#include "harness.h"
#include "mtaclient.h"
#include "milters/randplan.h"

#define DEFAULT_SEED		0x1f2e3d4c5b6a7988ULL
/* Sanitized miltermux and upstreams are several times slower. */
#ifdef MILTERMUX_SANITIZED
#define DEFAULT_SESSIONS	500
#define CHECK_SESSIONS		150
#define DEFAULT_THREADS		16
#else
#define DEFAULT_SESSIONS	2000
#define CHECK_SESSIONS		400
#define DEFAULT_THREADS		32
#endif
#define DEFAULT_DELAY		20
#define DEFAULT_SHOWN		20
#define MAX_NUP			3
#define MAX_RCPT		4
#define MAX_HDR			3
#define MAX_BODY		2
#define MAX_MSG			5
#define TOKEN_MAX		96
/*
 * The upstreams' very late answers (randplan.h rp_late): to exchanges a
 * reject has decided, then again at the abort that follows, so that the
 * upstream is still busy with the abandoned message when the next one
 * starts.  Each is below the command timeout, together they are above:
 * the model holds that an upstream's time for a command counts from
 * when the command reaches it, not from when the MTA sent it to us
 * while the upstream was still working on an abandoned exchange.
 */
#define COMMAND_TIMEOUT_MS	2000
#define DEFAULT_LATE_MS		1200

/* What the model expects of one answer. */
struct expect {
	enum verdict	 v;
	/* The reply texts it may carry (reject, tempfail); none: any. */
	char		 tok[MAX_NUP][TOKEN_MAX];
	size_t		 ntok;
};

/* One upstream's word at a stage, for the model. */
struct vote {
	bool		 in;		/* still in the stage */
	enum rp_verdict	 v;
	char		 tok[TOKEN_MAX];
};

/* Where the reply text of a wrong answer came from. */
enum origin {
	ORIGIN_NONE = 0,	/* no text */
	ORIGIN_HERE,		/* this exchange */
	ORIGIN_MESSAGE,		/* another stage of this message */
	ORIGIN_OTHER,		/* another message */
	ORIGIN_COUNT
};

struct run {
	const char	*name;		/* test name, for the replay line */
	const char	*spec;
	uint64_t	 seed;
	size_t		 nup;
	const char	*ups[MAX_NUP];
	enum rp_mode	 mode;
	unsigned	 dmax;
	unsigned	 nthreads;
	bool		 mta_cuts;	/* the MTA aborts and closes early */
	atomic_uint	 next;
	unsigned	 last;
	/* Counters. */
	atomic_uint	 sessions, messages, checked, mismatches, ambiguous;
	atomic_uint	 aborts, closes, ended_early, eoms, stale_texts;
	atomic_uint	 io_errors;
	pthread_mutex_t	 lock;
	unsigned	 shown, max_shown;
	/* mismatches by stage, expected and got verdict, text origin */
	unsigned	 kinds[RP_STAGE_COUNT][VERDICT_COUNT][VERDICT_COUNT]
			     [ORIGIN_COUNT];
};

/* ------------------------------------------------------------------ */
/* The model.                                                          */

/* model_merge - the merged answer of the votes of the upstreams in */
static void
model_merge(const struct vote *votes, size_t n, struct expect *e)
{
	bool	 any[RP_VERDICT_COUNT] = { false }, all_accept = true;
	size_t	 nin = 0;

	memset(e, 0, sizeof *e);
	for (size_t i = 0; i < n; i++) {
		if (!votes[i].in)
			continue;
		nin++;
		any[votes[i].v] = true;
		if (votes[i].v != RP_ACCEPT)
			all_accept = false;
	}
	if (any[RP_REJECT]) {
		e->v = VERDICT_REJECT;
		/* The first to arrive: any of them. */
		for (size_t i = 0; i < n; i++)
			if (votes[i].in && votes[i].v == RP_REJECT)
				memcpy(e->tok[e->ntok++], votes[i].tok,
				    TOKEN_MAX);
	} else if (any[RP_TEMPFAIL]) {
		e->v = VERDICT_TEMPFAIL;
		/* Waited for: the first in configuration order. */
		for (size_t i = 0; i < n && e->ntok == 0; i++)
			if (votes[i].in && votes[i].v == RP_TEMPFAIL)
				memcpy(e->tok[e->ntok++], votes[i].tok,
				    TOKEN_MAX);
	} else if (any[RP_DISCARD])
		e->v = VERDICT_DISCARD;
	else if (nin > 0 && all_accept)
		e->v = VERDICT_ACCEPT;
	else
		e->v = VERDICT_CONTINUE;
}

/* model_votes - the votes of the upstreams in at an answered stage */
static void
model_votes(const struct run *run, const bool *in, enum rp_stage st,
    unsigned sess, unsigned msg, unsigned idx, struct vote *votes)
{
	for (size_t i = 0; i < run->nup; i++) {
		struct rp_plan	 p = rp_plan(run->seed, run->ups[i], st, sess,
				    msg, idx, run->mode, run->dmax);

		votes[i].in = in[i];
		votes[i].v = p.verdict;
		rp_token(votes[i].tok, sizeof votes[i].tok, run->ups[i], st,
		    sess, msg, idx);
	}
}

/* ------------------------------------------------------------------ */
/* Checking and reporting.                                             */

static uint64_t
draw(uint64_t *s)
{
	*s = rp_mix(*s);
	return *s;
}

static const char *
vname(enum verdict v)
{
	return v == VERDICT_NONE ? "no reply" : proto_verdict_name(v);
}

static const char *const origin_names[ORIGIN_COUNT] = {
	"no text", "text of this stage", "text of an earlier stage of "
	"this message", "text of another message"
};

/* origin - of text "... NAME:STAGE:sSmMiI ..." */
static enum origin
origin(const char *text, unsigned sess, unsigned msg, enum rp_stage st,
    unsigned idx)
{
	char		 here[64], mine[32];
	const char	*p;

	if (text == NULL || (p = strchr(text, ':')) == NULL ||
	    (p = strchr(p + 1, ':')) == NULL)
		return ORIGIN_NONE;
	snprintf(mine, sizeof mine, ":s%um%ui", sess, msg);
	if (strncmp(p, mine, strlen(mine)) != 0)
		return ORIGIN_OTHER;
	snprintf(here, sizeof here, ":%s:s%um%ui%u ", rp_stage_names[st],
	    sess, msg, idx);
	if (strstr(text, here) != NULL)
		return ORIGIN_HERE;
	/* A content stage's text is this exchange's at end of message. */
	if (st == RP_EOM && (strstr(text, ":header:") != NULL ||
	    strstr(text, ":eoh:") != NULL || strstr(text, ":body:") != NULL))
		return ORIGIN_HERE;
	return ORIGIN_MESSAGE;
}

static void
mismatch(struct run *run, unsigned sess, unsigned msg, enum rp_stage st,
    unsigned idx, const struct expect *e, enum verdict got,
    const char *text, const char *why)
{
	char		 exp[MAX_NUP * (TOKEN_MAX + 4) + 64];
	size_t		 o;
	enum origin	 from = origin(text, sess, msg, st, idx);

	atomic_fetch_add(&run->mismatches, 1);
	if (from == ORIGIN_OTHER)
		atomic_fetch_add(&run->stale_texts, 1);
	pthread_mutex_lock(&run->lock);
	run->kinds[st][e != NULL ? e->v : VERDICT_NONE][got][from]++;
	if (run->shown < run->max_shown) {
		run->shown++;
		o = (size_t)snprintf(exp, sizeof exp, "%s",
		    e != NULL ? vname(e->v) : "-");
		for (size_t i = 0; e != NULL && i < e->ntok &&
		    o < sizeof exp; i++)
			o += (size_t)snprintf(exp + o, sizeof exp - o,
			    "%s%s", i == 0 ? " with text " : " or ",
			    e->tok[i]);
		fprintf(stderr, "interleave: MISMATCH seed 0x%016" PRIx64
		    " session %u message %u stage %s item %u: expected %s; "
		    "got %s%s%s%s (%s)\n", run->seed, sess, msg,
		    rp_stage_names[st], idx, exp, vname(got),
		    text != NULL ? " \"" : "", text != NULL ? text : "",
		    text != NULL ? "\"" : "", why);
	}
	pthread_mutex_unlock(&run->lock);
}

/* check - the answer against the model; false on a mismatch */
static bool
check(struct run *run, unsigned sess, unsigned msg, enum rp_stage st,
    unsigned idx, const struct expect *e, const struct mta_result *r)
{
	bool	 ok = false;

	atomic_fetch_add(&run->checked, 1);
	if (r->verdict != e->v) {
		mismatch(run, sess, msg, st, idx, e, r->verdict, r->text,
		    "verdict");
		return false;
	}
	if (e->ntok == 0)
		return true;
	for (size_t i = 0; i < e->ntok && !ok; i++)
		ok = r->text != NULL && strstr(r->text, e->tok[i]) != NULL;
	if (!ok)
		mismatch(run, sess, msg, st, idx, e, r->verdict, r->text,
		    "reply text");
	return ok;
}

/* ------------------------------------------------------------------ */
/* The MTA side.                                                       */

/* What a session does, drawn from (seed, session). */
struct sess_plan {
	unsigned	 nmsg;
	unsigned	 close_msg;	/* 0: never closes early */
	unsigned	 close_step;
};

/* What a message holds and does, drawn from (seed, session, message). */
struct msg_plan {
	unsigned	 nrcpt, nhdr, nbody;
	unsigned	 abort_step;	/* 0: no abort; else before this step */
	bool		 abort_after;	/* abort after an early end */
};

/*
 * The steps of a message, numbered from 1: MAIL, the RCPTs, DATA, the
 * headers, EOH, the body chunks, EOM.  An abort or a close comes at a
 * step: an abort instead of sending it, a close right after sending it.
 */
static unsigned
nsteps(const struct msg_plan *mp)
{
	return 1 + mp->nrcpt + 1 + mp->nhdr + 1 + mp->nbody + 1;
}

/* One session's connection and where it stands. */
struct sess_ctx {
	struct run	*run;
	struct mta	 m;
	unsigned	 sess, msg, step;
	struct sess_plan sp;
	bool		 closed;	/* the MTA went away on purpose */
	bool		 broken;	/* mismatch or I/O error */
};

/*
 * send_step - send one command (with the MAIL's macros); read the
 * answer unless none is due; at the planned close step, send and close
 * instead.  Returns 0, 1 when the session has closed on purpose, or -1
 * (broken: reported).
 */
static int
send_step(struct sess_ctx *c, struct buf *b, enum rp_stage st, unsigned idx,
    struct mta_result *r)
{
	static const uint32_t	 nr[RP_STAGE_COUNT] = {
		[RP_HEADER] = MP_NR_HDR, [RP_EOH] = MP_NR_EOH,
		[RP_BODY] = MP_NR_BODY,
	};
	bool			 reply = (c->m.proto & nr[st]) == 0;
	int			 rc;

	memset(r, 0, sizeof *r);
	r->verdict = VERDICT_NONE;
	if (c->step != 0 && c->msg == c->sp.close_msg &&
	    c->step == c->sp.close_step) {
		(void)mta_send_raw(&c->m, buf_head(b), buf_avail(b));
		mta_close(&c->m);
		atomic_fetch_add(&c->run->closes, 1);
		c->closed = true;
		return 1;
	}
	rc = mta_exchange(&c->m, b, reply, st == RP_EOM, r);
	if (rc != 0) {
		struct expect	 e = { .v = VERDICT_NONE };
		char		 why[64];

		atomic_fetch_add(&c->run->io_errors, 1);
		snprintf(why, sizeof why, "I/O: %s", strerror(-rc));
		mismatch(c->run, c->sess, c->msg, st, idx, &e, VERDICT_NONE,
		    NULL, why);
		c->broken = true;
		return -1;
	}
	return 0;
}

/* answered - send a stage that gets an answer and check it */
static int
answered(struct sess_ctx *c, struct buf *b, enum rp_stage st, unsigned idx,
    const struct expect *e)
{
	struct mta_result	 r;
	int			 rc;
	bool			 ok;

	if ((rc = send_step(c, b, st, idx, &r)) != 0)
		return rc;
	ok = check(c->run, c->sess, c->msg, st, idx, e, &r);
	if (ok && st == RP_EOM && r.nmods != 0) {
		mismatch(c->run, c->sess, c->msg, st, idx, e, r.verdict,
		    r.text, "modifications from upstreams that make none");
		ok = false;
	}
	mta_result_fini(&r);
	if (!ok)
		c->broken = true;
	return ok ? 0 : -1;
}

/* quiet - send a content stage; no answer may come */
static int
quiet(struct sess_ctx *c, struct buf *b, enum rp_stage st, unsigned idx)
{
	struct mta_result	 r;
	struct expect		 e = { .v = VERDICT_NONE };
	int			 rc;

	if ((rc = send_step(c, b, st, idx, &r)) != 0)
		return rc;
	if (r.verdict != VERDICT_NONE) {
		mismatch(c->run, c->sess, c->msg, st, idx, &e, r.verdict,
		    r.text, "a reply to a no-reply stage");
		c->broken = true;
		rc = -1;
	}
	mta_result_fini(&r);
	return rc;
}

/* next - the next step; true when the message is aborted before it */
static bool
aborted_before(struct sess_ctx *c, const struct msg_plan *mp)
{
	c->step++;
	if (mp->abort_step == 0 || c->step != mp->abort_step)
		return false;
	atomic_fetch_add(&c->run->aborts, 1);
	if (mta_abort(&c->m) != 0)
		c->broken = true;
	return true;
}

/* drop_accepters - upstreams that accepted leave the message */
static void
drop_accepters(const struct vote *votes, size_t n, bool *in)
{
	for (size_t i = 0; i < n; i++)
		if (votes[i].in && votes[i].v == RP_ACCEPT)
			in[i] = false;
}

/* ended - the message ended early on a verdict: maybe an abort */
static void
ended(struct sess_ctx *c, const struct msg_plan *mp)
{
	atomic_fetch_add(&c->run->ended_early, 1);
	if (mp->abort_after && mta_abort(&c->m) != 0)
		c->broken = true;
}

/*
 * message - one message: every answered stage checked against the
 * model.  Returns 0 to go on with the session, else stop it.
 */
static int
message(struct sess_ctx *c, const bool *live, uint64_t rng)
{
	struct run	*run = c->run;
	struct msg_plan	 mp;
	struct vote	 votes[MAX_NUP], word[MAX_NUP];
	struct expect	 e;
	bool		 in[MAX_NUP];
	struct buf	 b = BUF_INIT;
	char		 from[64], rcpt[32], qid[32], name[32], chunk[64];
	const char	*argv[1], *mac[2];
	unsigned	 sess = c->sess, msg = c->msg, refused = 0;
	int		 rc = 0;

	mp.nrcpt = 1 + (unsigned)(draw(&rng) % MAX_RCPT);
	mp.nhdr = (unsigned)(draw(&rng) % (MAX_HDR + 1));
	mp.nbody = (unsigned)(draw(&rng) % (MAX_BODY + 1));
	mp.abort_step = draw(&rng) % 100 < 6 && run->mta_cuts ?
	    1 + (unsigned)(draw(&rng) % nsteps(&mp)) : 0;
	mp.abort_after = draw(&rng) % 2 == 0;
	memcpy(in, live, sizeof in);
	c->step = 0;
	atomic_fetch_add(&run->messages, 1);

	/* MAIL */
	if (aborted_before(c, &mp))
		goto out;
	snprintf(from, sizeof from, "<s%um%u@test>", sess, msg);
	snprintf(qid, sizeof qid, "S%uM%u", sess, msg);
	mac[0] = "i";
	mac[1] = qid;
	argv[0] = from;
	codec_put_macros(&b, MC_MAIL, mac, 1);
	codec_put_argv(&b, MC_MAIL, argv, 1);
	model_votes(run, in, RP_MAIL, sess, msg, 0, votes);
	model_merge(votes, run->nup, &e);
	if ((rc = answered(c, &b, RP_MAIL, 0, &e)) != 0)
		goto out;
	if (e.v != VERDICT_CONTINUE) {
		ended(c, &mp);
		goto out;
	}
	drop_accepters(votes, run->nup, in);

	/* RCPT */
	for (unsigned i = 1; i <= mp.nrcpt; i++) {
		bool	 discarded = false;

		if (aborted_before(c, &mp))
			goto out;
		buf_reset(&b);
		snprintf(rcpt, sizeof rcpt, "<r%u@test>", i);
		argv[0] = rcpt;
		codec_put_argv(&b, MC_RCPT, argv, 1);
		model_votes(run, in, RP_RCPT, sess, msg, i, votes);
		model_merge(votes, run->nup, &e);
		if ((rc = answered(c, &b, RP_RCPT, i, &e)) != 0)
			goto out;
		if (e.v == VERDICT_ACCEPT || e.v == VERDICT_DISCARD) {
			ended(c, &mp);
			goto out;
		}
		drop_accepters(votes, run->nup, in);
		if (e.v == VERDICT_CONTINUE)
			continue;
		refused++;
		for (size_t u = 0; u < run->nup; u++)
			discarded = discarded ||
			    (votes[u].in && votes[u].v == RP_DISCARD);
		if (discarded) {
			/* Not modelled (see the top): leave the message. */
			atomic_fetch_add(&run->ambiguous, 1);
			if (mta_abort(&c->m) != 0)
				c->broken = true;
			goto out;
		}
	}
	if (refused == mp.nrcpt) {
		/* No recipient left: the MTA does not go on to DATA. */
		ended(c, &mp);
		goto out;
	}

	/* DATA */
	if (aborted_before(c, &mp))
		goto out;
	buf_reset(&b);
	codec_put_packet(&b, MC_DATA, NULL, 0);
	model_votes(run, in, RP_DATA, sess, msg, 0, votes);
	model_merge(votes, run->nup, &e);
	if ((rc = answered(c, &b, RP_DATA, 0, &e)) != 0)
		goto out;
	if (e.v != VERDICT_CONTINUE) {
		ended(c, &mp);
		goto out;
	}
	drop_accepters(votes, run->nup, in);

	/*
	 * The content: each upstream's word is its first answer other
	 * than continue (what follows it is not sent to it).
	 */
	for (size_t u = 0; u < run->nup; u++) {
		word[u].in = in[u];
		word[u].v = RP_CONTINUE;
		word[u].tok[0] = '\0';
	}
	for (unsigned k = 0; k < mp.nhdr + 1 + mp.nbody + 1; k++) {
		enum rp_stage	 st;
		unsigned	 idx;

		if (k < mp.nhdr) {
			st = RP_HEADER;
			idx = k + 1;
		} else if (k == mp.nhdr) {
			st = RP_EOH;
			idx = 0;
		} else if (k < mp.nhdr + 1 + mp.nbody) {
			st = RP_BODY;
			idx = k - mp.nhdr;
		} else {
			st = RP_EOM;
			idx = 0;
		}
		model_votes(run, in, st, sess, msg, idx, votes);
		for (size_t u = 0; u < run->nup; u++)
			if (word[u].in && word[u].v == RP_CONTINUE &&
			    votes[u].v != RP_CONTINUE)
				word[u] = votes[u];
	}
	model_merge(word, run->nup, &e);

	for (unsigned i = 1; i <= mp.nhdr; i++) {
		if (aborted_before(c, &mp))
			goto out;
		buf_reset(&b);
		snprintf(name, sizeof name, "X-Idx%u", i);
		snprintf(chunk, sizeof chunk, "s%u m%u header %u", sess, msg,
		    i);
		codec_put_header(&b, name, chunk);
		if ((rc = quiet(c, &b, RP_HEADER, i)) != 0)
			goto out;
	}
	if (aborted_before(c, &mp))
		goto out;
	buf_reset(&b);
	codec_put_packet(&b, MC_EOH, NULL, 0);
	if ((rc = quiet(c, &b, RP_EOH, 0)) != 0)
		goto out;
	for (unsigned i = 1; i <= mp.nbody; i++) {
		if (aborted_before(c, &mp))
			goto out;
		buf_reset(&b);
		snprintf(chunk, sizeof chunk, "chunk %u of s%u m%u\r\n", i,
		    sess, msg);
		codec_put_body(&b, chunk, strlen(chunk));
		if ((rc = quiet(c, &b, RP_BODY, i)) != 0)
			goto out;
	}
	if (aborted_before(c, &mp))
		goto out;
	buf_reset(&b);
	codec_put_packet(&b, MC_BODYEOB, NULL, 0);
	atomic_fetch_add(&run->eoms, 1);
	rc = answered(c, &b, RP_EOM, 0, &e);
out:
	buf_fini(&b);
	return rc != 0 || c->broken || c->closed ? -1 : 0;
}

/* connection - connect or helo for the upstreams live; false: stop */
static bool
connection_stage(struct sess_ctx *c, bool *live, enum rp_stage st)
{
	struct vote	 votes[MAX_NUP];
	struct expect	 e;
	struct buf	 b = BUF_INIT;
	char		 host[32];
	bool		 go;

	snprintf(host, sizeof host, "s%u.test", c->sess);
	if (st == RP_CONNECT)
		codec_put_connect(&b, host, '4', 25000, "192.0.2.9");
	else
		codec_put_str(&b, MC_HELO, host);
	model_votes(c->run, live, st, c->sess, 0, 0, votes);
	model_merge(votes, c->run->nup, &e);
	go = answered(c, &b, st, 0, &e) == 0 && e.v == VERDICT_CONTINUE;
	drop_accepters(votes, c->run->nup, live);
	buf_fini(&b);
	return go;
}

static void
session(struct run *run, unsigned sess)
{
	uint64_t	 rng = rp_mix(run->seed ^ ((uint64_t)sess << 24));
	struct sess_ctx	 c = { .run = run, .sess = sess };
	bool		 live[MAX_NUP];
	int		 rc;

	atomic_fetch_add(&run->sessions, 1);
	c.sp.nmsg = 1 + (unsigned)(draw(&rng) % MAX_MSG);
	if (draw(&rng) % 100 < 4 && run->mta_cuts) {
		c.sp.close_msg = 1 + (unsigned)(draw(&rng) % c.sp.nmsg);
		c.sp.close_step = 1 + (unsigned)(draw(&rng) % 8);
	}
	for (size_t i = 0; i < MAX_NUP; i++)
		live[i] = i < run->nup;
	if ((rc = mta_open(&c.m, run->spec, 30)) != 0 ||
	    (rc = mta_negotiate(&c.m, MA_ALL, MP_ALL_V6)) != 0) {
		struct expect	 e = { .v = VERDICT_CONTINUE };

		mismatch(run, sess, 0, RP_CONNECT, 0, &e, VERDICT_NONE, NULL,
		    strerror(-rc));
		mta_close(&c.m);
		return;
	}
	if ((c.m.proto & MP_ALL_NR) != (MP_NR_HDR | MP_NR_EOH | MP_NR_BODY)) {
		struct expect	 e = { .v = VERDICT_CONTINUE };

		mismatch(run, sess, 0, RP_CONNECT, 0, &e, VERDICT_NONE, NULL,
		    "miltermux did not ask for no replies to the content");
		mta_close(&c.m);
		return;
	}
	if (connection_stage(&c, live, RP_CONNECT) &&
	    connection_stage(&c, live, RP_HELO)) {
		for (c.msg = 1; c.msg <= c.sp.nmsg; c.msg++)
			if (message(&c, live, rp_mix(rng ^ c.msg)) != 0)
				break;
	}
	if (!c.closed && !c.broken)
		(void)mta_quit(&c.m);
	mta_close(&c.m);
}

static void *
worker(void *arg)
{
	struct run	*run = arg;
	unsigned	 sess;

	while ((sess = atomic_fetch_add(&run->next, 1)) < run->last)
		session(run, sess);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* The runs.                                                           */

static unsigned long
env_num(const char *name, unsigned long dflt)
{
	const char	*s = getenv(name);
	char		*end;
	unsigned long	 v;

	if (s == NULL || *s == '\0')
		return dflt;
	errno = 0;
	v = strtoul(s, &end, 0);
	cr_assert(errno == 0 && *end == '\0', "%s=%s: not a number", name, s);
	return v;
}

static uint64_t
env_seed(void)
{
	const char	*s = getenv("INTERLEAVE_SEED");
	char		*end;
	uint64_t	 v;

	if (s == NULL || *s == '\0')
		return DEFAULT_SEED;
	if (strcmp(s, "time") == 0)
		return rp_mix((uint64_t)time(NULL) ^ (uint64_t)getpid());
	errno = 0;
	v = strtoull(s, &end, 0);
	cr_assert(errno == 0 && *end == '\0', "INTERLEAVE_SEED=%s: not a "
	    "number", s);
	return v;
}

static void
show_kind(const struct run *run, int s, int x, int g, int o)
{
	if (run->kinds[s][x][g][o] == 0)
		return;
	fprintf(stderr, "interleave:   %s: expected %s, got %s (%s): %u\n",
	    rp_stage_names[s], vname((enum verdict)x), vname((enum verdict)g),
	    origin_names[o], run->kinds[s][x][g][o]);
}

/* count_lines - lines of log holding needle */
static unsigned
count_lines(const char *log, const char *needle)
{
	unsigned	 n = 0;

	for (const char *p = log; (p = strstr(p, needle)) != NULL;
	    p += strlen(needle))
		n++;
	return n;
}

/*
 * interleave - nup randmilters and miltermux, sessions from nthreads
 * threads; every answer checked; a summary, then the verdict
 */
static void
interleave(const char *test, size_t nup, enum rp_mode mode,
    unsigned dflt_sessions, bool mta_cuts)
{
	static const char *const names[MAX_NUP] = { "ua", "ub", "uc" };
	struct run	 run = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct up	 ups[MAX_NUP];
	struct env	 e;
	pthread_t	 t[64];
	char		 seed[32], dmax[16], late[16], *log, *top;
	const char	*env;
	unsigned	 first, nfail, nthreads, sessions, late_ms;
	double		 t0, t1;
	int		 st = 0;
	bool		 alive;

	run.name = test;
	run.seed = env_seed();
	run.nup = nup;
	if ((env = getenv("INTERLEAVE_MODE")) != NULL && *env != '\0') {
		for (mode = 0; mode < RP_MODE_COUNT; mode++)
			if (strcmp(env, rp_mode_names[mode]) == 0)
				break;
		cr_assert(mode < RP_MODE_COUNT, "INTERLEAVE_MODE=%s: not "
		    "random, zero, slowreject or noreject", env);
	}
	run.mode = mode;
	run.mta_cuts = mta_cuts;
	run.dmax = (unsigned)env_num("INTERLEAVE_DELAY", DEFAULT_DELAY);
	nthreads = (unsigned)env_num("INTERLEAVE_THREADS", DEFAULT_THREADS);
	cr_assert(nthreads >= 1 && nthreads <= 64);
	first = (unsigned)env_num("INTERLEAVE_FIRST", 1);
	run.max_shown = (unsigned)env_num("INTERLEAVE_SHOW", DEFAULT_SHOWN);
	late_ms = (unsigned)env_num("INTERLEAVE_LATE_MS", DEFAULT_LATE_MS);
	cr_assert(late_ms < COMMAND_TIMEOUT_MS, "INTERLEAVE_LATE_MS=%u: must "
	    "be below the command timeout, %u ms", late_ms,
	    COMMAND_TIMEOUT_MS);
	snprintf(late, sizeof late, "%u", late_ms);
	sessions = (unsigned)env_num("INTERLEAVE_SESSIONS", dflt_sessions);
	snprintf(seed, sizeof seed, "0x%016" PRIx64, run.seed);
	snprintf(dmax, sizeof dmax, "%u", run.dmax);
	memset(ups, 0, sizeof ups);
	for (size_t i = 0; i < nup; i++) {
		run.ups[i] = names[i];
		ups[i].name = names[i];
		ups[i].args[0] = RANDMILTER;
		ups[i].args[1] = "--seed";
		ups[i].args[2] = seed;
		ups[i].args[3] = "--mode";
		ups[i].args[4] = rp_mode_names[mode];
		ups[i].args[5] = "--delay-max";
		ups[i].args[6] = dmax;
		ups[i].args[7] = NULL;
		if (mode == RP_MODE_RANDOM && nup > 1 && late_ms > 0) {
			ups[i].args[7] = "--peers";
			ups[i].args[8] = "ua,ub,uc";
			ups[i].args[9] = "--late-ms";
			ups[i].args[10] = late;
			ups[i].args[11] = NULL;
		}
	}
	/* Timeouts well above the longest planned delay (late_ms), well
	 * below the MTA side's 30 s: an upstream that times out here was
	 * kept waiting by miltermux, not by its plan.  No upstream is ever
	 * marked down, so that a failure shows in its own session only. */
	top = h_xasprintf("\"timeouts\": { \"command\": %g, \"content\": "
	    "%g },\n\"failures\": 1000,\n\"reuse\": %s", COMMAND_TIMEOUT_MS /
	    1000.0, COMMAND_TIMEOUT_MS / 1000.0,
	    env_num("INTERLEAVE_REUSE", 1) != 0 ? "true" : "false");
	env_setup(&e, ups, nup, top, 0);
	free(top);
	run.spec = e.mux_spec;
	atomic_store(&run.next, first);
	run.last = first + sessions;

	t0 = h_now();
	for (unsigned i = 0; i < nthreads; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, worker, &run), 0);
	for (unsigned i = 0; i < nthreads; i++)
		pthread_join(t[i], NULL);
	t1 = h_now();

	alive = h_wait_exit(e.mux, 0, &st) != 0;
	log = env_mux_log(&e);
	nfail = count_lines(log, "applying on_failure");
	fprintf(stderr, "interleave: %s: seed 0x%016" PRIx64 ", %zu upstreams,"
	    " delays %s up to %u ms: %u sessions, %u messages (%u ended early"
	    ", %u reached end of message, %u aborted by the MTA, %u not "
	    "modelled), %u connections closed by the MTA, %u answers checked,"
	    " %u mismatches (%u with a text from another message, %u I/O "
	    "errors), %u upstream failures logged, %.1f s\n", test, run.seed,
	    nup,
	    rp_mode_names[mode], run.dmax, atomic_load(&run.sessions),
	    atomic_load(&run.messages), atomic_load(&run.ended_early),
	    atomic_load(&run.eoms), atomic_load(&run.aborts),
	    atomic_load(&run.ambiguous), atomic_load(&run.closes),
	    atomic_load(&run.checked), atomic_load(&run.mismatches),
	    atomic_load(&run.stale_texts), atomic_load(&run.io_errors), nfail,
	    t1 - t0);
	if (atomic_load(&run.mismatches) > 0 || nfail > 0) {
		for (int s = 0; s < RP_STAGE_COUNT; s++)
			for (int x = 0; x < VERDICT_COUNT; x++)
				for (int g = 0; g < VERDICT_COUNT; g++)
					for (int o = 0; o < ORIGIN_COUNT; o++)
						show_kind(&run, s, x, g, o);
		fprintf(stderr, "interleave: replay with INTERLEAVE_SEED=%s "
		    "INTERLEAVE_SESSIONS=%u INTERLEAVE_FIRST=%u "
		    "INTERLEAVE_DELAY=%u INTERLEAVE_LATE_MS=%u "
		    "INTERLEAVE_MODE=%s ./tests/test_interleave --filter "
		    "'interleave/%s' (one session S alone: INTERLEAVE_FIRST=S "
		    "INTERLEAVE_SESSIONS=1; KEEP_TMP=1 keeps the logs)\n", seed,
		    sessions, first, run.dmax, late_ms, rp_mode_names[mode],
		    test);
	}
	env_stop(&e, 0.5);
	cr_assert(alive, "miltermux exited: status 0x%x", st);
	HASNT(log, "panic");
	free(log);
	cr_assert_eq(atomic_load(&run.mismatches), 0, "seed %s: %u mismatches "
	    "in %u sessions (the first %u are above)", seed,
	    atomic_load(&run.mismatches), atomic_load(&run.sessions),
	    run.max_shown);
	cr_assert_eq(nfail, 0, "seed %s: %u upstream failures logged", seed,
	    nfail);
	cr_assert_geq(atomic_load(&run.eoms), sessions / 4);
}

/* The test: three upstreams, random delays, late answers. */
Test(interleave, random, .timeout = 240)
{
	interleave("random", 3, RP_MODE_RANDOM, DEFAULT_SESSIONS, true);
}

/*
 * The model's own checks, in configurations where no answer comes late
 * to an exchange already decided: the MTA never aborts a message or
 * closes the connection in the middle, and there is one upstream
 * (nothing to abandon), or three that never reject (every stage waits
 * for all of them: only a reject is answered before the others), or
 * three of which at most one rejects each exchange, after 40 ms, while
 * the others answer at once (everything else is in when the reject
 * decides; scheduling delays of 40 ms could still let one answer come
 * late on today's code).  A mismatch here is a bug of the model, or of
 * miltermux outside the issue of late answers.
 */
Test(interleave, one_upstream, .timeout = 120)
{
	interleave("one_upstream", 1, RP_MODE_RANDOM, CHECK_SESSIONS, false);
}

Test(interleave, no_rejects, .timeout = 120)
{
	interleave("no_rejects", 3, RP_MODE_NOREJECT, CHECK_SESSIONS, false);
}

Test(interleave, slow_rejects, .timeout = 120)
{
	interleave("slow_rejects", 3, RP_MODE_SLOWREJECT, CHECK_SESSIONS,
	    false);
}
