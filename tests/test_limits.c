/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_limits - per-upstream conditions (apply_if, skip_if), actions
 * allow-list and verdict map, end to end: the real miltermux binary,
 * real libmilter upstreams (testmilter, each logging every callback it
 * gets), and a real private Postfix for the client and domain
 * conditions.  Authentication, macros and size are driven through the
 * raw MTA client (tests/mtaclient), which sends {auth_authen} and the
 * SIZE= parameter as Postfix would after SASL: a SASL set-up inside the
 * private Postfix would cost more than it shows.
 *
 * Each test checks the exact SMTP or milter answers, what each upstream
 * received (its own log: a skipped one received nothing of what it was
 * kept out of, a never-applicable one was never even connected) and
 * the decision log's words.
 *
 * Concurrency: Criterion runs each test in its own process.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <jansson.h>

#include "fixture.h"
#include "harness.h"
#include "mtaclient.h"

#define REPLY_WAIT	10

/* up_log - what upstream i received so far ("" if it never wrote) */
static char *
up_log(const struct env *e, size_t i)
{
	char	*s = h_read_file(e->up_log[i]);

	return s != NULL ? s : h_xstrdup("");
}

/* line_with - a copy of the first line of log holding needle */
static char *
line_with(const char *log, const char *needle)
{
	const char	*p = strstr(log, needle), *b, *end;

	cr_assert_not_null(p, "no line with \"%s\" in:\n%s", needle, log);
	for (b = p; b > log && b[-1] != '\n'; b--)
		;
	end = strchr(p, '\n');
	return strndup(b, end != NULL ? (size_t)(end - b) : strlen(b));
}

static void
smtp(struct h_smtp *s, const char *line, int want)
{
	char	*reply = NULL;
	int	 code;

	code = h_smtp_cmd(s, line, &reply);
	cr_assert_eq(code, want, "%s: got %d: %s", line, code,
	    reply != NULL ? reply : strerror(-code));
	free(reply);
}

/* smtp_data - DATA with a message; the queue id of the 250 */
static char *
smtp_data(struct h_smtp *s, const char *subject)
{
	char	*msg, *reply = NULL, *p, *qid;
	int	 code;

	msg = h_xasprintf("From: <x@example.org>\nSubject: %s\n\nbody\n",
	    subject);
	code = h_smtp_data(s, msg, &reply);
	cr_assert_eq(code, 250, "end of data: %d: %s", code,
	    reply != NULL ? reply : "");
	p = strstr(reply, "queued as ");
	cr_assert_not_null(p, "no queue id in \"%s\"", reply);
	p += strlen("queued as ");
	qid = strndup(p, strcspn(p, " \r\n"));
	free(reply);
	free(msg);
	return qid;
}

/*
 * Through Postfix from 127.0.0.1: "lan" applies only to 10/8 and ::1,
 * "loc" is skipped for 127/8: neither is ever connected.  "org" applies
 * to mail from example.org only, "net" to recipients in example.net
 * only.  Message 1 (example.org to one example.net and one example.com
 * recipient): org takes part, net sees only its recipient.  Message 2
 * of the same session (example.com to example.com): org gets none of
 * it, net only MAIL and then an abort.
 */
