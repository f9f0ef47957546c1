/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_reuse - upstream connections kept across MTA sessions with
 * QUIT_NC (connpool.c): the real miltermux in front of real libmilter
 * test milters (and badmilter where a filter must misbehave), driven by
 * the raw MTA client one session after another.
 *
 * Each test checks what the upstream saw (its own log: one negotiate
 * line per connection, one connect line per session, the macros of
 * every callback), the verdicts the MTA heard, and miltermux's log.
 */
#include <criterion/criterion.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "fixture.h"
#include "harness.h"
#include "mtaclient.h"

#define REUSE_ON	"\"reuse\": true"

/* How long session() waits between the end of message and QUIT, and
 * whether it sends ABORT first (as an MTA may after a rejection). */
static long	quit_pause_ms;
static bool	abort_after_eom;

#define VEQ(got, want) cr_assert_eq((got), (want), "%s: got %s, want %s", \
	#got, proto_verdict_name(got), proto_verdict_name(want))

/* msleep - ms milliseconds */
static void
msleep(long ms)
{
	nanosleep(&(struct timespec){ ms / 1000, (ms % 1000) * 1000000 },
	    NULL);
}

/* count - occurrences of needle in the file at path (0: no file) */
static int
count(const char *path, const char *needle)
{
	char		*s = h_read_file(path);
	const char	*p;
	int		 n = 0;

	if (s == NULL)
		return 0;
	for (p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	free(s);
	return n;
}

/* wait_count - until needle occurs n times in path; the count then */
static int
wait_count(const char *path, const char *needle, int n, double secs)
{
	double	 end = h_now() + secs;
	int	 c;

	while ((c = count(path, needle)) < n && h_now() < end)
		msleep(20);
	return c;
}

/* wait_closed - until the filter's xxfi_close ran for k sessions
 * (session 0 is a connection without one: a probe, an idle close) */
static bool
wait_closed(const char *path, int k, double secs)
{
	double	 end = h_now() + secs;

	while (count(path, " close") - count(path, " 0 close") < k)
		if (h_now() >= end)
			return false;
		else
			msleep(20);
	return true;
}

/* stage - one stage's verdict, asserting an answer came */
static enum verdict
stage_verdict(int rc, struct mta_result *r, const char *what)
{
	enum verdict	 v;

	cr_assert_eq(rc, 0, "%s: no answer (%d)", what, rc);
	v = r->verdict;
	mta_result_fini(r);
	return v;
}

/*
 * session - MTA session k from connect to QUIT: connect macros
 * {daemon_name}=dK, plus j=mx.one and a HELO {tls_version} in session 1
 * only; MAIL, RCPT <bad@example.net> (REJECT if want_bad_reject) and
 * <good@example.net>, a message; returns the end-of-message verdict
 */
static enum verdict
session(struct env *e, int k, bool want_bad_reject)
{
	struct mta		 m;
	struct mta_result	 r;
	char			 dn[16];
	const char		*c1[] = { "j", "mx.one", "{daemon_name}", dn };
	const char		*c2[] = { "{daemon_name}", dn };
	const char		*h1[] = { "{tls_version}", "TLSv1.3" };
	const char		*from[] = { "<sender@example.org>" };
	const char		*bad[] = { "<bad@example.net>" };
	const char		*good[] = { "<good@example.net>" };
	enum verdict		 v;

	snprintf(dn, sizeof dn, "d%d", k);
	cr_assert_eq(mta_open(&m, e->mux_spec, 20), 0);
	cr_assert_eq(mta_negotiate(&m, MA_ALL, MP_ALL_V6), 0);
	if (k == 1)
		cr_assert_eq(mta_macros(&m, MC_CONNECT, c1, 2), 0);
	else
		cr_assert_eq(mta_macros(&m, MC_CONNECT, c2, 1), 0);
	VEQ(stage_verdict(mta_connect(&m, "client.example", "192.0.2.1",
	    &r), &r, "connect"), VERDICT_CONTINUE);
	if (k == 1)
		cr_assert_eq(mta_macros(&m, MC_HELO, h1, 1), 0);
	VEQ(stage_verdict(mta_helo(&m, "client.example", &r), &r, "helo"),
	    VERDICT_CONTINUE);
	VEQ(stage_verdict(mta_mail(&m, from, 1, &r), &r, "mail"),
	    VERDICT_CONTINUE);
	VEQ(stage_verdict(mta_rcpt(&m, bad, 1, &r), &r, "rcpt bad"),
	    want_bad_reject ? VERDICT_REJECT : VERDICT_CONTINUE);
	VEQ(stage_verdict(mta_rcpt(&m, good, 1, &r), &r, "rcpt good"),
	    VERDICT_CONTINUE);
	/* Not asked of the MTA when no upstream wants it (a version 2
	 * filter never gets DATA). */
	VEQ(stage_verdict(mta_data(&m, &r), &r, "data"),
	    (m.proto & MP_NODATA) != 0 ? VERDICT_NONE : VERDICT_CONTINUE);
	(void)stage_verdict(mta_header(&m, "Subject", "s", 1, &r), &r,
	    "header");
	(void)stage_verdict(mta_eoh(&m, &r), &r, "eoh");
	(void)stage_verdict(mta_body(&m, "body\r\n", 6, &r), &r, "body");
	v = stage_verdict(mta_eom(&m, &r), &r, "eom");
	if (abort_after_eom)
		cr_assert_eq(mta_abort(&m), 0);
	if (quit_pause_ms > 0)
		msleep(quit_pause_ms);
	cr_assert_eq(mta_quit(&m), 0);
	mta_close(&m);
	return v;
}

/* lines_of - testmilter log lines of session id s (" S " after the
 * pid), joined; caller frees */
static char *
lines_of(const char *path, int s)
{
	char	*log = h_read_file(path), *out = h_xstrdup(""), *line, *save;
	char	 key[16], *tmp;

	snprintf(key, sizeof key, " %d ", s);
	for (line = strtok_r(log, "\n", &save); line != NULL;
	    line = strtok_r(NULL, "\n", &save)) {
		char	*sp = strchr(line, ' ');

		if (sp != NULL && strncmp(sp, key, strlen(key)) == 0) {
			tmp = h_xasprintf("%s%s\n", out, line);
			free(out);
			out = tmp;
		}
	}
	free(log);
	return out;
}

/*
 * Five MTA sessions one after another: a filter that answers "continue"
 * at end of message is connected to and negotiated with once, and sees
 * five sessions, each with its own verdicts and only its own macros
 * (libmilter clears them on QUIT_NC: j and {tls_version} of session 1
 * are not seen again).  A filter that accepts at end of message is in a
 * state where libmilter would drop QUIT_NC and the next CONNECT: it gets
 * a fresh connection every time, and no session waits on it.
 */
Test(reuse, sessions_share_one_connection, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--reject-rcpt", "<bad@example.net>", "--log-macros",
		    "j {daemon_name} {tls_version}", NULL }, NULL },
		{ "b", { NULL }, NULL },
		{ "acc", { "--verdict", "eom=accept", NULL }, NULL },
	};
	char		*s, *log, *top, *body;
	int		 port = h_free_port();

	top = h_xasprintf("%s, \"metrics\": { \"listen\": "
	    "\"inet:%d@127.0.0.1\" }", REUSE_ON, port);
	env_setup(&e, ups, 3, top, 0);
	free(top);
	cr_assert_eq(h_wait_port(port, 10), 0);
	for (int k = 1; k <= 5; k++) {
		VEQ(session(&e, k, true), VERDICT_CONTINUE);
		/* The upstream's xxfi_close for the session: QUIT_NC (or
		 * QUIT) has arrived; the connection is back in the pool. */
		cr_assert(wait_closed(e.up_log[0], k, 10));
		cr_assert(wait_closed(e.up_log[2], k, 10));
	}
	cr_assert_eq(count(e.up_log[0], " negotiate "), 1,
	    "a: one connection for five sessions:\n%s",
	    h_read_file(e.up_log[0]));
	cr_assert_eq(count(e.up_log[0], " connect "), 5);
	cr_assert_eq(count(e.up_log[0], " eom"), 5);
	cr_assert_eq(count(e.up_log[0], " envrcpt <bad@example.net>"), 5);
	cr_assert_eq(count(e.up_log[1], " negotiate "), 1);
	cr_assert_eq(count(e.up_log[1], " connect "), 5);
	cr_assert_eq(count(e.up_log[2], " negotiate "), 5,
	    "acc: a fresh connection per session:\n%s",
	    h_read_file(e.up_log[2]));
	s = lines_of(e.up_log[0], 1);
	HAS(s, " connect client.example 192.0.2.1 macro:j=mx.one "
	    "macro:{daemon_name}=d1");
	HAS(s, " helo client.example macro:j=mx.one macro:{daemon_name}=d1 "
	    "macro:{tls_version}=TLSv1.3");
	free(s);
	for (int k = 2; k <= 5; k++) {
		char	*want = h_xasprintf(" connect client.example 192.0.2.1 "
			    "macro:{daemon_name}=d%d\n", k);

		s = lines_of(e.up_log[0], k);
		HAS(s, want);
		HASNT(s, "macro:j=");
		HASNT(s, "macro:{tls_version}");
		free(want);
		free(s);
	}
	log = env_mux_log(&e);
	HASNT(log, "applying on_failure");
	/* The session's line says how many upstreams it reused. */
	cr_assert_eq(count(e.mux_log, "3 of 3 upstreams live (0 on "
	    "connections reused with QUIT_NC)"), 1, "%s", log);
	cr_assert_eq(count(e.mux_log, "3 of 3 upstreams live (2 on "
	    "connections reused with QUIT_NC)"), 4, "%s", log);
	free(log);
	body = env_http_get(port, "/metrics", NULL);
	HAS(body, "miltermux_upstream_connections_total{upstream=\"a\","
	    "kind=\"fresh\"} 1\n");
	HAS(body, "miltermux_upstream_connections_total{upstream=\"a\","
	    "kind=\"reused\"} 4\n");
	HAS(body, "miltermux_upstream_connections_total{upstream=\"acc\","
	    "kind=\"fresh\"} 5\n");
	HAS(body, "miltermux_upstream_connections_total{upstream=\"acc\","
	    "kind=\"reused\"} 0\n");
	free(body);
	env_stop(&e, 2);
}

