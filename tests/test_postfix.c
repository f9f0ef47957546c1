/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_postfix - end-to-end tests through a real Postfix.
 *
 * miltermux runs in a private Postfix instance's smtpd_milters, with
 * real test milters behind it: SMTP goes in at smtpd, verdicts come back
 * as SMTP replies, and the modifications are checked as Postfix applied
 * them, in the messages that come out at the smtp-sink (envelope in its
 * X-Mail-Args / X-Rcpt-Args lines, then headers and body).  Each test
 * starts its own instance through tests/harness.h.
 *
 * The first test proves that the Postfix side works without any milter,
 * so that a failing milter test can be told apart from a broken Postfix
 * setup.  Tests are skipped where a private Postfix cannot run (not
 * root, Postfix or smtp-sink not installed).
 *
 * Concurrency: Criterion runs each test in its own process; the file
 * statics below belong to that one test.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "fixture.h"
#include "harness.h"

static struct h_postfix	pf;
static bool		passed;	/* the test body reached its end */

/* fini - stop the instance; print its logs if the test did not finish */
static void
fini(void)
{
	(void)h_postfix_stop(&pf);
	if (!passed && pf.dir != NULL)
		h_postfix_print_logs(&pf, stderr);
	h_postfix_fini(&pf);
}

/* start_or_skip - start an instance, or skip where none can run */
static void
start_or_skip(const char *milter_spec, const char *extra_main_cf)
{
	int	 rc;

	rc = h_postfix_start(&pf, milter_spec, extra_main_cf);
	if (rc == -EPERM || rc == -ENOENT)
		cr_skip_test("no private Postfix here: %s", strerror(-rc));
	cr_assert_eq(rc, 0, "h_postfix_start: %s", strerror(-rc));
}

/* expect - one SMTP command and the code it must get */
static void
expect(struct h_smtp *s, const char *line, int want)
{
	char	*reply = NULL;
	int	 code;

	code = h_smtp_cmd(s, line, &reply);
	cr_assert_eq(code, want, "%s: got %d: %s", line, code,
	    reply != NULL ? reply : strerror(-code));
	free(reply);
}

Test(postfix, relays_a_message_to_the_sink, .timeout = 120, .fini = fini)
{
	static const char	 message[] =
	    "From: Sender <sender@example.test>\n"
	    "To: Recipient <rcpt@example.test>\n"
	    "Subject: harness relay check\n"
	    "\n"
	    "First line.\n"
	    ".A line that starts with a dot.\n";
	struct h_smtp		 s;
	char			*reply = NULL, *msg;
	int			 code, n;

	start_or_skip(NULL, NULL);

	code = h_smtp_open(&s, "127.0.0.1", pf.smtpd_port, &reply);
	cr_assert_eq(code, 220, "greeting: %d: %s", code,
	    reply != NULL ? reply : strerror(-code));
	free(reply);
	expect(&s, "EHLO client.example.test", 250);
	expect(&s, "MAIL FROM:<sender@example.test>", 250);
	expect(&s, "RCPT TO:<rcpt@example.test>", 250);
	code = h_smtp_data(&s, message, &reply);
	cr_assert_eq(code, 250, "end of data: %d: %s", code,
	    reply != NULL ? reply : strerror(-code));
	free(reply);
	h_smtp_close(&s);

	n = h_sink_wait_messages(&pf, 1, 60.0);
	cr_assert_eq(n, 1, "sink messages: %d", n);
	msg = h_sink_message(&pf, 0);
	cr_assert_not_null(msg, "no dump file");
	cr_assert_not_null(strstr(msg, "\nSubject: harness relay check\n"),
	    "Subject missing:\n%s", msg);
	cr_assert_not_null(strstr(msg, "X-Rcpt-Args: <rcpt@example.test>"),
	    "envelope recipient missing:\n%s", msg);
	cr_assert_not_null(strstr(msg, "X-Mail-Args: <sender@example.test>"),
	    "envelope sender missing:\n%s", msg);
	cr_assert_not_null(strstr(msg, "\n.A line that starts with a dot.\n"),
	    "dot-stuffing lost the leading dot:\n%s", msg);
	free(msg);
	passed = true;
}

