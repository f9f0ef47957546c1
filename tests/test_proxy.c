/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_proxy - the real miltermux binary in front of real upstream
 * milters (tests/milters/testmilter, on libmilter), over real unix
 * sockets, driven by miltermux-send and by OpenDKIM's miltertest.
 *
 * Each test starts its own upstreams and its own miltermux in a private
 * temp directory (harness.c), so tests run in parallel without sharing
 * anything, and everything they start dies with them.
 */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixture.h"
#include "harness.h"

static const char *sample =
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.net>\n"
    "Subject: original subject\n"
    "X-Dup: one\n"
    "X-Dup: two\n"
    "X-Dup: three\n"
    "\n"
    "line one\n"
    "line two\n";

/*
 * send - run miltermux-send against miltermux with the sample message
 * and the given extra flags (NULL-terminated); returns its output and
 * sets *code to its exit status.
 */
static char *
send_msg(struct env *e, int *code, ...)
{
	const char	*argv[MAX_ARGS];
	char		*eml = h_xasprintf("%s/msg.eml", h_tmpdir());
	char		*spec = h_xstrdup(e->mux_spec);
	char		*out = NULL;
	const char	*a;
	size_t		 k = 0;
	int		 status = 0;
	va_list		 ap;

	cr_assert_eq(h_write_file(eml, sample), 0);
	argv[k++] = BIN("miltermux-send");
	argv[k++] = "-s";
	argv[k++] = spec;
	argv[k++] = "-f";
	argv[k++] = "<alice@example.org>";
	va_start(ap, code);
	while ((a = va_arg(ap, const char *)) != NULL)
		argv[k++] = a;
	va_end(ap);
	argv[k++] = eml;
	argv[k] = NULL;
	cr_assert_eq(h_run(argv, 60, &out, &status), 0);
	cr_assert(WIFEXITED(status));
	*code = WEXITSTATUS(status);
	free(eml);
	free(spec);
	return out;
}


Test(proxy, all_continue_passes_the_message, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { NULL }, NULL }, { "b", { NULL }, NULL },
		{ "c", { NULL }, NULL },
	};
	char		*out, *log;
	int		 code;

	env_setup(&e, ups, 3, NULL, 0);
	out = send_msg(&e, &code, "-r", "<bob@example.net>", NULL);
	cr_assert_eq(code, 0, "%s", out);
	HAS(out, "eom: continue");
	HAS(out, "result: accept");
	log = env_wait_log(&e, "merged continue");
	HAS(log, "a=continue");
	HAS(log, "b=continue");
	HAS(log, "c=continue");
	HAS(log, "merged continue; 0 modifications applied");
	/* Every upstream saw every stage. */
	for (size_t i = 0; i < 3; i++) {
		char	*ul = h_read_file(e.up_log[i]);

		HAS(ul, " connect ");
		HAS(ul, " helo localhost");
		HAS(ul, " envfrom <alice@example.org>");
		HAS(ul, " envrcpt <bob@example.net>");
		HAS(ul, " header Subject: original subject");
		HAS(ul, " eoh");
		HAS(ul, " body ");
		HAS(ul, " eom");
		free(ul);
	}
}

Test(proxy, reject_with_custom_text_reaches_the_mta, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { NULL }, NULL },
		{ "b", { "--verdict", "envfrom=reject", "--reply",
		    "envfrom=550 5.7.1 Sender refused by policy", NULL },
		    NULL },
	};
	char		*out;
	int		 code;

	env_setup(&e, ups, 2, NULL, 0);
	out = send_msg(&e, &code, "-r", "<bob@example.net>", NULL);
	cr_assert_eq(code, 1, "%s", out);
	HAS(out, "envfrom <alice@example.org>: reject "
	    "\"550 5.7.1 Sender refused by policy\"");
	HAS(env_wait_log(&e, "merged reject"), "b=reject");
}

