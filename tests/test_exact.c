/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_exact - every answer lands on the message and the recipient it
 * was given for, whatever the timing.
 *
 * Two real libmilter test milters behind the real miltermux, driven by
 * the raw MTA client as Postfix would (every protocol bit offered): one
 * upstream decides a stage at once, the other answers the same stage
 * later.  miltermux answers the MTA without waiting for the slow one;
 * its late answer must be dropped, never folded into the next
 * recipient or the next message, and its lateness must not cost it a
 * failure.  Also: the MTA giving up while the upstreams work, and the
 * message line that explains every recipient's verdict.
 *
 * Each test checks exact SMTP-level results (the verdict of every stage
 * the MTA hears) and miltermux's log.  Each failed on the code before
 * the exchanges carried their message (see the commit that added them).
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "fixture.h"
#include "harness.h"
#include "mtaclient.h"

/* open_session - connect, negotiate like Postfix, CONNECT and HELO */
static void
open_session(struct env *e, struct mta *m)
{
	struct mta_result	 r;

	cr_assert_eq(mta_open(m, e->mux_spec, 30), 0);
	cr_assert_eq(mta_negotiate(m, MA_ALL, MP_ALL_V6), 0);
	cr_assert_eq(mta_connect(m, "client.example", "192.0.2.1", &r), 0);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE);
	cr_assert_eq(mta_helo(m, "client.example", &r), 0);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE);
}

/* mail, rcpt - an envelope stage's verdict as the MTA hears it */
static enum verdict
mail(struct mta *m, const char *from)
{
	const char		*argv[1] = { from };
	struct mta_result	 r;
	enum verdict		 v;

	cr_assert_eq(mta_mail(m, argv, 1, &r), 0, "MAIL %s: no answer", from);
	v = r.verdict;
	mta_result_fini(&r);
	return v;
}

static enum verdict
rcpt(struct mta *m, const char *to)
{
	const char		*argv[1] = { to };
	struct mta_result	 r;
	enum verdict		 v;

	cr_assert_eq(mta_rcpt(m, argv, 1, &r), 0, "RCPT %s: no answer", to);
	v = r.verdict;
	mta_result_fini(&r);
	return v;
}

/* content - DATA, one header, end of headers, a body; nothing held */
static void
content(struct mta *m)
{
	struct mta_result	 r;

	cr_assert_eq(mta_data(m, &r), 0);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE);
	cr_assert_eq(mta_header(m, "Subject", "s", 1, &r), 0);
	cr_assert_eq(mta_eoh(m, &r), 0);
	cr_assert_eq(mta_body(m, "body\r\n", 6, &r), 0);
}

/* eom - the end-of-message verdict the MTA hears */
static enum verdict
eom(struct mta *m)
{
	struct mta_result	 r;
	enum verdict		 v;

	cr_assert_eq(mta_eom(m, &r), 0, "no answer at end of message");
	v = r.verdict;
	mta_result_fini(&r);
	return v;
}

#define VEQ(got, want) cr_assert_eq((got), (want), "%s: got %s, want %s", \
	#got, proto_verdict_name(got), proto_verdict_name(want))

/* line_for - the first log line holding needle; caller frees */
static char *
line_for(struct env *e, const char *needle)
{
	char	*log = env_wait_log(e, needle), *p, *end;

	p = strstr(log, needle);
	while (p > log && p[-1] != '\n')
		p--;
	end = strchr(p, '\n');
	p = end != NULL ? h_xasprintf("%.*s", (int)(end - p), p) :
	    h_xstrdup(p);
	free(log);
	return p;
}

/*
 * Two upstreams reject the same recipient, one at once, one 300 ms
 * later: that recipient is refused, the next one and the message go
 * through, and the line says who refused whom.  (Before, the slow
 * upstream's late reject was kept as its verdict on the message, which
 * was then rejected at end of data: the good recipient bounced.)
 */
