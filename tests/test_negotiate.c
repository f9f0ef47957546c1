/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_negotiate - miltermux negotiates with its upstreams as an MTA
 * would: it offers every no-reply bit (SMFIP_NR_*), never waits for a
 * reply an upstream said it would not send, and shows recipients the
 * MTA rejected (SMFIP_RCPT_REJ) to the upstreams that asked for them,
 * and only to those.
 *
 * The real miltermux, driven by the raw MTA client offering everything
 * as Postfix does, in front of a raw-protocol peer that negotiates like
 * rspamd's milter mode (badmilter --mode rspamd-like: every NR bit,
 * whatever it is offered, and nothing said before end of message) and
 * real libmilter test milters.  Before miltermux offered the NR bits,
 * it refused such a peer at every negotiation: all mail was tempfailed
 * (or, with on_failure accept, passed unscanned), and a filter asking
 * for SMFIP_RCPT_REJ was refused by libmilter itself.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "fixture.h"
#include "harness.h"
#include "mtaclient.h"

/* The upstreams' command timeout is 8 s (upstream_json): a stage that
 * waited for a reply that never comes would take that long.  A whole
 * session of several messages must take well under it. */
#define MAX_SESSION	4.0
#define STOP_GRACE	0.2

#define VEQ(got, want) cr_assert_eq((got), (want), "%s: got %s, want %s", \
	#got, proto_verdict_name(got), proto_verdict_name(want))

static const char upstream_json[] = "\"on_failure\": \"tempfail\", "
    "\"timeouts\": { \"command\": 8, \"content\": 8 }";

/* stage - a stage's verdict, asserting the MTA got its answer */
static enum verdict
stage(int rc, struct mta_result *r, const char *what)
{
	enum verdict	 v;

	cr_assert_eq(rc, 0, "%s: no answer (%d)", what, rc);
	v = r->verdict;
	mta_result_fini(r);
	return v;
}

/* open_session - connect, negotiate like Postfix, CONNECT and HELO */
static void
open_session(struct env *e, struct mta *m)
{
	struct mta_result	 r;

	cr_assert_eq(mta_open(m, e->mux_spec, 30), 0);
	cr_assert_eq(mta_negotiate(m, MA_ALL, MP_ALL_V6), 0);
	VEQ(stage(mta_connect(m, "client.example", "192.0.2.1", &r), &r,
	    "connect"), VERDICT_CONTINUE);
	VEQ(stage(mta_helo(m, "client.example", &r), &r, "helo"),
	    VERDICT_CONTINUE);
}

/* envelope - MAIL, RCPT, DATA, each answered continue */
static void
envelope(struct mta *m, const char *from, const char *to)
{
	const char		*f[1] = { from }, *t[1] = { to };
	struct mta_result	 r;

	VEQ(stage(mta_mail(m, f, 1, &r), &r, "mail"), VERDICT_CONTINUE);
	VEQ(stage(mta_rcpt(m, t, 1, &r), &r, "rcpt"), VERDICT_CONTINUE);
	VEQ(stage(mta_data(m, &r), &r, "data"), VERDICT_CONTINUE);
}

/* content - headers, end of headers, body: the MTA was asked for no
 * reply there (front.c), so none comes */
static void
content(struct mta *m, int n)
{
	struct mta_result	 r;
	char			 subj[32];

	snprintf(subj, sizeof subj, "message %d", n);
	VEQ(stage(mta_header(m, "Subject", subj, strlen(subj), &r), &r,
	    "header"), VERDICT_NONE);
	VEQ(stage(mta_header(m, "From", "alice@example.org", 17, &r), &r,
	    "header"), VERDICT_NONE);
	VEQ(stage(mta_eoh(m, &r), &r, "eoh"), VERDICT_NONE);
	VEQ(stage(mta_body(m, "hello\r\n", 7, &r), &r, "body"),
	    VERDICT_NONE);
}

/* has_header - did the end of message add header name: value? */
static bool
has_header(const struct mta_result *r, const char *name, const char *value)
{
	for (size_t i = 0; i < r->nmods; i++) {
		const struct mod *md = &r->mods[i];

		if ((md->kind == MOD_ADDHEADER || md->kind == MOD_INSHEADER) &&
		    strcmp(md->name, name) == 0 &&
		    strcmp(md->value, value) == 0)
			return true;
	}
	return false;
}

/* upstreams - the rspamd-like peer in mode, and a libmilter filter
 * that negotiated no reply for every stage it could */