Test(proxy, multiline_reply_reaches_the_mta_unchanged, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--verdict", "data=tempfail", "--reply",
		    "data=451 4.7.1 first line\\nsecond line", NULL }, NULL },
	};
	char		*out;
	int		 code;

	env_setup(&e, ups, 1, NULL, 0);
	out = send_msg(&e, &code, "-r", "<bob@example.net>", NULL);
	cr_assert_eq(code, 2, "%s", out);
	HAS(out, "data: tempfail \"451-4.7.1 first line\\r\\n451 4.7.1 "
	    "second line\"");
}

Test(proxy, reject_beats_tempfail, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "t", { "--verdict", "envfrom=tempfail", "--reply",
		    "envfrom=451 4.3.2 try later", NULL }, NULL },
		{ "r", { "--verdict", "envfrom=reject", "--reply",
		    "envfrom=554 5.7.1 no way", "--delay", "envfrom=100",
		    NULL }, NULL },
	};
	char		*out;
	int		 code;

	env_setup(&e, ups, 2, NULL, 0);
	out = send_msg(&e, &code, "-r", "<bob@example.net>", NULL);
	cr_assert_eq(code, 1, "%s", out);
	HAS(out, "reject \"554 5.7.1 no way\"");
	HAS(env_wait_log(&e, "merged reject"), "t=tempfail");
}

Test(proxy, tempfail_alone_gives_4xx, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { NULL }, NULL },
		{ "t", { "--verdict", "eom=tempfail", "--reply",
		    "eom=452 4.3.1 scanner busy", NULL }, NULL },
	};
	char		*out;
	int		 code;

	env_setup(&e, ups, 2, NULL, 0);
	out = send_msg(&e, &code, "-r", "<bob@example.net>", NULL);
	cr_assert_eq(code, 2, "%s", out);
	HAS(out, "eom: tempfail \"452 4.3.1 scanner busy\"");
}

Test(proxy, recipient_reject_drops_only_that_recipient, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--reject-rcpt", "<nobody@example.net>", "--reply",
		    "envrcpt=550 5.1.1 No such user here", NULL }, NULL },
		{ "b", { "--delrcpt", "<nobody@example.net>", NULL }, NULL },
	};
	char		*out, *bl;
	int		 code;

	env_setup(&e, ups, 2, NULL, 0);
	out = send_msg(&e, &code, "-r", "<bob@example.net>", "-r",
	    "<nobody@example.net>", "-r", "<carol@example.net>", NULL);
	cr_assert_eq(code, 0, "%s", out);
	HAS(out, "envrcpt <bob@example.net>: continue");
	HAS(out, "envrcpt <nobody@example.net>: reject "
	    "\"550 5.1.1 No such user here\"");
	HAS(out, "envrcpt <carol@example.net>: continue");
	HAS(out, "eom: continue");
	/* b saw the recipient the MTA refused, and its delrcpt for it is
	 * dropped: the MTA never accepted it. */
	bl = h_read_file(e.up_log[1]);
	HAS(bl, "envrcpt <nobody@example.net>");
	HASNT(out, "delrcpt");
}

Test(proxy, headers_added_by_two_upstreams_are_both_present,
    .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--addheader", "X-From-A:alpha", NULL }, NULL },
		{ "b", { "--addheader", "X-From-B:beta", NULL }, NULL },
	};
	char		*out, *pa, *pb;
	int		 code;

	env_setup(&e, ups, 2, NULL, 0);
	out = send_msg(&e, &code, "-r", "<bob@example.net>", NULL);
	cr_assert_eq(code, 0, "%s", out);
	pa = strstr(out, "addheader X-From-A: alpha");
	pb = strstr(out, "addheader X-From-B: beta");
	cr_assert(pa != NULL && pb != NULL, "%s", out);
	cr_assert(pa < pb, "config order decides: %s", out);
	HAS(env_wait_log(&e, "modifications applied"),
	    "merged continue; 2 modifications applied");
}