Test(exact, late_rcpt_reject_refuses_that_recipient_only, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "fast", { "--reject-rcpt", "<bad@example.net>", NULL },
		    NULL },
		{ "slow", { "--reject-rcpt", "<bad@example.net>", "--delay",
		    "envrcpt=300", NULL }, NULL },
	};
	struct mta	 m;
	char		*line;

	env_setup(&e, ups, 2, NULL, 0);
	open_session(&e, &m);
	VEQ(mail(&m, "<alice@example.org>"), VERDICT_CONTINUE);
	VEQ(rcpt(&m, "<bad@example.net>"), VERDICT_REJECT);
	VEQ(rcpt(&m, "<good@example.net>"), VERDICT_CONTINUE);
	content(&m);
	VEQ(eom(&m), VERDICT_CONTINUE);
	line = line_for(&e, "conn-1): upstreams");
	HAS(line, "merged continue");
	HAS(line, "from <alice@example.org>");
	HAS(line, "<bad@example.net>=reject by fast");
	HAS(line, "<good@example.net>=continue");
	HASNT(line, "failed");
	free(line);
	mta_close(&m);
	env_stop(&e, 0.5);
}

/*
 * A late tempfail to a MAIL that another upstream rejected at once
 * stays with that MAIL: the next message of the session passes.
 */
Test(exact, late_tempfail_to_rejected_mail_stays_there, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "fast", { "--verdict", "envfrom=reject", "--only-from",
		    "<spam@example.org>", NULL }, NULL },
		{ "slow", { "--verdict", "envfrom=tempfail", "--only-from",
		    "<spam@example.org>", "--delay", "envfrom=300", NULL },
		    NULL },
	};
	struct mta	 m;
	double		 t0;

	env_setup(&e, ups, 2, NULL, 0);
	open_session(&e, &m);
	t0 = h_now();
	VEQ(mail(&m, "<spam@example.org>"), VERDICT_REJECT);
	cr_assert_lt(h_now() - t0, 0.25, "the reject waited for the slow one");
	VEQ(mail(&m, "<alice@example.org>"), VERDICT_CONTINUE);
	VEQ(rcpt(&m, "<bob@example.net>"), VERDICT_CONTINUE);
	content(&m);
	VEQ(eom(&m), VERDICT_CONTINUE);
	HASNT(env_wait_log(&e, "from <alice@example.org>"), "failed");
	mta_close(&m);
	env_stop(&e, 0.5);
}

/*
 * A slow upstream's discard of message 1, which another upstream
 * rejected at once, never discards message 2.
 */
Test(exact, late_discard_stays_with_its_message, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "fast", { "--verdict", "eom=reject", "--only-from",
		    "<spam@example.org>", NULL }, NULL },
		{ "slow", { "--verdict", "eom=discard", "--only-from",
		    "<spam@example.org>", "--delay", "eom=300", NULL },
		    NULL },
	};
	struct mta	 m;
	char		*line;

	env_setup(&e, ups, 2, NULL, 0);
	open_session(&e, &m);
	VEQ(mail(&m, "<spam@example.org>"), VERDICT_CONTINUE);
	VEQ(rcpt(&m, "<bob@example.net>"), VERDICT_CONTINUE);
	content(&m);
	VEQ(eom(&m), VERDICT_REJECT);
	VEQ(mail(&m, "<alice@example.org>"), VERDICT_CONTINUE);
	VEQ(rcpt(&m, "<bob@example.net>"), VERDICT_CONTINUE);
	content(&m);
	VEQ(eom(&m), VERDICT_CONTINUE);
	line = line_for(&e, "from <spam@example.org>");
	HAS(line, "merged reject by fast");
	free(line);
	line = line_for(&e, "from <alice@example.org>");
	HAS(line, "merged continue");
	HAS(line, "slow=continue");
	free(line);
	mta_close(&m);
	env_stop(&e, 0.5);
}

/*
 * An upstream still busy with an exchange that was decided without it
 * catches up within its own budget: the next recipient waits for it,
 * but it is not timed out or failed for the time it spent on the
 * abandoned one.  Command timeout 1 s, each RCPT takes it 0.7 s; the
 * second recipient's answer comes 1.4 s after it was asked.
 */