/*
 * With miltermux in front of the given upstreams: start everything and
 * open an SMTP session that has said EHLO.
 */
static void
start_proxy(struct env *e, const struct up *ups, size_t n, struct h_smtp *s)
{
	char	*spec, *reply = NULL;
	int	 code;

	env_setup(e, ups, n, NULL, 1);
	spec = h_xasprintf("inet:127.0.0.1:%d", e->mux_port);
	start_or_skip(spec, NULL);
	free(spec);
	code = h_smtp_open(s, "127.0.0.1", pf.smtpd_port, &reply);
	cr_assert_eq(code, 220, "greeting: %d: %s", code,
	    reply != NULL ? reply : strerror(-code));
	free(reply);
	expect(s, "EHLO client.example.test", 250);
}

/* expect_text - a command whose reply must be code and contain text */
static void
expect_text(struct h_smtp *s, const char *line, int want, const char *text)
{
	char	*reply = NULL;
	int	 code;

	code = h_smtp_cmd(s, line, &reply);
	cr_assert_eq(code, want, "%s: got %d: %s", line, code,
	    reply != NULL ? reply : strerror(-code));
	cr_assert(strstr(reply, text) != NULL, "%s: reply \"%s\" lacks "
	    "\"%s\"", line, reply, text);
	free(reply);
}

static void
data(struct h_smtp *s, const char *msg, int want, const char *text)
{
	char	*reply = NULL;
	int	 code;

	code = h_smtp_data(s, msg, &reply);
	cr_assert_eq(code, want, "end of data: %d: %s", code,
	    reply != NULL ? reply : strerror(-code));
	if (text != NULL)
		cr_assert(strstr(reply, text) != NULL, "reply \"%s\" lacks "
		    "\"%s\"", reply, text);
	free(reply);
}

/* delivered - wait for the n-th delivered message and return it */
static char *
delivered(int n)
{
	int	 got = h_sink_wait_messages(&pf, n, 60.0);
	char	*msg;

	cr_assert_geq(got, n, "sink messages: %d, want %d", got, n);
	msg = h_sink_message(&pf, n - 1);
	cr_assert_not_null(msg);
	return msg;
}

static const char message[] =
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.net>\n"
    "Subject: original subject\n"
    "X-Dup: one\n"
    "X-Dup: two\n"
    "X-Dup: three\n"
    "\n"
    "original body\n";

Test(postfix, all_continue_delivers_with_every_upstream_run,
    .timeout = 120, .fini = fini)
{
	struct env	 e;
	struct h_smtp	 s;
	struct up	 ups[] = {
		{ "a", { "--tag", NULL }, NULL },
		{ "b", { "--tag", NULL }, NULL },
		{ "c", { "--tag", NULL }, NULL },
	};
	char		*msg;

	start_proxy(&e, ups, 3, &s);
	expect(&s, "MAIL FROM:<alice@example.org>", 250);
	expect(&s, "RCPT TO:<bob@example.net>", 250);
	data(&s, message, 250, NULL);
	h_smtp_close(&s);
	msg = delivered(1);
	HAS(msg, "X-Mail-Args: <alice@example.org>");
	HAS(msg, "X-Rcpt-Args: <bob@example.net>");
	HAS(msg, "\nX-Testmilter-a: seen\n");
	HAS(msg, "\nX-Testmilter-b: seen\n");
	HAS(msg, "\nX-Testmilter-c: seen\n");
	HAS(msg, "\nSubject: original subject\n");
	HAS(msg, "\n\noriginal body\n");
	passed = true;
}

Test(postfix, custom_reject_text_reaches_the_smtp_client, .timeout = 120,
    .fini = fini)
{
	struct env	 e;
	struct h_smtp	 s;
	struct up	 ups[] = {
		{ "a", { NULL }, NULL },
		{ "policy", { "--verdict", "envfrom=reject", "--reply",
		    "envfrom=550 5.7.1 Sender refused by local policy",
		    NULL }, NULL },
	};

	start_proxy(&e, ups, 2, &s);
	expect_text(&s, "MAIL FROM:<alice@example.org>", 550,
	    "550 5.7.1 Sender refused by local policy");
	h_smtp_close(&s);
	passed = true;
}