/* Without "reuse", every session opens and negotiates afresh. */
Test(reuse, off_by_default, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = { { "a", { NULL }, NULL } };

	env_setup(&e, ups, 1, NULL, 0);
	for (int k = 1; k <= 3; k++) {
		VEQ(session(&e, k, false), VERDICT_CONTINUE);
		cr_assert(wait_closed(e.up_log[0], k, 10));
	}
	cr_assert_eq(count(e.up_log[0], " negotiate "), 3);
	env_stop(&e, 2);
}

/*
 * The filter restarts while its connection is idle: the next session
 * takes a fresh one, without a failure, and reuse goes on with the new
 * process.
 */
Test(reuse, upstream_restart, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = { { "a", { NULL }, NULL } };
	char		*log;

	env_setup(&e, ups, 1, REUSE_ON, 0);
	for (int k = 1; k <= 2; k++) {
		VEQ(session(&e, k, false), VERDICT_CONTINUE);
		cr_assert(wait_closed(e.up_log[0], k, 10));
	}
	cr_assert_eq(count(e.up_log[0], " negotiate "), 1);
	(void)h_kill(e.up_pid[0], SIGKILL);
	(void)h_wait_exit(e.up_pid[0], 10, NULL);
	env_start_upstreams(&e, ups, 1);
	for (int k = 3; k <= 5; k++) {
		VEQ(session(&e, k, false), VERDICT_CONTINUE);
		cr_assert(wait_closed(e.up_log[0], k, 10));
	}
	cr_assert_eq(count(e.up_log[0], " negotiate "), 2,
	    "one connection per process:\n%s", h_read_file(e.up_log[0]));
	cr_assert_eq(count(e.up_log[0], " connect "), 5);
	log = env_mux_log(&e);
	HASNT(log, "applying on_failure");
	HASNT(log, "not supported");
	free(log);
	env_stop(&e, 2);
}

