/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_postfix - end-to-end tests through a real Postfix.
 *
 * This file will hold the end-to-end tests that run miltermux in a
 * private Postfix instance's smtpd_milters, with test milters behind it:
 * SMTP in at smtpd, verdicts and modifications as Postfix applies them,
 * and the messages as they come out at the smtp-sink.  Each test starts
 * its own instance through tests/harness.h.
 *
 * For now it proves that the Postfix side works without any milter, so
 * that a failing milter test can be told apart from a broken Postfix
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

#include <criterion/criterion.h>

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