static void
setup_rspamd(struct env *e, const char *mode)
{
	struct up	 ups[] = {
		{ "rspamd", { BADMILTER, "--mode", mode, NULL },
		    upstream_json },
		{ "nr", { "--nr", "connect", "--nr", "helo", "--nr",
		    "envfrom", "--nr", "envrcpt", "--nr", "data", "--nr",
		    "header", "--nr", "eoh", "--nr", "body", "--nr",
		    "unknown", "--addheader", "X-NR:yes", NULL },
		    upstream_json },
	};

	env_setup(e, ups, 2, NULL, 0);
}

/*
 * An upstream that negotiates like rspamd (all NR bits, 0xff080, and
 * says nothing before end of message) next to a libmilter filter with
 * --nr for every stage: every stage of three messages is answered at
 * once, and each end of message carries both headers.  Before, the
 * peer was refused at negotiation: the connect stage was tempfailed.
 */
Test(negotiate, rspamd_like_upstream_scans_every_message, .timeout = 60)
{
	struct env		 e;
	struct mta		 m;
	struct mta_result	 r;
	char			*log, *badlog;
	double			 t0;
	enum verdict		 v;

	setup_rspamd(&e, "rspamd-like");
	t0 = h_now();
	open_session(&e, &m);
	for (int n = 1; n <= 3; n++) {
		envelope(&m, "<alice@example.org>", "<bob@example.net>");
		content(&m, n);
		cr_assert_eq(mta_eom(&m, &r), 0, "message %d: no answer at "
		    "end of message", n);
		v = r.verdict;
		cr_assert(v == VERDICT_ACCEPT || v == VERDICT_CONTINUE,
		    "message %d: eom %s", n, proto_verdict_name(v));
		cr_assert(has_header(&r, "X-Spam", "no"), "message %d: "
		    "the rspamd-like header is missing (%zu mods)", n,
		    r.nmods);
		cr_assert(has_header(&r, "X-NR", "yes"), "message %d: "
		    "the nr filter's header is missing", n);
		mta_result_fini(&r);
	}
	cr_assert_eq(mta_quit(&m), 0);
	mta_close(&m);
	cr_assert_lt(h_now() - t0, MAX_SESSION, "the session took %.2f s: "
	    "some stage waited for a reply", h_now() - t0);

	log = env_wait_log(&e, "upstreams rspamd=accept");
	cr_assert_eq(h_count(log, "upstreams rspamd=accept"), 3, "%s", log);
	HASNT(log, "upstream rspamd:");
	HASNT(log, "upstream nr:");
	HASNT(log, "failed");
	badlog = h_read_file(e.up_log[0]);
	cr_assert(badlog != NULL);
	cr_assert_eq(h_count(badlog, ": accepted "), 3, "%s", badlog);
	free(badlog);
	free(log);
	env_stop(&e, STOP_GRACE);
}

/*
 * The same peer rejecting at end of message: the MTA hears its reject
 * with its text, message after message, still without any wait.
 */
Test(negotiate, rspamd_like_reject_reaches_the_mta, .timeout = 60)
{
	struct env		 e;
	struct mta		 m;
	struct mta_result	 r;
	char			*log;
	double			 t0;

	setup_rspamd(&e, "rspamd-reject");
	t0 = h_now();
	open_session(&e, &m);
	for (int n = 1; n <= 3; n++) {
		envelope(&m, "<alice@example.org>", "<bob@example.net>");
		content(&m, n);
		cr_assert_eq(mta_eom(&m, &r), 0, "message %d: no answer at "
		    "end of message", n);
		VEQ(r.verdict, VERDICT_REJECT);
		cr_assert(r.text != NULL && strcmp(r.text,
		    "554 5.7.1 Gtube pattern") == 0, "message %d: text %s",
		    n, r.text != NULL ? r.text : "(none)");
		mta_result_fini(&r);
	}
	cr_assert_eq(mta_quit(&m), 0);
	mta_close(&m);
	cr_assert_lt(h_now() - t0, MAX_SESSION, "the session took %.2f s: "
	    "some stage waited for a reply", h_now() - t0);
	log = env_wait_log(&e, "upstreams rspamd=reject");
	cr_assert_eq(h_count(log, "upstreams rspamd=reject"), 3, "%s", log);
	HASNT(log, "upstream rspamd:");
	free(log);
	env_stop(&e, STOP_GRACE);
}

