/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * randplan - what tests/milters/randmilter answers, and after how long,
 * at every stage: a pure function of (seed, upstream name, stage, and
 * the identifiers the traffic carries), so that the randomized
 * interleaving test (tests/test_interleave.c) knows every upstream's
 * answer without asking it.
 *
 * The traffic names itself: the connect host name is "s<S>.test" (S
 * the session), the MAIL FROM address "<s<S>m<M>@test>" (M the message
 * of that session), a RCPT address "<r<I>@test>", a header name
 * "X-Idx<I>", a body chunk starts with "chunk <I>".  The plan of a stage
 * depends on those numbers only, never on the order in which the
 * upstream sees things, so a late or reordered exchange still gets the
 * answer planned for it.
 *
 * Only the plan is shared between the milter and the test: how the
 * answers are merged is the test's own model.
 *
 * Concurrency: pure functions, no state.
 */
#ifndef RANDPLAN_H
#define RANDPLAN_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum rp_stage {
	RP_CONNECT = 0,
	RP_HELO,
	RP_MAIL,
	RP_RCPT,
	RP_DATA,
	RP_HEADER,
	RP_EOH,
	RP_BODY,
	RP_EOM,
	RP_ABORT,		/* no answer; only its delay is used */
	RP_STAGE_COUNT
};

enum rp_verdict {
	RP_CONTINUE = 0,
	RP_ACCEPT,
	RP_DISCARD,
	RP_TEMPFAIL,
	RP_REJECT,
	RP_VERDICT_COUNT
};

/* How the delays are drawn. */
enum rp_mode {
	RP_MODE_RANDOM = 0,	/* mostly short, some up to dmax, a few 3x */
	RP_MODE_ZERO,		/* all 0 */
	RP_MODE_SLOWREJECT,	/* one rejecter at most, after 2 * dmax;
				 * all else at once */
	RP_MODE_NOREJECT,	/* as random, but tempfail instead of reject */
	RP_MODE_COUNT
};

static const char *const rp_stage_names[RP_STAGE_COUNT] = {
	"connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body",
	"eom", "abort"
};

static const char *const rp_verdict_names[RP_VERDICT_COUNT] = {
	"continue", "accept", "discard", "tempfail", "reject"
};

static const char *const rp_mode_names[RP_MODE_COUNT] = {
	"random", "zero", "slowreject", "noreject"
};

/*
 * Per mille of accept, discard, tempfail and reject at each stage; the
 * rest is continue.  No discard at connect and helo, where it means
 * nothing (miltermux(8)).  Three upstreams each drawing these end about
 * a third of the messages before their end of message.
 */
static const unsigned short rp_odds[RP_STAGE_COUNT][4] = {
	[RP_CONNECT]	= { 15, 0, 4, 4 },
	[RP_HELO]	= { 15, 0, 4, 4 },
	[RP_MAIL]	= { 25, 15, 25, 30 },
	[RP_RCPT]	= { 25, 12, 40, 50 },
	[RP_DATA]	= { 15, 10, 12, 15 },
	[RP_HEADER]	= { 8, 6, 8, 10 },
	[RP_EOH]	= { 10, 8, 10, 12 },
	[RP_BODY]	= { 8, 6, 8, 10 },
	[RP_EOM]	= { 40, 30, 40, 50 },
	[RP_ABORT]	= { 0, 0, 0, 0 },
};

struct rp_plan {
	enum rp_verdict	 verdict;
	unsigned	 delay_ms;
};

