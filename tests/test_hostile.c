/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_hostile - upstreams that break the protocol.
 *
 * The real miltermux in front of two upstreams: "good", a libmilter
 * testmilter that adds a header, and "bad", tests/milters/badmilter,
 * which breaks one rule of the protocol at one stage.  miltermux-send
 * plays the MTA.  For each misbehaviour the session must get bad's
 * on_failure (and good's header when that is accept), miltermux must
 * log exactly one line naming bad and the reason, and a second session
 * through the same miltermux, where bad behaves, must pass untouched.
 * Nothing may hang: every case is bounded, the drip case by bad's own
 * deadline.
 *
 * Reply texts bad sends with a valid 'y' are no failure; for those the
 * test reads the reply miltermux gave the MTA: a lone '%' doubled, an
 * existing "%%" kept, nothing that could split the SMTP reply.
 *
 * Concurrency: one test process per case (Criterion); each starts its
 * own processes in its own temp directory.  Ownership: strings live
 * until the test process exits.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "fixture.h"
#include "harness.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
#define MAX_BAD_ARGS	6
#define PARALLEL	8
/* Everything is checked when a test stops its processes; libmilter
 * would take seconds to notice SIGTERM. */
#define STOP_GRACE	0.2

static const char *sample =
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.net>\n"
    "Subject: hostile upstreams\n"
    "\n"
    "line one\n"
    "line two\n";

/*
 * One case.  Strings are inline: Criterion copies the parameters into
 * the test's process.  why may hold alternatives separated by '|'.
 */
struct hostile_case {
	char	name[32];
	char	args[MAX_BAD_ARGS][48];	/* badmilter flags */
	char	on_failure[12];
	char	timeouts[48];		/* bad's "timeouts" object, or "" */
	int	exit;			/* miltermux-send's, first session */
	char	stage[24];		/* "upstream bad: STAGE: ", or "" */
	char	why[80];		/* "" when bad does not fail */
	char	seen[72];		/* in miltermux-send's output, or "" */
	char	unseen[24];		/* not in it, or "" */
	double	max_seconds;		/* first session's bound, or 0 */
};

/* send_msg - one session through miltermux; returns the output */
static char *
send_msg(const struct env *e, int *code, double *seconds)
{
	char		*eml = h_xasprintf("%s/msg.eml", h_tmpdir());
	const char	*argv[] = { BIN("miltermux-send"), "-s", e->mux_spec,
			    "-f", "<alice@example.org>", "-r",
			    "<bob@example.net>", "-t", "30", eml, NULL };
	char		*out = NULL;
	double		 t0;
	int		 status = 0;

	cr_assert_eq(h_write_file(eml, sample), 0);
	t0 = h_now();
	cr_assert_eq(h_run(argv, 40, &out, &status), 0, "session hung");
	if (seconds != NULL)
		*seconds = h_now() - t0;
	cr_assert(WIFEXITED(status), "%s", out);
	*code = WEXITSTATUS(status);
	free(eml);
	return out;
}

/* line_of - a copy of the line of hay that holds needle, or NULL */
static char *
line_of(const char *hay, const char *needle)
{
	const char	*p = strstr(hay, needle), *b, *e;
	char		*line;

	if (p == NULL)
		return NULL;
	for (b = p; b > hay && b[-1] != '\n'; b--)
		;
	if ((e = strchr(p, '\n')) == NULL)
		e = p + strlen(p);
	line = h_xmalloc((size_t)(e - b) + 1);
	memcpy(line, b, (size_t)(e - b));
	line[e - b] = '\0';
	return line;
}

/* has_any - does hay hold one of the '|'-separated alternatives? */
static bool
has_any(const char *hay, const char *alts)
{
	char	*copy = h_xstrdup(alts), *save = NULL, *tok;
	bool	 found = false;

	for (tok = strtok_r(copy, "|", &save); tok != NULL && !found;
	    tok = strtok_r(NULL, "|", &save))
		found = strstr(hay, tok) != NULL;
	free(copy);
	return found;
}

/* setup - good and bad upstreams, bad misbehaving in session 1 only */
static void
setup(struct env *e, const struct hostile_case *tc)
{
	struct up	 ups[2] = {
		{ "good", { "--addheader", "X-Good:yes", NULL }, NULL },
		{ "bad", { BADMILTER }, NULL },
	};
	size_t		 k = 1;

	for (size_t i = 0; i < MAX_BAD_ARGS && tc->args[i][0] != '\0'; i++)
		ups[1].args[k++] = tc->args[i];
	ups[1].args[k++] = "--sessions";
	ups[1].args[k++] = "1";
	ups[1].args[k] = NULL;
	ups[1].json = h_xasprintf("\"on_failure\": \"%s\"%s%s",
	    tc->on_failure, tc->timeouts[0] != '\0' ? ", " : "",
	    tc->timeouts);
	env_setup(e, ups, 2, NULL, 0);
}

/*
 * check_case - run both sessions of one case and judge them
 */
static void
check_case(const struct hostile_case *tc)
{
	struct env	 e;
	char		*out, *log, *line, *badlog, *want;
	double		 dt;
	int		 code;

	setup(&e, tc);
	out = send_msg(&e, &code, &dt);
	cr_assert_eq(code, tc->exit, "%s: exit %d, want %d:\n%s\nlog:\n%s",
	    tc->name, code, tc->exit, out, env_mux_log(&e));
	if (tc->exit == 0)
		HAS(out, "addheader X-Good: yes");
	if (tc->seen[0] != '\0')
		HAS(out, tc->seen);
	if (tc->unseen[0] != '\0')
		HASNT(out, tc->unseen);
	HASNT(out, "X-Bad");
	if (tc->max_seconds > 0) {
		cr_assert_lt(dt, tc->max_seconds, "%s took %.2f s", tc->name,
		    dt);
		fprintf(stderr, "hostile %s: session took %.2f s\n", tc->name,
		    dt);
	}
	badlog = h_read_file(e.up_log[1]);
	cr_assert(badlog != NULL && strstr(badlog, "session 1: fired") !=
	    NULL, "%s: bad never misbehaved", tc->name);

	/* The second session: bad behaves, everything passes. */
	out = send_msg(&e, &code, NULL);
	cr_assert_eq(code, 0, "%s: second session:\n%s\nlog:\n%s", tc->name,
	    out, env_mux_log(&e));
	HAS(out, "addheader X-Good: yes");
	log = env_wait_log(&e, "conn-2): upstreams good=");
	line = line_of(log, "conn-2): upstreams good=");
	HAS(line, "good=continue");
	HASNT(line, "failed");
	free(line);
	cr_assert_eq(h_wait_exit(e.mux, 0, NULL), -ETIMEDOUT,
	    "miltermux died");
	badlog = h_read_file(e.up_log[1]);
	HASNT(badlog, "session 2: fired");

	if (tc->why[0] == '\0') {
		cr_assert_eq(h_count(log, "upstream bad:"), 0, "%s", log);
		env_stop(&e, STOP_GRACE);
		return;
	}
	cr_assert_eq(h_count(log, "upstream bad:"), 1, "%s: want one line "
	    "about bad:\n%s", tc->name, log);
	line = line_of(log, "upstream bad:");
	want = h_xasprintf("conn-1: upstream bad: %s", tc->stage);
	HAS(line, want);
	cr_assert(has_any(line, tc->why), "%s: expected \"%s\" in:\n%s",
	    tc->name, tc->why, line);
	free(want);
	want = h_xasprintf("; applying on_failure=%s", tc->on_failure);
	HAS(line, want);
	free(want);
	env_stop(&e, STOP_GRACE);
}

ParameterizedTestParameters(hostile, protocol_errors_fail_only_that_upstream)
{
	static struct hostile_case cases[] = {
		{ "garbage", { "--mode", "garbage" }, "tempfail", "", 2,
		  "envfrom: ", "bad packet \"this \": length field "
		  "1952999795 over the limit of 65536", "envfrom "
		  "<alice@example.org>: tempfail", "", 0 },
		{ "garbage_binary_eoh", { "--mode", "garbage", "--stage",
		  "eoh", "--text", "\\x00\\x00\\x00\\x03\\xfe\\xfe\\xfe" },
		  "accept", "", 0, "eoh: ", "unknown reply code 0xfe", "",
		  "", 0 },
		{ "len_zero_header", { "--mode", "len-zero", "--stage",
		  "header" }, "tempfail", "", 2, "header: ",
		  "length field 0", "eom: tempfail", "", 0 },
		{ "len_huge_eom", { "--mode", "len-huge", "--stage", "eom" },
		  "accept", "", 0, "eom: ", "length field 65537 over the "
		  "limit of 65536", "", "", 0 },
		{ "unknown_code_envrcpt", { "--mode", "unknown-code",
		  "--stage", "envrcpt" }, "reject", "", 1, "envrcpt: ",
		  "unknown reply code 0x5a", "envrcpt <bob@example.net>: "
		  "reject", "", 0 },
		{ "mod_early_envfrom", { "--mode", "mod-early" }, "accept",
		  "", 0, "envfrom: ", "modification (addheader) before end "
		  "of message", "", "", 0 },
		{ "mod_early_body", { "--mode", "mod-early", "--stage",
		  "body" }, "tempfail", "", 2, "body: ", "modification "
		  "(addheader) before end of message", "eom: tempfail", "",
		  0 },
		{ "undeclared_action", { "--mode", "undeclared-action" },
		  "accept", "", 0, "eom: ", "modification (addheader) it did "
		  "not negotiate", "", "", 0 },
		{ "undeclared_action_reject", { "--mode",
		  "undeclared-action" }, "reject", "", 1, "eom: ",
		  "modification (addheader) it did not negotiate",
		  "eom: reject", "", 0 },
		/* A filter that negotiated SMFIP_NR_* and replies all the
		 * same (badmilter --mode nr-reply) is caught only when its
		 * reply comes before the next command: test_negotiate pins
		 * that with an MTA that takes its time. */
		{ "optneg_actions", { "--mode", "optneg-actions" },
		  "tempfail", "", 2, "negotiate: ", "asked for actions "
		  "0x200, which were not offered", "connect 127.0.0.1: "
		  "tempfail", "", 0 },
		{ "optneg_proto", { "--mode", "optneg-proto" }, "reject", "",
		  1, "negotiate: ", "protocol bits 0x200000, which were not "
		  "offered (bits of no known meaning)", "connect 127.0.0.1: "
		  "reject", "", 0 },
		{ "optneg_version_1", { "--mode", "optneg-version",
		  "--version", "1" }, "accept", "", 0, "negotiate: ",
		  "unsupported protocol version 1", "", "", 0 },
		{ "optneg_version_7", { "--mode", "optneg-version",
		  "--version", "7" }, "tempfail", "", 2, "negotiate: ",
		  "unsupported protocol version 7", "", "", 0 },
		{ "extra_reply_envfrom", { "--mode", "extra-reply" },
		  "tempfail", "", 2, "envfrom: ", "data after the final "
		  "reply to envfrom", "envfrom <alice@example.org>: "
		  "tempfail", "", 0 },
		{ "extra_reply_eom", { "--mode", "extra-reply", "--stage",
		  "eom" }, "accept", "", 0, "eom: ", "data after the final "
		  "reply to eom", "", "", 0 },
		/* One byte per second: the stage's deadline ends it. */
		{ "drip_envfrom", { "--mode", "drip" }, "tempfail",
		  "\"timeouts\": { \"command\": 1 }", 2, "envfrom: ",
		  "no answer in time", "envfrom <alice@example.org>: "
		  "tempfail", "", 2.5 },
		/* Pipelined: the headers do not wait, end of message does,
		 * and its deadline ends the drip. */
		{ "drip_header", { "--mode", "drip", "--stage", "header" },
		  "tempfail", "\"timeouts\": { \"content\": 1 }", 2,
		  "header: ", "no answer in time", "eom: tempfail", "",
		  2.5 },
		{ "drip_eom", { "--mode", "drip", "--stage", "eom" },
		  "accept", "\"timeouts\": { \"content\": 1 }", 0, "eom: ",
		  "no answer in time", "", "", 2.5 },
		{ "drip_negotiate", { "--mode", "drip", "--stage",
		  "negotiate" }, "reject", "\"timeouts\": { \"connect\": 1 }",
		  1, "negotiate: ", "no answer in time",
		  "connect 127.0.0.1: reject", "", 2.5 },
	};

	return cr_make_param_array(struct hostile_case, cases, NELEM(cases));
}

ParameterizedTest(struct hostile_case *tc, hostile,
    protocol_errors_fail_only_that_upstream, .timeout = 60)
{
	check_case(tc);
}

ParameterizedTestParameters(hostile, closing_at_any_stage_fails_that_upstream)
{
	static struct hostile_case cases[] = {
		{ "negotiate", { "--mode", "close", "--stage", "negotiate" },
		  "tempfail", "", 2, "negotiate: ", "connection closed",
		  "connect 127.0.0.1: tempfail", "", 0 },
		{ "connect", { "--mode", "close", "--stage", "connect" },
		  "accept", "", 0, "connect: ", "connection closed", "", "",
		  0 },
		{ "helo", { "--mode", "close", "--stage", "helo" },
		  "reject", "", 1, "helo: ", "connection closed",
		  "helo localhost: reject", "", 0 },
		{ "envfrom", { "--mode", "close", "--stage", "envfrom" },
		  "accept", "", 0, "envfrom: ", "connection closed", "", "",
		  0 },
		{ "envrcpt", { "--mode", "close", "--stage", "envrcpt" },
		  "tempfail", "", 2, "envrcpt: ", "connection closed",
		  "envrcpt <bob@example.net>: tempfail", "", 0 },
		{ "data", { "--mode", "close", "--stage", "data" },
		  "accept", "", 0, "data: ", "connection closed", "", "", 0 },
		{ "header", { "--mode", "close", "--stage", "header" },
		  "tempfail", "", 2, "header: ", "connection closed",
		  "eom: tempfail", "", 0 },
		{ "eoh", { "--mode", "close", "--stage", "eoh" },
		  "accept", "", 0, "eoh: ", "connection closed", "", "", 0 },
		{ "body", { "--mode", "close", "--stage", "body" },
		  "reject", "", 1, "body: ", "connection closed", "", "", 0 },
		{ "eom", { "--mode", "close", "--stage", "eom" },
		  "accept", "", 0, "eom: ", "connection closed", "", "", 0 },
	};

	return cr_make_param_array(struct hostile_case, cases, NELEM(cases));
}

ParameterizedTest(struct hostile_case *tc, hostile,
    closing_at_any_stage_fails_that_upstream, .timeout = 60)
{
	check_case(tc);
}

/*
 * Reply texts.  A valid one is the upstream's verdict: what the MTA
 * gets is checked in miltermux-send's output, where the text appears
 * with control characters escaped.  An invalid one (CR, LF or NUL
 * inside, or an enhanced code of another class) is a protocol error and
 * must not reach the MTA at all.
 */
ParameterizedTestParameters(hostile, reply_texts_reach_the_mta_safely)
{
	static struct hostile_case cases[] = {
		{ "lone_percent", { "--mode", "reply-text", "--text",
		  "550 5.7.1 100% sure" }, "tempfail", "", 1, "", "",
		  "envfrom <alice@example.org>: reject \"550 5.7.1 100%% "
		  "sure\"", "", 0 },
		{ "doubled_percent_stays", { "--mode", "reply-text", "--text",
		  "550 5.7.1 100%% sure" }, "tempfail", "", 1, "", "",
		  "reject \"550 5.7.1 100%% sure\"", "%%%", 0 },
		{ "conversions", { "--mode", "reply-text", "--text",
		  "451 4.7.1 %s%n%d%%x" }, "accept", "", 2, "", "",
		  "tempfail \"451 4.7.1 %%s%%n%%d%%x\"", "", 0 },
		{ "multiline_percent_eom", { "--mode", "reply-text",
		  "--stage", "eom", "--text",
		  "554-5.7.1 50% spam\\r\\n554 5.7.1 see %url" }, "tempfail",
		  "", 1, "", "", "eom: reject \"554-5.7.1 50%% spam\\r\\n"
		  "554 5.7.1 see %%url\"", "", 0 },
		{ "cr_inside", { "--mode", "reply-text", "--text",
		  "550 5.7.1 a\\rb" }, "reject", "", 1, "envfrom: ",
		  "malformed reply text \"550 5.7.1 a\\rb\"",
		  "envfrom <alice@example.org>: reject [", "\"550", 0 },
		{ "lf_inside", { "--mode", "reply-text", "--text",
		  "550 5.7.1 a\\nRCPT TO:<x@y>" }, "tempfail", "", 2,
		  "envfrom: ", "malformed reply text \"550 5.7.1 a\\nRCPT",
		  "envfrom <alice@example.org>: tempfail [", "RCPT", 0 },
		{ "crlf_smuggles_a_2xx", { "--mode", "reply-text", "--text",
		  "550 5.7.1 a\\r\\n250 2.0.0 ok" }, "reject", "", 1,
		  "envfrom: ", "malformed reply text", "envfrom "
		  "<alice@example.org>: reject [", "250", 0 },
		{ "nul_inside", { "--mode", "reply-text", "--text",
		  "550 5.7.1 a\\0b" }, "accept", "", 0, "envfrom: ",
		  "malformed reply text \"550 5.7.1 a\\x00b\"", "", "\"550",
		  0 },
		{ "class_mismatch", { "--mode", "reply-text", "--text",
		  "550 4.7.1 mismatch" }, "tempfail", "", 2, "envfrom: ",
		  "malformed reply text \"550 4.7.1 mismatch\"",
		  "envfrom <alice@example.org>: tempfail [", "mismatch", 0 },
	};

	return cr_make_param_array(struct hostile_case, cases, NELEM(cases));
}

ParameterizedTest(struct hostile_case *tc, hostile,
    reply_texts_reach_the_mta_safely, .timeout = 60)
{
	check_case(tc);
}

/*
 * A libmilter filter that asks for no-reply steps is granted them, as
 * Postfix grants them: libmilter sends nothing for those stages, so its
 * verdicts there are lost, miltermux does not wait for them, and
 * everything else works.
 */
Test(hostile, nr_asked_by_a_libmilter_filter_is_granted,
    .timeout = 60)
{
	struct up	 ups[] = {
		{ "good", { "--addheader", "X-Good:yes", NULL }, NULL },
		{ "nr", { "--nr", "connect", "--nr", "envfrom", "--nr",
		    "header", "--nr", "eoh", "--nr", "body", "--verdict",
		    "envfrom=reject", "--addheader", "X-Nr:yes", NULL },
		    "\"on_failure\": \"tempfail\"" },
	};
	struct env	 e;
	char		*out, *log, *nl;
	int		 code;

	env_setup(&e, ups, 2, NULL, 0);
	out = send_msg(&e, &code, NULL);
	cr_assert_eq(code, 0, "%s\nlog:\n%s", out, env_mux_log(&e));
	HAS(out, "addheader X-Good: yes");
	HAS(out, "addheader X-Nr: yes");
	log = env_wait_log(&e, "conn-1): upstreams");
	HAS(log, "nr=continue");
	HASNT(log, "upstream nr:");
	nl = h_read_file(e.up_log[1]);
	HAS(nl, " envfrom <alice@example.org>");
	HAS(nl, " header Subject: hostile upstreams");
	HAS(nl, " eom");
	env_stop(&e, STOP_GRACE);
}

/*
 * Many sessions at once, bad closing in each: every session gets bad's
 * on_failure and good's header, each failure is logged once, with its
 * own connection id, and nothing leaks from one session to another.
 */
Test(hostile, concurrent_sessions_fail_independently, .timeout = 60)
{
	struct up	 ups[] = {
		{ "good", { "--addheader", "X-Good:yes", NULL }, NULL },
		/* Each session must meet it: never mark it down here. */
		{ "bad", { BADMILTER, "--mode", "close", "--stage", "eom",
		    NULL }, "\"on_failure\": \"accept\", "
		    "\"failures\": 1000" },
	};
	struct env	 e;
	char		*eml = h_path("msg.eml"), *outs[PARALLEL], *log, *s;
	pid_t		 pids[PARALLEL];
	int		 status;

	env_setup(&e, ups, 2, NULL, 0);
	cr_assert_eq(h_write_file(eml, sample), 0);
	for (int i = 0; i < PARALLEL; i++) {
		const char	*argv[] = { BIN("miltermux-send"), "-s",
				    e.mux_spec, "-r", "<bob@example.net>",
				    "-t", "30", eml, NULL };

		outs[i] = h_xasprintf("%s/out.%d", h_tmpdir(), i);
		pids[i] = h_spawn(argv, outs[i]);
		cr_assert(pids[i] > 0);
	}
	for (int i = 0; i < PARALLEL; i++) {
		cr_assert_eq(h_wait_exit(pids[i], 30, &status), 0,
		    "session %d hung", i);
		s = h_read_file(outs[i]);
		cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		    "session %d:\n%s", i, s);
		HAS(s, "addheader X-Good: yes");
		free(s);
	}
	for (int i = 1; i <= PARALLEL; i++) {
		char	*want = h_xasprintf("conn-%d: upstream bad: eom: "
			    "connection closed before the reply; applying "
			    "on_failure=accept", i);

		log = env_wait_log(&e, want);
		cr_assert_eq(h_count(log, want), 1, "%s\n%s", want, log);
		free(want);
		free(log);
	}
	log = env_mux_log(&e);
	cr_assert_eq(h_count(log, "upstream bad:"), PARALLEL, "%s", log);
	HASNT(log, "upstream good:");
	cr_assert_eq(h_wait_exit(e.mux, 0, NULL), -ETIMEDOUT,
	    "miltermux died");
	env_stop(&e, STOP_GRACE);
}