Test(limits, conditions_through_postfix, .timeout = 120, .fini = env_pf_fini)
{
	static struct up ups[] = {
		{ "all", { "--tag", NULL }, NULL },
		{ "lan", { "--tag", NULL }, "\"apply_if\": {\"client\": "
		    "[\"10.0.0.0/8\", \"::1/128\"]}" },
		{ "loc", { "--tag", NULL }, "\"skip_if\": {\"client\": "
		    "[\"127.0.0.0/8\"]}" },
		{ "org", { "--tag", NULL }, "\"apply_if\": "
		    "{\"sender_domain\": [\"example.org\"]}" },
		{ "net", { "--tag", NULL }, "\"apply_if\": "
		    "{\"rcpt_domain\": [\"example.net\"]}" },
	};
	struct env	 e;
	struct h_smtp	 s;
	char		*spec, *reply = NULL, *q1, *q2, *log, *l, *want, *m;
	int		 code, rc;

	env_setup(&e, ups, 5, NULL, 1);
	spec = h_xasprintf("inet:127.0.0.1:%d", e.mux_port);
	rc = h_postfix_start(&env_pf, spec, NULL);
	free(spec);
	if (rc == -EPERM || rc == -ENOENT)
		cr_skip_test("no private Postfix here: %s", strerror(-rc));
	cr_assert_eq(rc, 0, "h_postfix_start: %s", strerror(-rc));
	env_pf_started = true;

	code = h_smtp_open(&s, "127.0.0.1", env_pf.smtpd_port, &reply);
	cr_assert_eq(code, 220, "greeting: %d", code);
	free(reply);
	smtp(&s, "EHLO client.example.test", 250);
	smtp(&s, "MAIL FROM:<alice@example.org>", 250);
	smtp(&s, "RCPT TO:<bob@example.net>", 250);
	smtp(&s, "RCPT TO:<carol@example.com>", 250);
	q1 = smtp_data(&s, "one");
	smtp(&s, "MAIL FROM:<dave@example.com>", 250);
	smtp(&s, "RCPT TO:<carol@example.com>", 250);
	q2 = smtp_data(&s, "two");
	smtp(&s, "QUIT", 221);
	h_smtp_close(&s);

	cr_assert_eq(h_sink_wait_messages(&env_pf, 2, 20), 2);
	m = h_sink_message(&env_pf, 0);
	HAS(m, "X-Testmilter-all: seen");
	HAS(m, "X-Testmilter-org: seen");
	HAS(m, "X-Testmilter-net: seen");
	HASNT(m, "X-Testmilter-lan");
	HASNT(m, "X-Testmilter-loc");
	free(m);
	m = h_sink_message(&env_pf, 1);
	HAS(m, "X-Testmilter-all: seen");
	HASNT(m, "X-Testmilter-org");
	HASNT(m, "X-Testmilter-net");
	HASNT(m, "X-Testmilter-lan");
	HASNT(m, "X-Testmilter-loc");
	free(m);

	want = h_xasprintf("%s: message (", q2);
	log = env_wait_log(&e, want);
	free(want);
	want = h_xasprintf("%s: message (", q1);
	l = line_with(log, want);
	HAS(l, " lan=skipped (apply_if: client 127.0.0.1)/0ms ");
	HAS(l, " loc=skipped (skip_if: client 127.0.0.1)/0ms ");
	HAS(l, " net=continue (1 of 2 recipients shown (apply_if: "
	    "rcpt_domain example.com))/");
	HASNT(l, "org=skipped");
	free(l);
	free(want);
	want = h_xasprintf("%s: message (", q2);
	l = line_with(log, want);
	HAS(l, " lan=skipped (apply_if: client 127.0.0.1)/0ms ");
	HAS(l, " org=skipped (apply_if: sender_domain example.com)/0ms ");
	HAS(l, " net=skipped (apply_if: rcpt_domain: no recipient "
	    "matched)/");
	free(l);
	free(want);
	free(log);

	/* Never connected: not even negotiated. */
	log = up_log(&e, 1);
	cr_assert_eq(h_count(log, " negotiate"), 0, "lan got:\n%s", log);
	free(log);
	log = up_log(&e, 2);
	cr_assert_eq(h_count(log, " negotiate"), 0, "loc got:\n%s", log);
	free(log);
	/* org: all of message 1, nothing of message 2. */
	log = up_log(&e, 3);
	cr_assert_eq(h_count(log, " envfrom"), 1, "org got:\n%s", log);
	cr_assert_eq(h_count(log, " eom"), 1, "org got:\n%s", log);
	HAS(log, "alice@example.org");
	HASNT(log, "dave@");
	free(log);
	/* net: MAIL of both, only its own recipient, one end. */
	log = up_log(&e, 4);
	cr_assert_eq(h_count(log, " envfrom"), 2, "net got:\n%s", log);
	cr_assert_eq(h_count(log, " envrcpt"), 1, "net got:\n%s", log);
	HAS(log, "bob@example.net");
	HASNT(log, "carol@");
	cr_assert_eq(h_count(log, " eom"), 1, "net got:\n%s", log);
	cr_assert_geq(h_count(log, " abort"), 1, "net got:\n%s", log);
	free(log);
	log = up_log(&e, 0);
	cr_assert_eq(h_count(log, " eom"), 2, "all got:\n%s", log);
	free(log);
	free(q1);
	free(q2);
	env_stop(&e, 1.0);
	env_pf_passed = true;
}

