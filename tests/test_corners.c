/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_corners - protocol corners neither Postfix nor Sendmail reaches,
 * which a milter proxy must still answer right.
 *
 * The real miltermux in front of real libmilter testmilters (or
 * badmilter where an upstream has to send what libmilter cannot), driven
 * by the raw MTA side of tests/mtaclient.c:
 *
 *   - a multi-line reply set with smfi_setmlreply reaches the MTA byte
 *     for byte as libmilter wrote it to miltermux;
 *   - a reply text over libmilter's limits (32 lines of 980 bytes) is
 *     cut to them, not replaced, and miltermux logs what it cut;
 *   - after SMFIC_QUIT_NC, the next session on the same connection is
 *     served like a fresh one, by fresh upstream sessions;
 *   - an SMFIC_BODYEOB that carries body bytes gets them to the
 *     upstreams and is answered once, with the end of message's verdict.
 *
 * Concurrency: one test process per case (Criterion); each starts its
 * own processes in its own temp directory.  Ownership: strings live
 * until the test process exits.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "harness.h"
#include "mtaclient.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
/* Everything is checked when a test stops its processes. */
#define STOP_GRACE	0.2
#define REPLY_WAIT	10

static const char *const from[] = { "<alice@example.org>" };
static const char *const rcpt_ok[] = { "<bob@example.net>" };
static const char *const rcpt_bad[] = { "<nobody@example.net>" };

/* open_mta - a raw MTA connection to miltermux, negotiated as Postfix
 * would (every action, every protocol step, the no-reply bits) */
static void
open_mta(struct mta *m, const struct env *e)
{
	cr_assert_eq(mta_open(m, e->mux_spec, REPLY_WAIT), 0);
	cr_assert_eq(mta_negotiate(m, MA_ALL, MP_ALL_V6), 0);
}

/* expect - one command's verdict, and its text when want_text is set */
static void
expect(const char *what, int rc, struct mta_result *r, enum verdict want,
    const char *want_text)
{
	cr_assert_eq(rc, 0, "%s: no answer (%d)", what, rc);
	cr_assert_eq(r->verdict, want, "%s: verdict %d, want %d", what,
	    (int)r->verdict, (int)want);
	if (want_text != NULL) {
		cr_assert_not_null(r->text, "%s: no reply text", what);
		cr_assert_str_eq(r->text, want_text, "%s: reply text", what);
	}
	mta_result_fini(r);
}

/* reject_at_mail - the text the MTA gets for MAIL FROM */
static char *
reject_at_mail(const struct env *e)
{
	struct mta		 m;
	struct mta_result	 r;
	char			*text;

	open_mta(&m, e);
	expect("connect", mta_connect(&m, "client.example", "192.0.2.7", &r),
	    &r, VERDICT_CONTINUE, NULL);
	expect("helo", mta_helo(&m, "client.example", &r), &r,
	    VERDICT_CONTINUE, NULL);
	cr_assert_eq(mta_mail(&m, from, 1, &r), 0);
	cr_assert_eq(r.verdict, VERDICT_REJECT);
	cr_assert_not_null(r.text, "no reply text for the reject");
	text = h_xstrdup(r.text);
	mta_result_fini(&r);
	mta_close(&m);
	return text;
}

/* The stages a filter can reject at, and where the MTA hears it. */
struct ml_case {
	char	stage[12];
};

ParameterizedTestParameters(corners, mlreply_reaches_the_mta_as_libmilter_wrote_it)
{
	static struct ml_case	 cases[] = {
		{ "connect" }, { "helo" }, { "envfrom" }, { "envrcpt" },
		{ "data" }, { "header" }, { "eoh" }, { "body" }, { "eom" },
	};

	return cr_make_param_array(struct ml_case, cases, NELEM(cases));
}

/* until_verdict - a session up to the first verdict that is not
 * continue (at end of message at the latest); returns its text */