/*
 * SMFIP_RCPT_REJ: "grey" asks to see the recipients the MTA rejected
 * (and would reject this one itself), "plain" does not.  miltermux asks
 * the MTA for RCPT_REJ; the rejected recipient (macro {rcpt_mailer}
 * "error") reaches grey only, and the MTA hears continue for it.  The
 * accepted recipients and the message go on as before.  Before,
 * libmilter refused grey's request at negotiation (it was not offered)
 * and miltermux did not ask the MTA for RCPT_REJ.
 */
Test(negotiate, rejected_recipients_only_to_those_that_asked, .timeout = 60)
{
	struct env		 e;
	struct up		 ups[] = {
		{ "grey", { "--rcpt-rej", "--reject-rcpt",
		    "<nobody@example.net>", "--reply",
		    "envrcpt=550 5.7.1 greylisted", "--log-macros",
		    "{rcpt_mailer}", NULL }, upstream_json },
		{ "plain", { "--log-macros", "{rcpt_mailer}", NULL },
		    upstream_json },
	};
	static const char *const rej[] = {
		"{rcpt_mailer}", "error", "{rcpt_host}", "5.1.1",
		"{rcpt_addr}", "550 5.1.1 User unknown",
	};
	static const char *const ok[] = {
		"{rcpt_mailer}", "smtp", "{rcpt_host}", "example.net",
		"{rcpt_addr}", "<bob@example.net>",
	};
	const char		*from[1] = { "<alice@example.org>" };
	const char		*nobody[1] = { "<nobody@example.net>" };
	const char		*bob[1] = { "<bob@example.net>" };
	struct mta		 m;
	struct mta_result	 r;
	char			*log, *grey, *plain;

	env_setup(&e, ups, 2, NULL, 0);
	open_session(&e, &m);
	cr_assert_neq(m.proto & MP_RCPT_REJ, 0, "miltermux asked the MTA "
	    "for protocol 0x%x, without RCPT_REJ", m.proto);
	for (int n = 0; n < 2; n++) {
		VEQ(stage(mta_mail(&m, from, 1, &r), &r, "mail"),
		    VERDICT_CONTINUE);
		cr_assert_eq(mta_macros(&m, MC_RCPT, rej, 3), 0);
		VEQ(stage(mta_rcpt(&m, nobody, 1, &r), &r, "rejected rcpt"),
		    VERDICT_CONTINUE);
		cr_assert_eq(mta_macros(&m, MC_RCPT, ok, 3), 0);
		VEQ(stage(mta_rcpt(&m, bob, 1, &r), &r, "rcpt"),
		    VERDICT_CONTINUE);
		VEQ(stage(mta_data(&m, &r), &r, "data"), VERDICT_CONTINUE);
		content(&m, n);
		cr_assert_eq(mta_eom(&m, &r), 0);
		cr_assert(r.verdict == VERDICT_ACCEPT ||
		    r.verdict == VERDICT_CONTINUE, "eom %s",
		    proto_verdict_name(r.verdict));
		mta_result_fini(&r);
	}
	cr_assert_eq(mta_quit(&m), 0);
	mta_close(&m);

	log = env_wait_log(&e, "conn-1): upstreams grey=");
	HASNT(log, "upstream grey:");
	HASNT(log, "upstream plain:");
	/* Neither message was refused for grey's word on nobody. */
	HASNT(log, "grey=reject");
	grey = h_read_file(e.up_log[0]);
	plain = h_read_file(e.up_log[1]);
	cr_assert(grey != NULL && plain != NULL);
	cr_assert_eq(h_count(grey, "envrcpt <nobody@example.net> "
	    "macro:{rcpt_mailer}=error"), 2, "grey:\n%s", grey);
	cr_assert_eq(h_count(grey, "envrcpt <bob@example.net>"), 2, "grey:\n%s",
	    grey);
	HASNT(plain, "nobody@example.net");
	cr_assert_eq(h_count(plain, "envrcpt <bob@example.net>"), 2,
	    "plain:\n%s", plain);
	free(grey);
	free(plain);
	free(log);
	env_stop(&e, STOP_GRACE);
}