Test(postfix, reject_and_tempfail_together_give_the_reject,
    .timeout = 120, .fini = fini)
{
	struct env	 e;
	struct h_smtp	 s;
	struct up	 ups[] = {
		{ "t", { "--verdict", "eom=tempfail", "--reply",
		    "eom=451 4.7.1 try again", NULL }, NULL },
		{ "r", { "--verdict", "eom=reject", "--reply",
		    "eom=554 5.7.1 content refused", NULL }, NULL },
	};

	start_proxy(&e, ups, 2, &s);
	expect(&s, "MAIL FROM:<alice@example.org>", 250);
	expect(&s, "RCPT TO:<bob@example.net>", 250);
	data(&s, message, 554, "5.7.1 content refused");
	h_smtp_close(&s);
	cr_assert_eq(h_sink_count(&pf), 0);
	passed = true;
}

Test(postfix, tempfail_alone_gives_4xx, .timeout = 120, .fini = fini)
{
	struct env	 e;
	struct h_smtp	 s;
	struct up	 ups[] = {
		{ "a", { NULL }, NULL },
		{ "t", { "--verdict", "envrcpt=tempfail", NULL }, NULL },
	};

	start_proxy(&e, ups, 2, &s);
	expect(&s, "MAIL FROM:<alice@example.org>", 250);
	expect_text(&s, "RCPT TO:<bob@example.net>", 451, "4.");
	h_smtp_close(&s);
	passed = true;
}

Test(postfix, one_recipient_rejected_and_the_others_delivered,
    .timeout = 120, .fini = fini)
{
	struct env	 e;
	struct h_smtp	 s;
	struct up	 ups[] = {
		{ "a", { "--reject-rcpt", "<nobody@example.net>", "--reply",
		    "envrcpt=550 5.1.1 No such user here", NULL }, NULL },
		{ "b", { NULL }, NULL },
	};
	char		*msg;

	start_proxy(&e, ups, 2, &s);
	expect(&s, "MAIL FROM:<alice@example.org>", 250);
	expect(&s, "RCPT TO:<bob@example.net>", 250);
	expect_text(&s, "RCPT TO:<nobody@example.net>", 550,
	    "5.1.1 No such user here");
	expect(&s, "RCPT TO:<carol@example.net>", 250);
	data(&s, message, 250, NULL);
	h_smtp_close(&s);
	msg = delivered(1);
	HAS(msg, "X-Rcpt-Args: <bob@example.net>");
	HAS(msg, "X-Rcpt-Args: <carol@example.net>");
	HASNT(msg, "nobody@example.net");
	passed = true;
}

Test(postfix, headers_from_two_upstreams_and_rebased_edits,
    .timeout = 120, .fini = fini)
{
	struct env	 e;
	struct h_smtp	 s;
	/* Both meant the original headers: a deletes X-Dup #1, b changes
	 * X-Dup #2 and inserts one above everything it saw; each adds one
	 * header. */
	struct up	 ups[] = {
		{ "a", { "--addheader", "X-From-A:alpha", "--chgheader",
		    "1:X-Dup:", NULL }, NULL },
		{ "b", { "--addheader", "X-From-B:beta", "--chgheader",
		    "2:X-Dup:TWO", "--insheader", "1:X-Top:first", NULL },
		    NULL },
	};
	char		*msg, *hdrs;

	start_proxy(&e, ups, 2, &s);
	expect(&s, "MAIL FROM:<alice@example.org>", 250);
	expect(&s, "RCPT TO:<bob@example.net>", 250);
	data(&s, message, 250, NULL);
	h_smtp_close(&s);
	msg = delivered(1);
	hdrs = strstr(msg, "\nX-Top: first\nFrom: Alice");
	cr_assert_not_null(hdrs, "X-Top must sit right above From "
	    "(below Postfix's Received:):\n%s", msg);
	HAS(hdrs, "Subject: original subject\nX-Dup: TWO\n"
	    "X-Dup: three\n");
	HASNT(msg, "X-Dup: one");
	HAS(msg, "\nX-From-A: alpha\n");
	HAS(msg, "\nX-From-B: beta\n");
	cr_assert(strstr(msg, "X-From-A") < strstr(msg, "X-From-B"));
	passed = true;
}