/*
 * An idle connection that went stale in a way the pool could not see
 * (the filter closes it at the first command after its second QUIT_NC):
 * the session falls back to a fresh connection, replays what it wrote,
 * and the MTA notices nothing.  Reuse stays on (it worked before).
 */
Test(reuse, stale_connection_falls_back, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "s", { BADMILTER, "--mode", "qnc-stale", NULL }, NULL },
	};
	char		*log;

	env_setup(&e, ups, 1, REUSE_ON, 0);
	for (int k = 1; k <= 5; k++) {
		VEQ(session(&e, k, false), VERDICT_CONTINUE);
		msleep(150);	/* the close reaches the pool */
	}
	/* Sessions 3 and 5 each met a stale connection (1-2-3, 3-4-5). */
	cr_assert_eq(wait_count(e.up_log[0], "closed after the second "
	    "QUIT_NC", 2, 5), 2, "%s", h_read_file(e.up_log[0]));
	log = env_mux_log(&e);
	HASNT(log, "applying on_failure");
	HASNT(log, "not supported");
	free(log);
	env_stop(&e, 2);
}

/*
 * A filter that closes the connection on QUIT_NC: sessions go on
 * without a failure, one line says reuse stopped, and it stops.
 */
Test(reuse, unsupported_filter_logged_once, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "q", { BADMILTER, "--mode", "qnc-close", NULL }, NULL },
	};
	char		*log;

	env_setup(&e, ups, 1, REUSE_ON, 0);
	for (int k = 1; k <= 4; k++) {
		VEQ(session(&e, k, false), VERDICT_CONTINUE);
		msleep(150);
	}
	/* QUIT_NC went out once: after that, QUIT. */
	cr_assert_eq(count(e.up_log[0], "closed on QUIT_NC"), 1,
	    "%s", h_read_file(e.up_log[0]));
	log = env_mux_log(&e);
	cr_assert_eq(count(e.mux_log, "QUIT_NC not supported"), 1, "%s", log);
	HAS(log, "upstream q: closed a connection right after QUIT_NC");
	HASNT(log, "applying on_failure");
	free(log);
	env_stop(&e, 2);
}