static char *
until_verdict(const struct env *e, enum verdict *v)
{
	static const char	 body[] = "Hello.\r\n";
	struct mta		 m;
	struct mta_result	 r;
	char			*text = NULL;
	int			 rc;

	open_mta(&m, e);
	for (int step = 0; step < 9; step++) {
		switch (step) {
		case 0:
			rc = mta_connect(&m, "client.example", "192.0.2.7",
			    &r);
			break;
		case 1:
			rc = mta_helo(&m, "client.example", &r);
			break;
		case 2:
			rc = mta_mail(&m, from, 1, &r);
			break;
		case 3:
			rc = mta_rcpt(&m, rcpt_ok, 1, &r);
			break;
		case 4:
			rc = mta_data(&m, &r);
			break;
		case 5:
			rc = mta_header(&m, "Subject", "corners", 7, &r);
			break;
		case 6:
			rc = mta_eoh(&m, &r);
			break;
		case 7:
			rc = mta_body(&m, body, sizeof body - 1, &r);
			break;
		default:
			rc = mta_eom(&m, &r);
			break;
		}
		cr_assert_eq(rc, 0, "step %d: no answer (%d)", step, rc);
		if (r.verdict != VERDICT_CONTINUE &&
		    r.verdict != VERDICT_NONE) {
			*v = r.verdict;
			text = r.text != NULL ? h_xstrdup(r.text) : NULL;
			mta_result_fini(&r);
			break;
		}
		mta_result_fini(&r);
	}
	mta_close(&m);
	return text;
}

ParameterizedTest(struct ml_case *tc, corners,
    mlreply_reaches_the_mta_as_libmilter_wrote_it, .timeout = 60)
{
	char		*verdict = h_xasprintf("%s=reject", tc->stage);
	char		*reply = h_xasprintf("%s=550 5.7.1 line1\\nline2",
			    tc->stage);
	struct up	 ups[] = {
		{ "up", { "--verdict", verdict, "--reply", reply, NULL },
		    NULL },
	};
	struct env	 e;
	enum verdict	 v = VERDICT_NONE;
	char		*text;

	env_setup(&e, ups, NELEM(ups), NULL, 0);
	text = until_verdict(&e, &v);
	cr_assert_eq(v, VERDICT_REJECT, "%s: verdict %d", tc->stage, (int)v);
	/* smfi_setmlreply(ctx, "550", "5.7.1", "line1", "line2", NULL)
	 * as libmilter puts it on the wire (PROTOCOL.md 1.4). */
	cr_assert_not_null(text, "%s: no reply text", tc->stage);
	cr_assert_str_eq(text, "550-5.7.1 line1\r\n550 5.7.1 line2",
	    "%s: reply text", tc->stage);
	free(text);
	env_stop(&e, STOP_GRACE);
}

Test(corners, mlreply_of_32_full_lines_passes_whole, .timeout = 60)
{
	struct up	 ups[] = {
		{ "up", { "--verdict", "envfrom=tempfail", "--reply", NULL,
		    NULL }, NULL },
	};
	struct env	 e;
	struct mta	 m;
	struct mta_result r;
	char		 line[981], *arg, *want, *tmp;

	/* The most libmilter lets a filter say: 32 lines of 980 bytes. */
	memset(line, 'x', 980);
	line[980] = '\0';
	arg = h_xstrdup("envfrom=451 4.7.1 ");
	want = h_xstrdup("");
	for (int i = 0; i < 32; i++) {
		tmp = h_xasprintf("%s%s%s", arg, i > 0 ? "\\n" : "", line);
		free(arg);
		arg = tmp;
		tmp = h_xasprintf("%s%s451%c4.7.1 %s", want,
		    i > 0 ? "\r\n" : "", i < 31 ? '-' : ' ', line);
		free(want);
		want = tmp;
	}
	ups[0].args[3] = arg;
	env_setup(&e, ups, NELEM(ups), NULL, 0);
	open_mta(&m, &e);
	expect("connect", mta_connect(&m, "client.example", "192.0.2.7", &r),
	    &r, VERDICT_CONTINUE, NULL);
	cr_assert_eq(mta_mail(&m, from, 1, &r), 0);
	cr_assert_eq(r.verdict, VERDICT_TEMPFAIL);
	cr_assert_not_null(r.text);
	cr_assert_eq(strlen(r.text), strlen(want));
	cr_assert(strcmp(r.text, want) == 0, "the reply text was altered");
	mta_result_fini(&r);
	mta_close(&m);
	{
		char	*log = env_mux_log(&e);

		HASNT(log, "cut");
		HASNT(log, "refused the reply text");
		free(log);
	}
	free(arg);
	free(want);
	env_stop(&e, STOP_GRACE);
}