static void
open_mta(struct mta *m, const struct env *e)
{
	cr_assert_eq(mta_open(m, e->mux_spec, REPLY_WAIT), 0);
	cr_assert_eq(mta_negotiate(m, MA_ALL, MP_ALL_V6), 0);
}

static void
expect(const char *what, int rc, struct mta_result *r, enum verdict want)
{
	cr_assert_eq(rc, 0, "%s: no answer (%d)", what, rc);
	cr_assert_eq(r->verdict, want, "%s: verdict %s, want %s", what,
	    proto_verdict_name(r->verdict), proto_verdict_name(want));
}

/* message - header, end of headers, body, end of message; the result
 * of the end is left in *r */
static void
message(struct mta *m, struct mta_result *r)
{
	struct mta_result	 x;

	cr_assert_eq(mta_header(m, "Subject", "hi", 2, &x), 0);
	mta_result_fini(&x);
	cr_assert_eq(mta_eoh(m, &x), 0);
	mta_result_fini(&x);
	cr_assert_eq(mta_body(m, "body\r\n", 6, &x), 0);
	mta_result_fini(&x);
	cr_assert_eq(mta_eom(m, r), 0);
}

/*
 * The raw MTA sends {daemon_name} at connect and {auth_authen} at MAIL
 * as Postfix does: "orig" applies to the ORIGINATING daemon only (a
 * session-time macro: not connected otherwise), "auth" to authenticated
 * senders, "big" is skipped for a declared SIZE= over 1000.
 */