/* A filter that negotiates protocol version 2 gets no QUIT_NC. */
Test(reuse, old_protocol_version_not_reused, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "v2", { BADMILTER, "--mode", "optneg-version", "--version",
		    "2", NULL }, NULL },
	};
	char		*log;

	env_setup(&e, ups, 1, REUSE_ON, 0);
	for (int k = 1; k <= 3; k++)
		VEQ(session(&e, k, false), VERDICT_CONTINUE);
	log = env_wait_log(&e, "connection reuse off");
	cr_assert_eq(count(e.mux_log, "upstream v2: negotiated milter "
	    "protocol version 2, and QUIT_NC needs 6: connection reuse off "
	    "for it"), 1, "%s", log);
	HASNT(log, "applying on_failure");
	free(log);
	env_stop(&e, 2);
}

/*
 * A reload that removes an upstream closes its idle connection at once
 * (the filter sees the end of the stream: libmilter's xxfi_close without
 * a session), and keeps the other's.
 */
Test(reuse, reload_drops_removed_upstream, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = { { "a", { NULL }, NULL },
		{ "b", { NULL }, NULL } };
	char		*cfg, *log;
	int		 probes_a, probes_b;

	env_setup(&e, ups, 2, REUSE_ON, 0);
	probes_a = count(e.up_log[0], " 0 close");
	probes_b = count(e.up_log[1], " 0 close");
	VEQ(session(&e, 1, false), VERDICT_CONTINUE);
	cr_assert_eq(wait_count(e.up_log[1], " 1 close", 1, 10), 1);
	cr_assert_eq(count(e.up_log[1], " 0 close"), probes_b);
	cfg = h_xasprintf("{ \"listen\": \"%s\", \"threads\": 2, %s, "
	    "\"upstreams\": [ { \"name\": \"a\", \"address\": "
	    "\"unix:%s/a.sock\" } ] }\n", e.mux_spec, REUSE_ON, h_tmpdir());
	cr_assert_eq(h_write_file(e.conf, cfg), 0);
	free(cfg);
	cr_assert_eq(h_kill(e.mux, SIGHUP), 0);
	log = env_wait_log(&e, "configuration reloaded");
	free(log);
	cr_assert_eq(wait_count(e.up_log[1], " 0 close", probes_b + 1, 5),
	    probes_b + 1, "b's idle connection was not closed:\n%s",
	    h_read_file(e.up_log[1]));
	cr_assert_eq(count(e.up_log[0], " 0 close"), probes_a);
	/* a's connection is still reused. */
	VEQ(session(&e, 2, false), VERDICT_CONTINUE);
	cr_assert(wait_closed(e.up_log[0], 2, 10));
	cr_assert_eq(count(e.up_log[0], " negotiate "), 1);
	env_stop(&e, 2);
}