Test(proxy, same_name_header_edits_are_rebased, .timeout = 60)
{
	struct env	 e;
	/* a deletes X-Dup #1; b changes X-Dup #2 and inserts a header at
	 * the top.  Each meant the original headers. */
	struct up	 ups[] = {
		{ "a", { "--chgheader", "1:X-Dup:", NULL }, NULL },
		{ "b", { "--chgheader", "2:X-Dup:TWO", "--insheader",
		    "1:X-Dup:zero", NULL }, NULL },
	};
	char		*out;
	int		 code;

	env_setup(&e, ups, 2, NULL, 0);
	out = send_msg(&e, &code, "-r", "<bob@example.net>", NULL);
	cr_assert_eq(code, 0, "%s", out);
	/* Original list (milters' view): From To Subject X-Dup:one
	 * X-Dup:two X-Dup:three.  b's insert goes first (before From,
	 * index 1); then changes in descending order, each shifted by the
	 * one same-name header now above it: X-Dup #3 (orig #2) -> TWO,
	 * X-Dup #2 (orig #1) deleted. */
	HAS(out, "modifications:\n"
	    "  insheader 1 X-Dup: zero\n"
	    "  chgheader 3 X-Dup: TWO\n"
	    "  chgheader 2 X-Dup (delete)\n");
}

Test(proxy, change_of_an_absent_header_adds_it, .timeout = 60)
{
	struct env	 e;
	/* a negotiates CHGHDRS only (testmilter asks for just what its
	 * modifications need) and changes a header the message does not
	 * have: the MTA adds it (PROTOCOL.md 5.1), so must the proxy. */
	struct up	 ups[] = {
		{ "a", { "--chgheader", "1:X-Absent:added by a change",
		    NULL }, NULL },
	};
	char		*out, *al;
	int		 code;

	env_setup(&e, ups, 1, NULL, 0);
	out = send_msg(&e, &code, "-r", "<bob@example.net>", NULL);
	cr_assert_eq(code, 0, "%s", out);
	al = h_read_file(e.up_log[0]);
	HAS(al, "actions=0x10 ");
	HAS(out, "modifications:\n"
	    "  addheader X-Absent: added by a change\n");
	HAS(env_wait_log(&e, "modifications applied"),
	    "merged continue; 1 modification applied");
	HASNT(env_mux_log(&e), "the MTA refused");
	free(al);
}

Test(proxy, envelope_body_and_quarantine_changes_are_applied,
    .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "env", { "--addrcpt", "<added@example.net>",
		    "--addrcpt-par", "<par@example.net> NOTIFY=NEVER",
		    "--delrcpt", "<bob@example.net>",
		    "--chgfrom", "<bounce@example.org> RET=HDRS", NULL },
		    NULL },
		{ "body", { "--replbody", "replaced body\\n",
		    "--quarantine", "suspicious attachment", NULL }, NULL },
	};
	char		*out;
	int		 code;

	env_setup(&e, ups, 2, NULL, 0);
	out = send_msg(&e, &code, "-r", "<bob@example.net>", NULL);
	cr_assert_eq(code, 0, "%s", out);
	HAS(out, "  chgfrom <bounce@example.org> RET=HDRS\n");
	HAS(out, "  delrcpt <bob@example.net>\n");
	HAS(out, "  addrcpt <added@example.net>\n");
	HAS(out, "  addrcpt_par <par@example.net> NOTIFY=NEVER\n");
	HAS(out, "  replbody (15 bytes) replaced body\\r\\n\n");
	HAS(out, "  quarantine suspicious attachment\n");
}