Test(limits, auth_macro_and_size_through_raw_mta, .timeout = 60)
{
	static struct up ups[] = {
		{ "auth", { NULL }, "\"apply_if\": {\"auth\": true}" },
		{ "big", { NULL }, "\"skip_if\": {\"size_over\": 1000}" },
		{ "orig", { NULL }, "\"apply_if\": {\"macro\": "
		    "{\"{daemon_name}\": \"ORIGINATING\"}}" },
	};
	static const char *const c_orig[] = { "{daemon_name}",
					    "ORIGINATING" };
	static const char *const c_mta[] = { "{daemon_name}", "MTA" };
	static const char *const m_auth[] = { "i", "Q1", "{auth_authen}",
					    "alice" };
	static const char *const m_anon[] = { "i", "Q2" };
	static const char *const m_anon3[] = { "i", "Q3" };
	static const char *const from1[] = { "<a@example.org>", "SIZE=5000" };
	static const char *const from2[] = { "<b@example.org>", "SIZE=10" };
	static const char *const rcpt[] = { "<r@example.net>" };
	struct env		 e;
	struct mta		 m;
	struct mta_result	 r;
	char			*log, *l;

	env_setup(&e, ups, 3, NULL, 0);
	open_mta(&m, &e);
	cr_assert_eq(mta_macros(&m, MC_CONNECT, c_orig, 1), 0);
	expect("connect", mta_connect(&m, "client.example", "192.0.2.7", &r),
	    &r, VERDICT_CONTINUE);
	cr_assert_eq(mta_macros(&m, MC_MAIL, m_auth, 2), 0);
	expect("mail 1", mta_mail(&m, from1, 2, &r), &r, VERDICT_CONTINUE);
	expect("rcpt 1", mta_rcpt(&m, rcpt, 1, &r), &r, VERDICT_CONTINUE);
	message(&m, &r);
	expect("eom 1", 0, &r, VERDICT_CONTINUE);
	mta_result_fini(&r);
	cr_assert_eq(mta_macros(&m, MC_MAIL, m_anon, 1), 0);
	expect("mail 2", mta_mail(&m, from2, 2, &r), &r, VERDICT_CONTINUE);
	expect("rcpt 2", mta_rcpt(&m, rcpt, 1, &r), &r, VERDICT_CONTINUE);
	message(&m, &r);
	expect("eom 2", 0, &r, VERDICT_CONTINUE);
	mta_result_fini(&r);
	cr_assert_eq(mta_quit(&m), 0);
	mta_close(&m);

	/* A second session from the MTA's other daemon. */
	open_mta(&m, &e);
	cr_assert_eq(mta_macros(&m, MC_CONNECT, c_mta, 1), 0);
	expect("connect", mta_connect(&m, "client.example", "192.0.2.7", &r),
	    &r, VERDICT_CONTINUE);
	cr_assert_eq(mta_macros(&m, MC_MAIL, m_anon3, 1), 0);
	expect("mail 3", mta_mail(&m, from2, 2, &r), &r, VERDICT_CONTINUE);
	expect("rcpt 3", mta_rcpt(&m, rcpt, 1, &r), &r, VERDICT_CONTINUE);
	message(&m, &r);
	expect("eom 3", 0, &r, VERDICT_CONTINUE);
	mta_result_fini(&r);
	cr_assert_eq(mta_quit(&m), 0);
	mta_close(&m);

	log = env_wait_log(&e, "Q2: message (");
	free(log);
	log = env_wait_log(&e, "Q3: message (");
	l = line_with(log, "Q1: message (");
	HAS(l, " big=skipped (skip_if: size 5000)/0ms ");
	HASNT(l, "auth=skipped");
	HASNT(l, "orig=skipped");
	free(l);
	l = line_with(log, "Q2: message (");
	HAS(l, " auth=skipped (apply_if: auth none)/0ms ");
	HASNT(l, "big=skipped");
	free(l);
	l = line_with(log, "Q3: message (");
	HAS(l, ".conn-2): ");
	HAS(l, " auth=skipped (apply_if: auth none)/0ms ");
	HAS(l, " orig=skipped (apply_if: macro {daemon_name}=MTA)/0ms;");
	free(l);
	free(log);

	log = up_log(&e, 0);
	cr_assert_eq(h_count(log, " envfrom"), 1, "auth got:\n%s", log);
	HAS(log, "<a@example.org>");
	cr_assert_eq(h_count(log, " eom"), 1, "auth got:\n%s", log);
	free(log);
	log = up_log(&e, 1);
	cr_assert_eq(h_count(log, " envfrom"), 2, "big got:\n%s", log);
	HASNT(log, "<a@example.org>");
	cr_assert_eq(h_count(log, " eom"), 2, "big got:\n%s", log);
	free(log);
	/* orig: one session only, both of its messages. */
	log = up_log(&e, 2);
	cr_assert_eq(h_count(log, " negotiate"), 1, "orig got:\n%s", log);
	cr_assert_eq(h_count(log, " eom"), 2, "orig got:\n%s", log);
	free(log);
	env_stop(&e, 0.2);
}

/*
 * "lim" may only add headers: its header change and added recipient
 * are dropped (one log line), and the MTA is not asked for those
 * actions.  "rej"'s recipient reject becomes a tempfail without its
 * 5xx text; "eom"'s end-of-message reject becomes a header.
 */