Test(postfix, change_of_an_absent_header_adds_it, .timeout = 120,
    .fini = fini)
{
	struct env	 e;
	struct h_smtp	 s;
	/* a negotiates CHGHDRS only and changes a header the message does
	 * not have: Postfix would add it for a, so it must through
	 * miltermux too. */
	struct up	 ups[] = {
		{ "a", { "--chgheader", "1:X-Absent:added by a change",
		    NULL }, NULL },
	};
	char		*msg, *log;

	start_proxy(&e, ups, 1, &s);
	expect(&s, "MAIL FROM:<alice@example.org>", 250);
	expect(&s, "RCPT TO:<bob@example.net>", 250);
	data(&s, message, 250, NULL);
	h_smtp_close(&s);
	msg = delivered(1);
	/* Appended: after the headers Postfix adds (Message-Id, Date). */
	HAS(msg, "\nX-Absent: added by a change\n\n");
	HAS(msg, "\nX-Dup: three\n");
	log = env_wait_log(&e, "modification applied");
	HAS(log, "merged continue; 1 modification applied");
	HASNT(log, "refused");
	free(log);
	passed = true;
}

Test(postfix, recipients_sender_and_body_changes_are_delivered,
    .timeout = 120, .fini = fini)
{
	struct env	 e;
	struct h_smtp	 s;
	struct up	 ups[] = {
		{ "env", { "--addrcpt", "<added@example.net>",
		    "--delrcpt", "<bob@example.net>",
		    "--chgfrom", "<bounce@example.org>", NULL }, NULL },
		{ "body", { "--replbody", "the replaced body\n", NULL },
		    NULL },
	};
	char		*msg;

	start_proxy(&e, ups, 2, &s);
	expect(&s, "MAIL FROM:<alice@example.org>", 250);
	expect(&s, "RCPT TO:<bob@example.net>", 250);
	expect(&s, "RCPT TO:<carol@example.net>", 250);
	data(&s, message, 250, NULL);
	h_smtp_close(&s);
	msg = delivered(1);
	HAS(msg, "X-Mail-Args: <bounce@example.org>");
	HAS(msg, "X-Rcpt-Args: <added@example.net>");
	HAS(msg, "X-Rcpt-Args: <carol@example.net>");
	HASNT(msg, "X-Rcpt-Args: <bob@example.net>");
	HAS(msg, "\n\nthe replaced body\n");
	HASNT(msg, "original body");
	passed = true;
}

Test(postfix, quarantine_puts_the_message_on_hold, .timeout = 120,
    .fini = fini)
{
	struct env	 e;
	struct h_smtp	 s;
	struct up	 ups[] = {
		{ "a", { NULL }, NULL },
		{ "av", { "--quarantine", "virus found", NULL }, NULL },
	};
	char		*log;

	start_proxy(&e, ups, 2, &s);
	expect(&s, "MAIL FROM:<alice@example.org>", 250);
	expect(&s, "RCPT TO:<bob@example.net>", 250);
	data(&s, message, 250, NULL);
	h_smtp_close(&s);
	h_wait_file_contains(pf.maillog, "milter-hold", 30);
	log = h_postfix_log(&pf);
	/* Postfix 3.7 logs the hold but not the milter's reason. */
	HAS(log, "milter-hold: END-OF-MESSAGE");
	cr_assert_eq(h_sink_count(&pf), 0, "held, not delivered");
	passed = true;
}