Test(proxy, conflicting_changes_keep_the_first_upstream, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "first", { "--chgheader", "1:Subject:from first",
		    "--chgfrom", "<first@example.org>", NULL }, NULL },
		{ "second", { "--chgheader", "1:Subject:from second",
		    "--chgfrom", "<second@example.org>", NULL }, NULL },
	};
	char		*out, *log;
	int		 code;

	env_setup(&e, ups, 2, NULL, 0);
	out = send_msg(&e, &code, "-r", "<bob@example.net>", NULL);
	cr_assert_eq(code, 0, "%s", out);
	HAS(out, "chgheader 1 Subject: from first");
	HASNT(out, "from second");
	HAS(out, "chgfrom <first@example.org>");
	HASNT(out, "<second@example.org>");
	log = env_wait_log(&e, "conflict: sender");
	HAS(log, "conflict: header Subject changed by first and second; "
	    "first wins");
	HAS(log, "conflict: sender changed by first and second; "
	    "first wins");
}

Test(proxy, down_upstream_gets_its_on_failure, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--addheader", "X-A:1", NULL }, NULL },
		{ "down", { NULL }, "\"on_failure\": \"accept\"" },
	};
	struct up	 ups2[] = {
		{ "a", { NULL }, NULL },
		{ "down", { NULL }, "\"on_failure\": \"tempfail\"" },
	};
	char		*out, *log;
	int		 code;

	env_setup(&e, ups, 2, NULL, 0);
	out = send_msg(&e, &code, "-r", "<bob@example.net>", NULL);
	cr_assert_eq(code, 0, "on_failure accept ignores it:\n%s", out);
	HAS(out, "addheader X-A: 1");
	log = env_wait_log(&e, "upstream down:");
	HAS(log, "upstream down: negotiate: connect");
	HAS(log, "applying on_failure=accept");
	h_stop(e.mux, 5, NULL);

	env_start_mux(&e, ups2, 2, NULL, 0);
	out = send_msg(&e, &code, "-r", "<bob@example.net>", NULL);
	cr_assert_eq(code, 2, "on_failure tempfail:\n%s", out);
	HAS(out, "connect 127.0.0.1: tempfail");
}

Test(proxy, slow_upstream_gets_its_on_failure, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--addheader", "X-A:1", NULL }, NULL },
		{ "slow", { "--delay", "eom=5000", "--addheader", "X-S:1",
		    NULL }, "\"on_failure\": \"accept\", "
		    "\"timeouts\": { \"content\": 0.5 }" },
	};
	char		*out, *log;
	double		 t0;
	int		 code;

	env_setup(&e, ups, 2, NULL, 0);
	t0 = h_now();
	out = send_msg(&e, &code, "-r", "<bob@example.net>", NULL);
	cr_assert_lt(h_now() - t0, 4.0, "the deadline bounds the stage");
	cr_assert_eq(code, 0, "%s", out);
	HAS(out, "addheader X-A: 1");
	HASNT(out, "X-S");
	log = env_wait_log(&e, "upstream slow:");
	HAS(log, "upstream slow: eom: no answer in time");
	HAS(log, "applying on_failure=accept");
}

Test(proxy, reject_is_decisive_without_waiting_for_the_rest,
    .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "fast", { "--verdict", "envfrom=reject", NULL }, NULL },
		{ "slow", { "--delay", "envfrom=2000", NULL }, NULL },
	};
	char		*out;
	double		 t0, dt;
	int		 code;

	env_setup(&e, ups, 2, NULL, 0);
	t0 = h_now();
	out = send_msg(&e, &code, "-r", "<bob@example.net>", NULL);
	dt = h_now() - t0;
	cr_assert_eq(code, 1, "%s", out);
	cr_assert_lt(dt, 1.5, "reject took %.3f s: it must not wait for the "
	    "2 s upstream", dt);
}