Test(limits, actions_and_verdicts_through_raw_mta, .timeout = 60)
{
	static struct up ups[] = {
		{ "lim", { "--addheader", "X-Lim:1", "--chgheader",
		    "1:Subject:changed", "--addrcpt", "<extra@example.net>",
		    NULL }, "\"actions\": [\"addheader\"]" },
		{ "rej", { "--reject-rcpt", "<bob@example.net>", "--reply",
		    "envrcpt=550 5.1.1 no such user", NULL },
		    "\"verdicts\": {\"reject\": \"tempfail\"}" },
		{ "eom", { "--verdict", "eom=reject", NULL },
		    "\"verdicts\": {\"reject\": {\"addheader\": "
		    "\"X-Spam-Verdict: reject\"}}" },
	};
	static const char *const m_q[] = { "i", "Q3" };
	static const char *const from[] = { "<a@example.org>" };
	static const char *const bob[] = { "<bob@example.net>" };
	static const char *const carol[] = { "<carol@example.net>" };
	struct env		 e;
	struct mta		 m;
	struct mta_result	 r;
	char			*log, *l;

	env_setup(&e, ups, 3, NULL, 0);
	open_mta(&m, &e);
	/* Asked of the MTA: adding headers (lim's own, eom's map), not
	 * changing them nor adding recipients. */
	cr_assert_neq(m.actions & MA_ADDHDRS, 0u, "actions 0x%x", m.actions);
	cr_assert_eq(m.actions & (MA_CHGHDRS | MA_ADDRCPT | MA_ADDRCPT_PAR),
	    0u, "actions 0x%x", m.actions);
	expect("connect", mta_connect(&m, "client.example", "192.0.2.7", &r),
	    &r, VERDICT_CONTINUE);
	cr_assert_eq(mta_macros(&m, MC_MAIL, m_q, 1), 0);
	expect("mail", mta_mail(&m, from, 1, &r), &r, VERDICT_CONTINUE);
	expect("rcpt bob", mta_rcpt(&m, bob, 1, &r), &r, VERDICT_TEMPFAIL);
	cr_assert_null(r.text, "the 5xx text went with a tempfail: %s",
	    r.text);
	mta_result_fini(&r);
	expect("rcpt carol", mta_rcpt(&m, carol, 1, &r), &r,
	    VERDICT_CONTINUE);
	message(&m, &r);
	expect("eom", 0, &r, VERDICT_CONTINUE);
	cr_assert_eq(r.nmods, 2, "%zu modifications", r.nmods);
	cr_assert_eq(r.mods[0].kind, MOD_ADDHEADER);
	cr_assert_str_eq(r.mods[0].name, "X-Lim");
	cr_assert_str_eq(r.mods[0].value, "1");
	cr_assert_eq(r.mods[1].kind, MOD_ADDHEADER);
	cr_assert_str_eq(r.mods[1].name, "X-Spam-Verdict");
	cr_assert_str_eq(r.mods[1].value, "reject");
	mta_result_fini(&r);
	cr_assert_eq(mta_quit(&m), 0);
	mta_close(&m);

	log = env_wait_log(&e, "Q3: message (");
	l = line_with(log, "upstream lim: dropped");
	HAS(l, "Q3: upstream lim: dropped 1 chgheader, 1 addrcpt: not in "
	    "its actions");
	free(l);
	l = line_with(log, "upstream rej: envrcpt:");
	HAS(l, "upstream rej: envrcpt: reject mapped to tempfail by its "
	    "verdicts");
	free(l);
	l = line_with(log, "upstream eom: eom:");
	HAS(l, "upstream eom: eom: reject mapped to continue by its "
	    "verdicts");
	free(l);
	l = line_with(log, "Q3: message (");
	HAS(l, " rej=continue (verdicts: reject became tempfail)/");
	HAS(l, " eom=continue (verdicts: reject became a header)/");
	HAS(l, "<bob@example.net>=tempfail by rej");
	free(l);
	free(log);
	env_stop(&e, 0.2);
}

/* find_event - the first JSON line of log whose "event" is event and
 * whose "session" ends in sess */
static json_t *
find_event(const char *log, const char *event, const char *sess)
{
	const char	*p = log;

	while (*p != '\0') {
		const char	*end = strchr(p, '\n');
		size_t		 n = end != NULL ? (size_t)(end - p) : strlen(p);
		json_t		*o = json_loadb(p, n, 0, NULL), *ev, *se;

		cr_assert_not_null(o, "not JSON: %.*s", (int)n, p);
		ev = json_object_get(o, "event");
		se = json_object_get(o, "session");
		if (json_is_string(ev) && strcmp(json_string_value(ev),
		    event) == 0 && json_is_string(se) &&
		    strlen(json_string_value(se)) >= strlen(sess) &&
		    strcmp(json_string_value(se) + strlen(json_string_value(se)) -
		    strlen(sess), sess) == 0)
			return o;
		json_decref(o);
		p = end != NULL ? end + 1 : p + n;
	}
	return NULL;
}