Test(postfix, two_messages_in_one_session_with_rset, .timeout = 120,
    .fini = fini)
{
	struct env	 e;
	struct h_smtp	 s;
	struct up	 ups[] = {
		{ "a", { "--addheader", "X-Seen-By-A:yes", NULL }, NULL },
		{ "b", { "--reject-rcpt", "<nobody@example.net>", NULL },
		    NULL },
	};
	char		*m1, *m2;

	start_proxy(&e, ups, 2, &s);
	expect(&s, "MAIL FROM:<first@example.org>", 250);
	expect(&s, "RCPT TO:<bob@example.net>", 250);
	data(&s, message, 250, NULL);
	expect(&s, "RSET", 250);
	expect(&s, "MAIL FROM:<aborted@example.org>", 250);
	expect(&s, "RSET", 250);
	expect(&s, "MAIL FROM:<second@example.org>", 250);
	expect(&s, "RCPT TO:<nobody@example.net>", 550);
	expect(&s, "RCPT TO:<carol@example.net>", 250);
	data(&s, message, 250, NULL);
	h_smtp_close(&s);
	m1 = delivered(1);
	m2 = delivered(2);
	if (strstr(m1, "second@") != NULL) {
		char *t = m1; m1 = m2; m2 = t;
	}
	HAS(m1, "X-Mail-Args: <first@example.org>");
	HAS(m1, "\nX-Seen-By-A: yes\n");
	HAS(m2, "X-Mail-Args: <second@example.org>");
	HAS(m2, "X-Rcpt-Args: <carol@example.net>");
	HAS(m2, "\nX-Seen-By-A: yes\n");
	/* Exactly one added header each: no state leaked between. */
	cr_assert_null(strstr(strstr(m2, "X-Seen-By-A") + 1, "X-Seen-By-A"));
	passed = true;
}

Test(postfix, down_and_slow_upstreams_get_their_on_failure,
    .timeout = 120, .fini = fini)
{
	struct env	 e;
	struct h_smtp	 s;
	struct up	 ups[] = {
		{ "a", { "--addheader", "X-A:kept", NULL }, NULL },
		{ "down", { NULL }, "\"on_failure\": \"accept\"" },
		{ "slow", { "--delay", "eom=5000", "--addheader", "X-Slow:1",
		    NULL }, "\"on_failure\": \"tempfail\", "
		    "\"timeouts\": { \"content\": 1 }" },
	};
	char		*log;

	start_proxy(&e, ups, 3, &s);
	expect(&s, "MAIL FROM:<alice@example.org>", 250);
	expect(&s, "RCPT TO:<bob@example.net>", 250);
	/* down is ignored (accept); slow times out at end of message and
	 * its tempfail decides. */
	data(&s, message, 451, "4.");
	h_smtp_close(&s);
	log = env_wait_log(&e, "upstream slow:");
	HAS(log, "upstream down: negotiate: connect");
	HAS(log, "applying on_failure=accept");
	HAS(log, "upstream slow: eom: no answer in time");
	HAS(log, "applying on_failure=tempfail");
	cr_assert_eq(h_sink_count(&pf), 0);
	passed = true;
}

/*
 * Phases: OpenDKIM signs in phase 2, after phase-1 milters changed the
 * Subject, added and deleted headers and replaced the body.  The signer
 * must see the message as phase 1 left it, so the signature of the
 * delivered message verifies; with everything in phase 1 it signs the
 * original, and the delivered message's signature does not verify.
 */
static char *
start_opendkim(void)
{
	char		*dir = h_path("dkim"), *conf, *spec, *sock, *out = NULL;
	const char	*gen[] = { "opendkim-genkey", "-b", "1024", "-d",
			    "example.org", "-s", "test", "-D", NULL, NULL };
	const char	*run[] = { "opendkim", "-f", "-x", NULL, NULL };
	int		 status;

	if (access("/usr/sbin/opendkim", X_OK) != 0 ||
	    access("/usr/bin/python3", X_OK) != 0)
		cr_skip_test("opendkim or python3-dkim is not installed");
	cr_assert_eq(mkdir(dir, 0700), 0);
	gen[8] = dir;
	cr_assert_eq(h_run(gen, 60, &out, &status), 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "opendkim-genkey: %s", out);
	free(out);
	sock = h_xasprintf("%s/dkim.sock", dir);
	conf = h_xasprintf("%s/opendkim.conf", dir);
	spec = h_xasprintf(
	    "Mode s\nDomain example.org\nSelector test\n"
	    "KeyFile %s/test.private\nSocket local:%s\n"
	    "Canonicalization relaxed/relaxed\nInternalHosts 127.0.0.1\n"
	    "Background no\nRequireSafeKeys false\nSyslog no\n", dir, sock);
	cr_assert_eq(h_write_file(conf, spec), 0);
	run[3] = conf;
	cr_assert(h_spawn(run, h_path("opendkim.log")) > 0);
	cr_assert_eq(h_wait_unix(sock, 20), 0, "opendkim did not come up");
	free(spec);
	free(conf);
	free(dir);
	return h_xasprintf("unix:%s", sock);
}