Test(proxy, eom_fan_out_is_parallel, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--delay", "eom=300", NULL }, NULL },
		{ "b", { "--delay", "eom=300", NULL }, NULL },
		{ "c", { "--delay", "eom=300", NULL }, NULL },
	};
	char		*out, *p;
	double		 ms;
	int		 code;

	env_setup(&e, ups, 3, NULL, 0);
	out = send_msg(&e, &code, "-r", "<bob@example.net>", "--json", NULL);
	cr_assert_eq(code, 0, "%s", out);
	p = strstr(out, "\"stage\": \"eom\"");
	cr_assert(p != NULL, "%s", out);
	p = strstr(p, "\"ms\": ");
	cr_assert(p != NULL, "%s", out);
	ms = strtod(p + 6, NULL);
	/* Sequential would be 900 ms. */
	cr_assert(ms >= 295 && ms < 600, "three 300 ms upstreams took %.1f "
	    "ms at end of message", ms);
	fprintf(stderr, "parallelism: 3 x 300 ms at eom took %.1f ms "
	    "(%.2f x one upstream)\n", ms, ms / 300);
}

Test(proxy, check_config_rejects_a_bad_file, .timeout = 30)
{
	char		*path = h_path("bad.json"), *out = NULL;
	const char	*argv[] = { BIN("miltermux"), "-n", "-c", NULL, NULL };
	int		 status;

	cr_assert_eq(h_write_file(path, "{\n  \"threads\": 0,\n"
	    "  \"upstreams\": []\n}\n"), 0);
	argv[3] = path;
	cr_assert_eq(h_run(argv, 20, &out, &status), 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 78, "%s", out);
	HAS(out, "bad.json:2:14: threads:");
	HAS(out, "upstreams");
}

Test(proxy, driven_by_miltertest, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--addheader", "X-Checked:yes", NULL }, NULL },
		{ "b", { "--reject-rcpt", "<spam@example.net>", "--reply",
		    "envrcpt=550 5.7.1 Not here", NULL }, NULL },
	};
	char		*script = h_path("t.lua"), *lua, *out = NULL;
	const char	*argv[] = { "miltertest", "-s", NULL, NULL };
	int		 status;

	if (access("/usr/bin/miltertest", X_OK) != 0)
		cr_skip_test("miltertest is not installed");
	env_setup(&e, ups, 2, NULL, 0);
	lua = h_xasprintf(
	    "local conn = mt.connect(\"unix:%s\")\n"
	    "assert(conn, \"connect\")\n"
	    "assert(mt.conninfo(conn, \"client.example\", \"192.0.2.1\") == nil)\n"
	    "assert(mt.getreply(conn) == SMFIR_CONTINUE, \"conninfo\")\n"
	    "assert(mt.helo(conn, \"client.example\") == nil)\n"
	    "assert(mt.getreply(conn) == SMFIR_CONTINUE, \"helo\")\n"
	    "mt.macro(conn, SMFIC_MAIL, \"i\", \"MT12345\")\n"
	    "assert(mt.mailfrom(conn, \"<a@example.org>\") == nil)\n"
	    "assert(mt.getreply(conn) == SMFIR_CONTINUE, \"mail\")\n"
	    "assert(mt.rcptto(conn, \"<spam@example.net>\") == nil)\n"
	    "assert(mt.getreply(conn) == SMFIR_REPLYCODE, \"rcpt reject\")\n"
	    "assert(mt.rcptto(conn, \"<ok@example.net>\") == nil)\n"
	    "assert(mt.getreply(conn) == SMFIR_CONTINUE, \"rcpt ok\")\n"
	    "assert(mt.header(conn, \"Subject\", \"hello\") == nil)\n"
	    "assert(mt.getreply(conn) == SMFIR_CONTINUE, \"header\")\n"
	    "assert(mt.eoh(conn) == nil)\n"
	    "assert(mt.getreply(conn) == SMFIR_CONTINUE, \"eoh\")\n"
	    "assert(mt.bodystring(conn, \"hi\\r\\n\") == nil)\n"
	    "assert(mt.getreply(conn) == SMFIR_CONTINUE, \"body\")\n"
	    "assert(mt.eom(conn) == nil)\n"
	    "assert(mt.getreply(conn) == SMFIR_CONTINUE, \"eom\")\n"
	    "assert(mt.eom_check(conn, MT_HDRADD, \"X-Checked\", \"yes\"), "
	    "\"header added\")\n"
	    "mt.disconnect(conn)\n", e.mux_sock);
	cr_assert_eq(h_write_file(script, lua), 0);
	argv[2] = script;
	cr_assert_eq(h_run(argv, 40, &out, &status), 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "miltertest failed:\n%s\nmiltermux log:\n%s", out, env_mux_log(&e));
}