/*
 * The JSON decision log: a message record names the skipped upstream
 * and why; a session without a message lists it under "skipped"; a
 * client inside the network gets it connected, exactly once.
 */
Test(limits, json_records_name_skipped_upstreams, .timeout = 60)
{
	static struct up ups[] = {
		{ "a", { NULL }, NULL },
		{ "lan", { NULL }, "\"apply_if\": {\"client\": "
		    "[\"10.0.0.0/8\"]}" },
	};
	static const char *const from[] = { "<a@example.org>" };
	static const char *const rcpt[] = { "<r@example.net>" };
	struct env		 e;
	struct mta		 m;
	struct mta_result	 r;
	char			*log;
	json_t			*o, *u;

	env_setup(&e, ups, 2, "\"log_format\": \"json\"", 0);
	open_mta(&m, &e);
	expect("connect", mta_connect(&m, "client.example", "192.0.2.7", &r),
	    &r, VERDICT_CONTINUE);
	expect("mail", mta_mail(&m, from, 1, &r), &r, VERDICT_CONTINUE);
	expect("rcpt", mta_rcpt(&m, rcpt, 1, &r), &r, VERDICT_CONTINUE);
	message(&m, &r);
	expect("eom", 0, &r, VERDICT_CONTINUE);
	mta_result_fini(&r);
	cr_assert_eq(mta_quit(&m), 0);
	mta_close(&m);
	open_mta(&m, &e);
	expect("connect 2", mta_connect(&m, "client.example", "192.0.2.7",
	    &r), &r, VERDICT_CONTINUE);
	expect("helo 2", mta_helo(&m, "client.example", &r), &r,
	    VERDICT_CONTINUE);
	cr_assert_eq(mta_quit(&m), 0);
	mta_close(&m);
	/* From inside 10/8: lan takes part. */
	open_mta(&m, &e);
	expect("connect 3", mta_connect(&m, "lan.example", "10.1.2.3", &r),
	    &r, VERDICT_CONTINUE);
	cr_assert_eq(mta_quit(&m), 0);
	mta_close(&m);

	log = env_wait_log(&e, "conn-3");
	free(log);
	log = env_wait_log(&e, "client lan.example[10.1.2.3]");
	o = find_event(log, "message", ".conn-1");
	cr_assert_not_null(o, "no message record in:\n%s", log);
	u = json_array_get(json_object_get(o, "upstreams"), 1);
	cr_assert_str_eq(json_string_value(json_object_get(u, "name")), "lan");
	cr_assert_str_eq(json_string_value(json_object_get(u, "verdict")),
	    "skipped");
	cr_assert_str_eq(json_string_value(json_object_get(u, "skipped")),
	    "apply_if: client 192.0.2.7");
	u = json_array_get(json_object_get(o, "upstreams"), 0);
	cr_assert_str_eq(json_string_value(json_object_get(u, "verdict")),
	    "continue");
	cr_assert_null(json_object_get(u, "skipped"));
	json_decref(o);
	o = find_event(log, "session", ".conn-2");
	cr_assert_not_null(o, "no session record in:\n%s", log);
	cr_assert_str_eq(json_string_value(json_object_get(json_object_get(o,
	    "skipped"), "lan")), "apply_if: client 192.0.2.7");
	HAS(json_string_value(json_object_get(o, "msg")),
	    "; upstream lan skipped (apply_if: client 192.0.2.7)");
	json_decref(o);
	o = find_event(log, "session", ".conn-3");
	cr_assert_not_null(o, "no session record in:\n%s", log);
	cr_assert_null(json_object_get(o, "skipped"));
	json_decref(o);
	free(log);
	log = up_log(&e, 1);
	cr_assert_eq(h_count(log, " negotiate"), 1, "lan got:\n%s", log);
	cr_assert_eq(h_count(log, " connect lan.example 10.1.2.3"), 1,
	    "lan got:\n%s", log);
	free(log);
	env_stop(&e, 0.2);
}