static const char dkim_message[] =
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.net>\n"
    "Subject: quarterly report\n"
    "Date: Sun, 22 Nov 2026 12:00:00 +0000\n"
    "Message-ID: <phase-test@example.org>\n"
    "X-Internal: remove me\n"
    "\n"
    "The original body.\n";

/* dkim_run - one message through the given upstreams; 0 if it verifies */
static int
dkim_run(const struct up *ups, size_t n, char **msgp)
{
	struct env	 e;
	struct h_smtp	 s;
	char		*msg, *path = h_path("delivered.eml"), *out = NULL;
	char		*key = h_path("dkim/test.txt");
	const char	*argv[] = { "/usr/bin/python3",
			    PACKAGE_SRCDIR "/tests/dkim_verify.py", NULL, NULL,
			    NULL };
	int		 status;

	start_proxy(&e, ups, n, &s);
	expect(&s, "MAIL FROM:<alice@example.org>", 250);
	expect(&s, "RCPT TO:<bob@example.net>", 250);
	data(&s, dkim_message, 250, NULL);
	h_smtp_close(&s);
	msg = delivered(1);
	cr_assert_eq(h_write_file(path, strstr(msg, "\n") + 1), 0);
	argv[2] = path;
	argv[3] = key;
	cr_assert_eq(h_run(argv, 60, &out, &status), 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) <= 1,
	    "dkim_verify.py: %s", out);
	fprintf(stderr, "%s", out);
	free(out);
	*msgp = msg;
	return WEXITSTATUS(status);
}

Test(postfix, dkim_in_phase_2_signs_the_merged_message, .timeout = 120,
    .fini = fini)
{
	char		*spec = start_opendkim(), *msg;
	char		*at = h_xasprintf(EXTERNAL "%s", spec);
	struct up	 ups[] = {
		{ "tag", { "--chgheader", "1:Subject:[external] quarterly "
		    "report", "--addheader", "X-Scanned:clean", NULL },
		    NULL },
		{ "strip", { "--chgheader", "1:X-Internal:", "--replbody",
		    "The body after the disclaimer milter.\\n", NULL },
		    NULL },
		{ "dkim", { at, NULL }, "\"phase\": 2" },
	};

	cr_assert_eq(dkim_run(ups, 3, &msg), 0, "the signature must verify:"
	    "\n%s", msg);
	HAS(msg, "\nSubject: [external] quarterly report\n");
	HAS(msg, "\nX-Scanned: clean\n");
	HASNT(msg, "X-Internal");
	HAS(msg, "\n\nThe body after the disclaimer milter.\n");
	HAS(msg, "DKIM-Signature:");
	passed = true;
}

Test(postfix, dkim_in_phase_1_signs_the_original, .timeout = 120,
    .fini = fini)
{
	char		*spec = start_opendkim(), *msg;
	char		*at = h_xasprintf(EXTERNAL "%s", spec);
	struct up	 ups[] = {
		{ "tag", { "--chgheader", "1:Subject:[external] quarterly "
		    "report", "--addheader", "X-Scanned:clean", NULL },
		    NULL },
		{ "strip", { "--chgheader", "1:X-Internal:", "--replbody",
		    "The body after the disclaimer milter.\\n", NULL },
		    NULL },
		{ "dkim", { at, NULL }, NULL },
	};

	cr_assert_eq(dkim_run(ups, 3, &msg), 1, "signing the original must "
	    "not verify after the changes:\n%s", msg);
	HAS(msg, "\nSubject: [external] quarterly report\n");
	HAS(msg, "DKIM-Signature:");
	passed = true;
}