/* load - miltermux-send in load mode with the given flags (NULL-ended);
 * returns its JSON output and sets *code to its exit status. */
static char *
load(int *code, ...)
{
	const char	*argv[MAX_ARGS];
	char		*out = NULL;
	const char	*a;
	size_t		 k = 0;
	int		 status = 0;
	va_list		 ap;

	argv[k++] = BIN("miltermux-send");
	argv[k++] = "--json";
	va_start(ap, code);
	while ((a = va_arg(ap, const char *)) != NULL)
		argv[k++] = a;
	va_end(ap);
	argv[k] = NULL;
	cr_assert_eq(h_run(argv, 60, &out, &status), 0);
	cr_assert(WIFEXITED(status));
	*code = WEXITSTATUS(status);
	return out;
}

/* json_num - the number after "key": in a JSON text, or -1 */
static double
json_num(const char *json, const char *key)
{
	char		*k = h_xasprintf("\"%s\": ", key);
	const char	*p = strstr(json, k);
	double		 v = p != NULL ? strtod(p + strlen(k), NULL) : -1;

	free(k);
	return v;
}

Test(proxy, load_mode_runs_many_sessions_through_miltermux, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { NULL }, NULL },
		{ "b", { "--addheader", "X-B:1", NULL }, NULL },
	};
	char		*out;
	int		 code;

	env_setup(&e, ups, 2, NULL, 1);
	out = load(&code, "-s", e.mux_spec, "--count", "200",
	    "--concurrency", "20", "--per-session", "2", "--rcpts", "2",
	    "--size", "5000", NULL);
	cr_assert_eq(code, 0, "%s", out);
	HAS(out, "\"passed\": 200, \"rejected\": 0, \"tempfailed\": 0, "
	    "\"discarded\": 0, \"failed\": 0");
	HAS(out, "\"errors\": 0,");
	HAS(out, "\"sessions\": 100,");
	cr_assert_eq(json_num(out, "n"), 200, "%s", out);
}

Test(proxy, load_mode_chain_stops_at_the_first_reject, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { NULL }, NULL },
		{ "b", { "--verdict", "envfrom=reject", NULL }, NULL },
		{ "c", { NULL }, NULL },
	};
	char		*out, *sa, *sb, *sc, *logc;
	int		 code;

	env_start_upstreams(&e, ups, 3);
	sa = h_xasprintf("unix:%s/a.sock", h_tmpdir());
	sb = h_xasprintf("unix:%s/b.sock", h_tmpdir());
	sc = h_xasprintf("unix:%s/c.sock", h_tmpdir());
	out = load(&code, "--chain", "-s", sa, "-s", sb, "-s", sc,
	    "--count", "30", "--concurrency", "5", NULL);
	cr_assert_eq(code, 0, "%s", out);
	HAS(out, "\"chain\": true");
	HAS(out, "\"passed\": 0, \"rejected\": 30,");
	/* c was connected to, but never asked about a sender. */
	logc = h_read_file(e.up_log[2]);
	HAS(logc, " helo ");
	HASNT(logc, " envfrom ");
}

/*
 * --fanout asks every milter of a stage at once (the bench's control for
 * a fan-out with no proxy): the milter after a refusing one is asked
 * too, and the strictest refusal decides (reject over tempfail).
 */