Test(corners, reply_over_the_limits_is_cut_and_logged, .timeout = 60)
{
	struct up	 ups[] = {
		{ "bad", { BADMILTER, "--mode", "reply-text", "--stage",
		    "envfrom", "--text", NULL, NULL }, NULL },
	};
	struct env	 e;
	char		*text, *arg, *want, *tmp, *log;
	char		 longline[1001], cutline[981];

	/* 34 lines, the second one 1000 bytes long: libmilter takes 32
	 * lines of at most 980 bytes (smfi_setmlreply). */
	memset(longline, 'y', 1000);
	longline[1000] = '\0';
	memcpy(cutline, longline, 980);
	cutline[980] = '\0';
	arg = h_xstrdup("");
	want = h_xstrdup("");
	for (int i = 1; i <= 34; i++) {
		char	 body[16];

		snprintf(body, sizeof body, "line %d", i);
		tmp = h_xasprintf("%s%s550%c5.7.1 %s", arg, i > 1 ? "\\r\\n" :
		    "", i < 34 ? '-' : ' ', i == 2 ? longline : body);
		free(arg);
		arg = tmp;
		if (i > 32)
			continue;
		tmp = h_xasprintf("%s%s550%c5.7.1 %s", want, i > 1 ? "\r\n" :
		    "", i < 32 ? '-' : ' ', i == 2 ? cutline : body);
		free(want);
		want = tmp;
	}
	ups[0].args[6] = arg;
	env_setup(&e, ups, NELEM(ups), NULL, 0);
	text = reject_at_mail(&e);
	cr_assert(strcmp(text, want) == 0,
	    "want the text cut to 32 lines of 980 bytes, got:\n%s", text);
	log = env_wait_log(&e, "cut");
	HAS(log, "upstream bad: reply text cut to libmilter's limits "
	    "(32 lines of 980 bytes): line 2 from 1000 to 980 bytes; "
	    "lines 33 to 34 of 34 dropped");
	cr_assert_eq(h_count(log, "reply text cut"), 1, "%s", log);
	HASNT(log, "refused the reply text");
	free(log);
	free(text);
	free(arg);
	free(want);
	env_stop(&e, STOP_GRACE);
}

Test(corners, reply_pushed_over_the_limit_by_escaping_is_cut_and_logged,
    .timeout = 60)
{
	struct up	 ups[] = {
		{ "up", { "--verdict", "envfrom=reject", "--reply", NULL,
		    NULL }, NULL },
	};
	struct env	 e;
	char		 line[981], *arg, *want, *text, *log;

	/* 980 bytes, the most smfi_setreply takes, ending in a lone '%':
	 * doubled so that the MTA shows it (codec.h), it would be 981. */
	memset(line, 'z', 979);
	line[979] = '%';
	line[980] = '\0';
	arg = h_xasprintf("envfrom=550 5.7.1 %s", line);
	line[979] = '\0';
	want = h_xasprintf("550 5.7.1 %s", line);
	ups[0].args[3] = arg;
	env_setup(&e, ups, NELEM(ups), NULL, 0);
	text = reject_at_mail(&e);
	cr_assert(strcmp(text, want) == 0, "got:\n%s", text);
	log = env_wait_log(&e, "cut");
	HAS(log, "upstream up: reply text cut to libmilter's limits "
	    "(32 lines of 980 bytes): line 1 from 980 to 979 bytes\n");
	free(log);
	free(text);
	free(want);
	free(arg);
	env_stop(&e, STOP_GRACE);
}