Test(exact, busy_upstream_catches_up_without_failing, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "fast", { "--reject-rcpt", "<bad@example.net>", NULL },
		    NULL },
		{ "slow", { "--delay", "envrcpt=700", "--tag", NULL },
		    "\"timeouts\": { \"command\": 1 }" },
	};
	struct mta	 m;
	struct mta_result r;
	char		*line;
	bool		 tagged = false;

	env_setup(&e, ups, 2, NULL, 0);
	open_session(&e, &m);
	VEQ(mail(&m, "<alice@example.org>"), VERDICT_CONTINUE);
	VEQ(rcpt(&m, "<bad@example.net>"), VERDICT_REJECT);
	VEQ(rcpt(&m, "<good@example.net>"), VERDICT_CONTINUE);
	content(&m);
	cr_assert_eq(mta_eom(&m, &r), 0);
	VEQ(r.verdict, VERDICT_CONTINUE);
	for (size_t i = 0; i < r.nmods; i++)
		if (r.mods[i].name != NULL &&
		    strcmp(r.mods[i].name, "X-Testmilter-slow") == 0)
			tagged = true;
	cr_assert(tagged, "the slow upstream's header is missing");
	mta_result_fini(&r);
	line = line_for(&e, "conn-1): upstreams");
	HAS(line, "slow=continue");
	free(line);
	HASNT(env_mux_log(&e), "upstream slow:");
	mta_close(&m);
	env_stop(&e, 0.5);
}

/* send_eom - end of message without waiting for the answer */
static void
send_eom(struct mta *m)
{
	struct buf	 b;

	buf_init(&b);
	codec_put_packet(&b, MC_BODYEOB, NULL, 0);
	cr_assert_eq(mta_send_raw(m, buf_head(&b), buf_avail(&b)), 0);
	buf_fini(&b);
}

/*
 * gone - the MTA sends end of message (or RCPT), the upstream works on
 * it for 5 s, and after 300 ms the MTA aborts (abort true) or closes:
 * miltermux logs the message as aborted at once, applies nothing and
 * does not wait for the upstream.
 */
static void
gone(bool abort, bool at_rcpt)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "worker", { "--delay", at_rcpt ? "envrcpt=5000" :
		    "eom=5000", "--addheader", "X-Late:yes", NULL }, NULL },
	};
	struct mta	 m;
	struct buf	 b;
	const char	*to[1] = { "<bob@example.net>" };
	char		*log, *want;
	double		 t0;

	env_setup(&e, ups, 1, NULL, 0);
	open_session(&e, &m);
	VEQ(mail(&m, "<alice@example.org>"), VERDICT_CONTINUE);
	if (at_rcpt) {
		buf_init(&b);
		codec_put_argv(&b, MC_RCPT, to, 1);
		cr_assert_eq(mta_send_raw(&m, buf_head(&b), buf_avail(&b)),
		    0);
		buf_fini(&b);
	} else {
		VEQ(rcpt(&m, "<bob@example.net>"), VERDICT_CONTINUE);
		content(&m);
		send_eom(&m);
	}
	nanosleep(&(struct timespec){ 0, 300 * 1000 * 1000 }, NULL);
	t0 = h_now();
	if (abort)
		cr_assert_eq(mta_abort(&m), 0);
	else
		mta_close(&m);
	want = h_xasprintf("merged aborted (the MTA %s at %s)",
	    abort ? "aborted the message" : "closed the connection",
	    at_rcpt ? "envrcpt" : "eom");
	cr_assert_eq(h_wait_file_contains(e.mux_log, want, 4.0), 0,
	    "no \"%s\" in:\n%s", want, env_mux_log(&e));
	cr_assert_lt(h_now() - t0, 1.5, "miltermux waited for the upstream");
	log = env_mux_log(&e);
	HASNT(log, "refused");
	HASNT(log, "merged continue");
	HASNT(log, "upstream worker:");
	free(want);
	free(log);
	mta_close(&m);
	env_stop(&e, 0.5);
}

Test(exact, mta_aborts_during_eom, .timeout = 60)
{
	gone(true, false);
}

Test(exact, mta_closes_during_eom, .timeout = 60)
{
	gone(false, false);
}

Test(exact, mta_closes_during_rcpt, .timeout = 60)
{
	gone(false, true);
}