/* pause_ms - give an upstream's stray reply time to arrive */
static void
pause_ms(long ms)
{
	struct timespec	 ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/*
 * The residual risk of offering NR: a filter that negotiated no reply
 * for a stage and replies all the same.  Its reply is caught when it
 * comes while nothing is due, before the next command (here the MTA
 * takes 200 ms between commands): that upstream fails with one line
 * naming the stage, and its on_failure answers for it.  (A reply that
 * comes after the next command was written is taken for that
 * command's answer, as Postfix would take it: miltermux(8).)  Before,
 * such a filter was refused at negotiation, as rspamd was.
 */
static void
check_nr_reply(const char *nrstage, bool at_connect)
{
	struct env		 e;
	struct up		 ups[] = {
		{ "good", { "--addheader", "X-Good:yes", NULL },
		    upstream_json },
		{ "bad", { BADMILTER, "--mode", "nr-reply", "--stage",
		    nrstage, NULL }, upstream_json },
	};
	const char		*f[1] = { "<alice@example.org>" };
	const char		*t[1] = { "<bob@example.net>" };
	struct mta		 m;
	struct mta_result	 r;
	char			*log, *want;

	env_setup(&e, ups, 2, NULL, 0);
	cr_assert_eq(mta_open(&m, e.mux_spec, 30), 0);
	cr_assert_eq(mta_negotiate(&m, MA_ALL, MP_ALL_V6), 0);
	VEQ(stage(mta_connect(&m, "client.example", "192.0.2.1", &r), &r,
	    "connect"), VERDICT_CONTINUE);
	pause_ms(200);
	if (at_connect) {
		/* bad failed after connect: its on_failure speaks. */
		VEQ(stage(mta_helo(&m, "client.example", &r), &r, "helo"),
		    VERDICT_TEMPFAIL);
	} else {
		VEQ(stage(mta_helo(&m, "client.example", &r), &r, "helo"),
		    VERDICT_CONTINUE);
		VEQ(stage(mta_mail(&m, f, 1, &r), &r, "mail"),
		    VERDICT_CONTINUE);
		VEQ(stage(mta_rcpt(&m, t, 1, &r), &r, "rcpt"),
		    VERDICT_CONTINUE);
		VEQ(stage(mta_data(&m, &r), &r, "data"), VERDICT_CONTINUE);
		VEQ(stage(mta_header(&m, "Subject", "s", 1, &r), &r,
		    "header"), VERDICT_NONE);
		pause_ms(200);
		VEQ(stage(mta_eoh(&m, &r), &r, "eoh"), VERDICT_NONE);
		VEQ(stage(mta_body(&m, "hi\r\n", 4, &r), &r, "body"),
		    VERDICT_NONE);
		cr_assert_eq(mta_eom(&m, &r), 0);
		VEQ(r.verdict, VERDICT_TEMPFAIL);
		mta_result_fini(&r);
	}
	mta_close(&m);
	want = h_xasprintf("reply to %s, for which it negotiated no reply",
	    nrstage);
	log = env_wait_log(&e, "upstream bad:");
	cr_assert_eq(h_count(log, "upstream bad:"), 1, "%s", log);
	HAS(log, want);
	HAS(log, "applying on_failure=tempfail");
	HASNT(log, "upstream good:");
	free(want);
	free(log);
	env_stop(&e, STOP_GRACE);
}

Test(negotiate, nr_reply_at_connect_is_caught, .timeout = 60)
{
	check_nr_reply("connect", true);
}

Test(negotiate, nr_reply_at_header_is_caught, .timeout = 60)
{
	check_nr_reply("header", false);
}

/*
 * check_unoffered - a peer asks for the lowest protocol bit (not a
 * no-reply one) that miltermux did not offer it, miltermux having been
 * offered mta_proto by the MTA; why is the line that refuses it, or
 * NULL when it is tolerated
 */
static void
check_unoffered(uint32_t mta_proto, const char *why)
{
	struct env		 e;
	struct up		 ups[] = {
		{ "good", { "--addheader", "X-Good:yes", NULL },
		    upstream_json },
		{ "bad", { BADMILTER, "--mode", "optneg-proto", NULL },
		    upstream_json },
	};
	struct mta		 m;
	struct mta_result	 r;
	char			*log, *badlog;

	env_setup(&e, ups, 2, NULL, 0);
	cr_assert_eq(mta_open(&m, e.mux_spec, 30), 0);
	cr_assert_eq(mta_negotiate(&m, MA_ALL, mta_proto), 0);
	cr_assert_eq(m.proto & ~mta_proto, 0, "asked the MTA for 0x%x, "
	    "offered 0x%x", m.proto, mta_proto);
	VEQ(stage(mta_connect(&m, "client.example", "192.0.2.1", &r), &r,
	    "connect"), why != NULL ? VERDICT_TEMPFAIL : VERDICT_CONTINUE);
	mta_close(&m);
	badlog = h_read_file(e.up_log[1]);
	cr_assert(badlog != NULL && strstr(badlog, "session 1: fired") !=
	    NULL, "bad never asked");
	free(badlog);
	if (why != NULL) {
		log = env_wait_log(&e, "upstream bad:");
		cr_assert_eq(h_count(log, "upstream bad:"), 1, "%s", log);
		HAS(log, why);
	} else {
		log = env_wait_log(&e, "2 of 2 upstreams live");
		HAS(log, "upstream bad: asked for protocol bits 0x800, which "
		    "were not offered: tolerated");
		HASNT(log, "on_failure");
	}
	free(log);
	env_stop(&e, STOP_GRACE);
}

/* RCPT_REJ when the MTA has none: tolerated as Postfix does (dropped:
 * no rejected recipient will come).  Before, it was refused. */
Test(negotiate, unoffered_rcpt_rej_is_tolerated, .timeout = 60)
{
	check_unoffered(MP_ALL_V6 & ~MP_RCPT_REJ, NULL);
}

/* HDR_LEADSPC when the MTA has none: refused, with one line that says
 * why (the header bytes it expects cannot be restored). */
Test(negotiate, unoffered_leadspc_is_refused_with_a_reason, .timeout = 60)
{
	check_unoffered(MP_ALL_V6 & ~MP_HDR_LEADSPC, "upstream bad: "
	    "negotiate: option negotiation: asked for protocol bits "
	    "0x100000, which were not offered (header values with their "
	    "leading space, which the MTA does not send): refused");
}

/*
 * A stage no upstream wants is not asked of the MTA (each costs it a
 * round trip): with both upstreams negotiating SMFIP_NODATA and
 * SMFIP_NOUNKNOWN, miltermux asks the MTA for both; with one of them
 * wanting DATA, the MTA is asked for DATA, and it reaches that one.
 * Connect, HELO, MAIL and RCPT are asked for whatever the upstreams
 * say: the decision log names them.
 */
static void
no_stage(bool one_wants_data)
{
	struct up	 ups[] = {
		{ "a", { "--no", "data", "--no", "unknown", "--no", "helo",
		    "--addheader", "X-A:1", NULL }, upstream_json },
		{ "b", { "--no", "data", "--no", "unknown", "--no", "helo",
		    "--addheader", "X-B:1", NULL }, upstream_json },
	};
	struct env		 e;
	struct mta		 m;
	struct mta_result	 r;
	const char		*f[1] = { "<alice@example.org>" };
	const char		*t[1] = { "<bob@example.net>" };
	char			*log;

	if (one_wants_data)
		ups[1].args[1] = "connect";	/* b: NOCONNECT, wants DATA */
	env_setup(&e, ups, 2, NULL, 0);
	open_session(&e, &m);
	cr_assert_eq((m.proto & MP_NODATA) != 0, !one_wants_data,
	    "protocol 0x%x", m.proto);
	cr_assert_neq(m.proto & MP_NOUNKNOWN, 0, "protocol 0x%x", m.proto);
	cr_assert_eq(m.proto & (MP_NOCONNECT | MP_NOHELO | MP_NOMAIL |
	    MP_NORCPT), 0, "protocol 0x%x", m.proto);
	VEQ(stage(mta_mail(&m, f, 1, &r), &r, "mail"), VERDICT_CONTINUE);
	VEQ(stage(mta_rcpt(&m, t, 1, &r), &r, "rcpt"), VERDICT_CONTINUE);
	if (one_wants_data)
		VEQ(stage(mta_data(&m, &r), &r, "data"), VERDICT_CONTINUE);
	content(&m, 1);
	cr_assert_eq(mta_eom(&m, &r), 0);
	cr_assert(has_header(&r, "X-A", "1") && has_header(&r, "X-B", "1"));
	VEQ(r.verdict, VERDICT_CONTINUE);
	mta_result_fini(&r);
	mta_close(&m);
	log = env_wait_log(&e, ": message (");
	HAS(log, "rcpts <bob@example.net>=continue");
	free(log);
	env_stop(&e, STOP_GRACE);
}

Test(negotiate, stage_no_upstream_wants_is_not_asked_of_the_mta,
    .timeout = 60)
{
	no_stage(false);
}

Test(negotiate, stage_one_upstream_wants_is_asked_of_the_mta, .timeout = 60)
{
	no_stage(true);
}