/* full_session - connect through eom; rcpt_bad is rejected with text */
static void
full_session(struct mta *m, const char *tag)
{
	struct mta_result	 r;
	static const char	 body[] = "Hello.\r\n";
	char			 what[64];
	bool			 found = false;

	snprintf(what, sizeof what, "%s: connect", tag);
	expect(what, mta_connect(m, "client.example", "192.0.2.7", &r), &r,
	    VERDICT_CONTINUE, NULL);
	snprintf(what, sizeof what, "%s: helo", tag);
	expect(what, mta_helo(m, "client.example", &r), &r,
	    VERDICT_CONTINUE, NULL);
	snprintf(what, sizeof what, "%s: mail", tag);
	expect(what, mta_mail(m, from, 1, &r), &r, VERDICT_CONTINUE, NULL);
	snprintf(what, sizeof what, "%s: bad rcpt", tag);
	expect(what, mta_rcpt(m, rcpt_bad, 1, &r), &r, VERDICT_REJECT,
	    "550 5.1.1 no such user");
	snprintf(what, sizeof what, "%s: good rcpt", tag);
	expect(what, mta_rcpt(m, rcpt_ok, 1, &r), &r, VERDICT_CONTINUE,
	    NULL);
	snprintf(what, sizeof what, "%s: data", tag);
	expect(what, mta_data(m, &r), &r, VERDICT_CONTINUE, NULL);
	cr_assert_eq(mta_header(m, "Subject", "corners", 7, NULL), 0);
	cr_assert_eq(mta_eoh(m, NULL), 0);
	cr_assert_eq(mta_body(m, body, sizeof body - 1, NULL), 0);
	cr_assert_eq(mta_eom(m, &r), 0, "%s: no answer at eom", tag);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE, "%s: eom verdict %d", tag,
	    (int)r.verdict);
	for (size_t i = 0; i < r.nmods; i++)
		if (r.mods[i].kind == MOD_ADDHEADER &&
		    strcmp(r.mods[i].name, "X-Corner") == 0 &&
		    strcmp(r.mods[i].value, "yes") == 0)
			found = true;
	cr_assert(found, "%s: the upstream's header was not added", tag);
	mta_result_fini(&r);
}

Test(corners, session_after_quit_nc_is_served_like_a_fresh_one,
    .timeout = 60)
{
	struct up	 ups[] = {
		{ "up", { "--reject-rcpt", "nobody@example.net", "--reply",
		    "envrcpt=550 5.1.1 no such user", "--addheader",
		    "X-Corner:yes", NULL }, NULL },
	};
	struct env	 e;
	struct mta	 m;
	char		*log;

	env_setup(&e, ups, NELEM(ups), NULL, 0);
	open_mta(&m, &e);
	full_session(&m, "first session");
	cr_assert_eq(mta_quit_nc(&m), 0);
	full_session(&m, "session after QUIT_NC");
	cr_assert_eq(mta_quit(&m), 0);
	mta_close(&m);
	/* Two upstream sessions, each from its own negotiation to its own
	 * close, and each saw the whole of its MTA session. */
	h_wait_file_contains(e.up_log[0], " 2 close", REPLY_WAIT);
	log = h_read_file(e.up_log[0]);
	cr_assert_not_null(log);
	for (int s = 1; s <= 2; s++) {
		static const char *const stages[] = { "negotiate", "connect",
		    "helo", "envfrom", "envrcpt <nobody@example.net>",
		    "envrcpt <bob@example.net>", "data", "header Subject",
		    "eoh", "body 8", "eom", "close" };

		for (size_t i = 0; i < NELEM(stages); i++) {
			char	*needle = h_xasprintf(" %d %s", s, stages[i]);

			HAS(log, needle);
			free(needle);
		}
	}
	free(log);
	/* The upstreams asked for what the MTA agreed to at the start. */
	log = env_wait_log(&e, "new session after QUIT_NC");
	HAS(log, "conn-2: new session after QUIT_NC");
	HASNT(log, "would ask for");
	HASNT(log, "refused");
	free(log);
	env_stop(&e, STOP_GRACE);
}