static inline uint64_t
rp_mix(uint64_t z)
{
	z += 0x9e3779b97f4a7c15ULL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static inline uint64_t
rp_hash(uint64_t seed, const char *name, enum rp_stage st, unsigned sess,
    unsigned msg, unsigned idx)
{
	uint64_t	 h = rp_mix(seed);

	for (const char *p = name; *p != '\0'; p++)
		h = rp_mix(h ^ (unsigned char)*p);
	h = rp_mix(h ^ ((uint64_t)st << 56));
	h = rp_mix(h ^ sess);
	h = rp_mix(h ^ ((uint64_t)msg << 32));
	return rp_mix(h ^ ((uint64_t)idx << 16));
}

/* rp_plan - the answer of upstream name at stage st of (sess, msg, idx) */
static inline struct rp_plan
rp_plan(uint64_t seed, const char *name, enum rp_stage st, unsigned sess,
    unsigned msg, unsigned idx, enum rp_mode mode, unsigned dmax)
{
	uint64_t	 h = rp_hash(seed, name, st, sess, msg, idx);
	unsigned	 v = (unsigned)(h % 1000), d = (unsigned)(h >> 32);
	unsigned	 acc = 0;
	struct rp_plan	 p = { RP_CONTINUE, 0 };

	for (int k = 0; k < 4; k++) {
		acc += rp_odds[st][k];
		if (v < acc) {
			p.verdict = (enum rp_verdict)(k + 1);
			break;
		}
	}
	if (st == RP_ABORT)
		p.verdict = RP_CONTINUE;
	if (mode == RP_MODE_NOREJECT && p.verdict == RP_REJECT)
		p.verdict = RP_TEMPFAIL;
	/* Of three upstreams named "..a", "..b", "..c", only the one the
	 * exchange designates may reject it; the others tempfail. */
	if (mode == RP_MODE_SLOWREJECT && p.verdict == RP_REJECT &&
	    rp_hash(seed, "", st, sess, msg, idx) % 3 !=
	    (unsigned)(name[0] == '\0' ? 0 : name[strlen(name) - 1] - 'a'))
		p.verdict = RP_TEMPFAIL;
	switch (mode) {
	case RP_MODE_ZERO:
	case RP_MODE_COUNT:
		break;
	case RP_MODE_SLOWREJECT:
		p.delay_ms = p.verdict == RP_REJECT ? 2 * dmax : 0;
		break;
	case RP_MODE_RANDOM:
	case RP_MODE_NOREJECT:
		if (dmax == 0)
			break;
		/* 60 %: at once; 28 %: up to dmax/4; 9 %: up to dmax;
		 * 3 %: dmax to 3 dmax, the late answers. */
		if (d % 100 < 60)
			p.delay_ms = 0;
		else if (d % 100 < 88)
			p.delay_ms = (d >> 8) % (dmax / 4 + 1);
		else if (d % 100 < 97)
			p.delay_ms = (d >> 8) % (dmax + 1);
		else
			p.delay_ms = dmax + (d >> 8) % (2 * dmax + 1);
		break;
	}
	return p;
}

/*
 * rp_late - whether upstream me answers stage st very late (the caller
 * chooses how late): in random mode, for an eighth of the envelope
 * stages and ends of message where a peer (another upstream, listed in
 * peers) rejects and me does not.  A peer still in the message then
 * decides the stage before me, so that answer comes to an exchange
 * already abandoned; one that left the message earlier makes only a slow
 * stage.  Its timing alone decides nothing in the model.
 */
static inline int
rp_late(uint64_t seed, const char *me, const char *const *peers,
    size_t npeers, enum rp_stage st, unsigned sess, unsigned msg,
    unsigned idx, enum rp_mode mode)
{
	int	 peer_rejects = 0;

	if (mode != RP_MODE_RANDOM || (st != RP_MAIL && st != RP_RCPT &&
	    st != RP_DATA && st != RP_EOM))
		return 0;
	if (rp_plan(seed, me, st, sess, msg, idx, mode, 0).verdict ==
	    RP_REJECT)
		return 0;
	for (size_t i = 0; i < npeers; i++)
		if (strcmp(peers[i], me) != 0 && rp_plan(seed, peers[i], st,
		    sess, msg, idx, mode, 0).verdict == RP_REJECT)
			peer_rejects = 1;
	return peer_rejects &&
	    (rp_hash(seed, me, st, sess, msg, idx) >> 40) % 8 == 0;
}

/*
 * rp_text - the reply text of a reject or tempfail, naming the upstream,
 * the stage and the exchange: "550 5.7.1 <name>:rcpt:s3m2i1 rejects".
 * The test looks for the part between the codes and the last word.
 */
static inline void
rp_token(char *dst, size_t size, const char *name, enum rp_stage st,
    unsigned sess, unsigned msg, unsigned idx)
{
	snprintf(dst, size, "%s:%s:s%um%ui%u", name, rp_stage_names[st],
	    sess, msg, idx);
}

#endif /* RANDPLAN_H */