/* An idle connection is closed after reuse_idle_timeout, not before. */
Test(reuse, idle_timeout_ages_out, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = { { "a", { NULL }, NULL } };
	double		 t0;
	int		 probes;

	env_setup(&e, ups, 1, REUSE_ON ", \"reuse_idle_timeout\": 1.5", 0);
	/* The fixture's readiness probe was a session 0 already. */
	probes = count(e.up_log[0], " 0 close");
	VEQ(session(&e, 1, false), VERDICT_CONTINUE);
	cr_assert_eq(wait_count(e.up_log[0], " 1 close", 1, 10), 1);
	t0 = h_now();
	cr_assert_eq(wait_count(e.up_log[0], " 0 close", probes + 1, 6),
	    probes + 1, "the idle connection was not closed");
	cr_assert_geq(h_now() - t0, 1.3, "closed too early");
	VEQ(session(&e, 2, false), VERDICT_CONTINUE);
	cr_assert_eq(count(e.up_log[0], " negotiate "), 2);
	env_stop(&e, 2);
}

/*
 * An abort that went out while the filter still owed its end-of-message
 * answer (another upstream rejected first): libmilter takes the abort
 * after that answer, which moves it out of its end-of-message state, so
 * a QUIT_NC would be dropped, and the next session's CONNECT with it.
 * The connection is closed, not kept: the next session works.  (Found
 * by test_interleave with reuse on: the "continue" that came after the
 * abort made the connection look reusable.)
 */
Test(reuse, abort_ahead_of_eom_answer_not_kept, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "slow", { "--delay", "eom=400", NULL }, NULL },
		{ "rej", { "--verdict", "eom=reject", NULL }, NULL },
	};
	char		*log;

	env_setup(&e, ups, 2, REUSE_ON, 0);
	/* The MTA aborts at once; QUIT after the slow one's answer came,
	 * behind the abort. */
	quit_pause_ms = 800;
	abort_after_eom = true;
	VEQ(session(&e, 1, false), VERDICT_REJECT);
	cr_assert(wait_closed(e.up_log[0], 1, 10));
	VEQ(session(&e, 2, false), VERDICT_REJECT);
	cr_assert(wait_closed(e.up_log[0], 2, 10));
	quit_pause_ms = 0;
	abort_after_eom = false;
	/* (libmilter drops an abort that comes after the end of message,
	 * without calling xxfi_abort: the filter's log cannot show it.) */
	cr_assert_eq(count(e.up_log[0], " negotiate "), 2,
	    "%s", h_read_file(e.up_log[0]));
	log = env_mux_log(&e);
	HASNT(log, "applying on_failure");
	free(log);
	env_stop(&e, 2);
}