Test(corners, bodyeob_with_data_reaches_upstreams_and_is_answered,
    .timeout = 60)
{
	struct up	 ups[] = {
		{ "one", { "--addheader", "X-Corner:yes", NULL }, NULL },
		{ "two", { NULL }, NULL },
	};
	static const char	 chunk[] = "First part of the body.\r\n";
	static const char	 last[] = "The rest, in the BODYEOB packet.\r\n";
	struct env		 e;
	struct mta		 m;
	struct mta_result	 r;
	char			*log, *needle;
	bool			 found = false;

	env_setup(&e, ups, NELEM(ups), NULL, 0);
	open_mta(&m, &e);
	expect("connect", mta_connect(&m, "client.example", "192.0.2.7", &r),
	    &r, VERDICT_CONTINUE, NULL);
	expect("mail", mta_mail(&m, from, 1, &r), &r, VERDICT_CONTINUE, NULL);
	expect("rcpt", mta_rcpt(&m, rcpt_ok, 1, &r), &r, VERDICT_CONTINUE,
	    NULL);
	expect("data", mta_data(&m, &r), &r, VERDICT_CONTINUE, NULL);
	cr_assert_eq(mta_header(&m, "Subject", "corners", 7, NULL), 0);
	cr_assert_eq(mta_eoh(&m, NULL), 0);
	cr_assert_eq(mta_body(&m, chunk, sizeof chunk - 1, NULL), 0);
	cr_assert_eq(mta_eom_data(&m, last, sizeof last - 1, &r), 0,
	    "BODYEOB with data was not answered");
	cr_assert_eq(r.verdict, VERDICT_CONTINUE, "eom verdict %d",
	    (int)r.verdict);
	for (size_t i = 0; i < r.nmods; i++)
		if (r.mods[i].kind == MOD_ADDHEADER &&
		    strcmp(r.mods[i].name, "X-Corner") == 0)
			found = true;
	cr_assert(found, "one's header was not added");
	mta_result_fini(&r);
	/* Answered once: the next transaction's MAIL gets its own reply,
	 * not a stale second answer to the BODYEOB. */
	expect("second mail", mta_mail(&m, from, 1, &r), &r,
	    VERDICT_CONTINUE, NULL);
	mta_close(&m);
	for (size_t u = 0; u < NELEM(ups); u++) {
		h_wait_file_contains(e.up_log[u], " 1 eom", REPLY_WAIT);
		log = h_read_file(e.up_log[u]);
		cr_assert_not_null(log);
		needle = h_xasprintf(" 1 body %zu\n", sizeof chunk - 1);
		HAS(log, needle);
		free(needle);
		needle = h_xasprintf(" 1 body %zu\n", sizeof last - 1);
		HAS(log, needle);
		free(needle);
		HAS(log, " 1 eom");
		free(log);
	}
	env_stop(&e, STOP_GRACE);
}

Test(corners, bodyeob_with_data_rejected_at_body_is_answered_once,
    .timeout = 60)
{
	struct up	 ups[] = {
		{ "up", { "--verdict", "body=reject", "--reply",
		    "body=554 5.7.1 body refused", NULL }, NULL },
	};
	static const char	 last[] = "All of the body, in BODYEOB.\r\n";
	struct env		 e;
	struct mta		 m;
	struct mta_result	 r;

	env_setup(&e, ups, NELEM(ups), NULL, 0);
	open_mta(&m, &e);
	expect("connect", mta_connect(&m, "client.example", "192.0.2.7", &r),
	    &r, VERDICT_CONTINUE, NULL);
	expect("mail", mta_mail(&m, from, 1, &r), &r, VERDICT_CONTINUE, NULL);
	expect("rcpt", mta_rcpt(&m, rcpt_ok, 1, &r), &r, VERDICT_CONTINUE,
	    NULL);
	cr_assert_eq(mta_eoh(&m, NULL), 0);
	expect("eom", mta_eom_data(&m, last, sizeof last - 1, &r), &r,
	    VERDICT_REJECT, "554 5.7.1 body refused");
	expect("second mail", mta_mail(&m, from, 1, &r), &r,
	    VERDICT_CONTINUE, NULL);
	mta_close(&m);
	env_stop(&e, STOP_GRACE);
}