Test(proxy, load_mode_fanout_asks_all_and_the_strictest_refusal_wins,
    .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--verdict", "envfrom=tempfail", NULL }, NULL },
		{ "b", { "--verdict", "envfrom=reject", NULL }, NULL },
		{ "c", { NULL }, NULL },
	};
	char		*out, *sa, *sb, *sc, *logc;
	int		 code;

	env_start_upstreams(&e, ups, 3);
	sa = h_xasprintf("unix:%s/a.sock", h_tmpdir());
	sb = h_xasprintf("unix:%s/b.sock", h_tmpdir());
	sc = h_xasprintf("unix:%s/c.sock", h_tmpdir());
	out = load(&code, "--fanout", "-s", sa, "-s", sb, "-s", sc,
	    "--count", "30", "--concurrency", "5", NULL);
	cr_assert_eq(code, 0, "%s", out);
	HAS(out, "\"chain\": false");
	HAS(out, "\"fanout\": true");
	HAS(out, "\"passed\": 0, \"rejected\": 30,");
	HAS(out, "\"errors\": 0,");
	/* Unlike a chain, c was asked about every sender. */
	logc = h_read_file(e.up_log[2]);
	cr_assert_eq(h_count(logc, " envfrom "), 30, "%s", logc);
	free(out);
	out = load(&code, "--chain", "--fanout", "-s", sa, "--count", "1",
	    NULL);
	cr_assert_eq(code, 64, "--chain with --fanout: exit %d", code);
}

/*
 * libmilter writes modifications and the verdict separately; over TCP
 * with Nagle's algorithm that costs the MTA's 40 ms delayed ACK per
 * message with modifications.  miltermux sets TCP_NODELAY on its
 * listening socket, which the accepted ones inherit.
 */
Test(proxy, modifications_over_tcp_do_not_wait_for_delayed_ack,
    .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--addheader", "X-A:1", "--addheader", "X-B:2",
		    "--addheader", "X-C:3", NULL }, NULL },
	};
	char		*out;
	double		 p50;
	int		 code;

	env_setup(&e, ups, 1, NULL, 1);
	out = load(&code, "-s", e.mux_spec, "--count", "20",
	    "--per-session", "20", NULL);
	cr_assert_eq(code, 0, "%s", out);
	p50 = json_num(out, "p50");
	cr_assert(p50 >= 0 && p50 < 30, "median message took %.1f ms: the "
	    "40 ms delayed-ACK stall is back?\n%s", p50, out);
}

/*
 * The other direction: a libmilter filter on TCP writes its
 * modifications and verdict with Nagle's algorithm on; the client
 * (upstream.c, in miltermux and miltermux-send) acknowledges at once
 * while an answer is incomplete, so the filter need not wait 40 ms.
 */
Test(proxy, modifying_tcp_upstream_is_acknowledged_at_once, .timeout = 60)
{
	const char	*argv[MAX_ARGS];
	char		*spec, *out;
	double		 p50;
	int		 port = h_free_port(), code;
	size_t		 k = 0;

	cr_assert(port > 0);
	spec = h_xasprintf("inet:%d@127.0.0.1", port);
	argv[k++] = BIN("tests/milters/testmilter");
	argv[k++] = "-p";
	argv[k++] = spec;
	argv[k++] = "--addheader";
	argv[k++] = "X-A:1";
	argv[k++] = "--addheader";
	argv[k++] = "X-B:2";
	argv[k] = NULL;
	cr_assert(h_spawn(argv, NULL) > 0);
	cr_assert_eq(h_wait_port(port, 10), 0);
	out = load(&code, "-s", spec, "--count", "20", "--per-session", "20",
	    NULL);
	cr_assert_eq(code, 0, "%s", out);
	p50 = json_num(out, "p50");
	cr_assert(p50 >= 0 && p50 < 30, "median message took %.1f ms: the "
	    "40 ms delayed-ACK stall is back?\n%s", p50, out);
}
