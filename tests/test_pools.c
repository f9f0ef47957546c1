/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_pools - replica pools: an upstream whose "address" is an array.
 * The real miltermux in front of real testmilter replicas over unix
 * sockets, driven by the raw MTA client (tests/mtaclient.c) and, once,
 * by a private Postfix: sessions spread by the number in flight, a
 * replica that is not listening or fails negotiation is passed over
 * for the next one, each replica has its own breaker (seen in /status,
 * /metrics and the log), on_failure applies only when no replica is
 * left, and a reload changes the list.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "codec.h"
#include "fixture.h"
#include "harness.h"
#include "mtaclient.h"

#define NHOLD	6	/* sessions held open at once */

/* sock - the libmilter spec of replica name in the temp directory */
static char *
sock(const char *name)
{
	return h_xasprintf("unix:%s/%s.sock", h_tmpdir(), name);
}

/*
 * start_mux - miltermux on a unix socket in front of upstreams (the
 * JSON of the "upstreams" array's elements), metrics on a free port,
 * which is returned.  The replicas are started by the caller.
 */
static int
start_mux_at(struct env *e, const char *upstreams, bool inet)
{
	int		 port = h_free_port();
	char		*cfg;
	const char	*argv[] = { BIN("miltermux"), "-f", "-v", "-c", NULL,
			    NULL };

	cr_assert(port > 0);
	if (inet) {
		e->mux_port = h_free_port();
		cr_assert(e->mux_port > 0);
		e->mux_spec = h_xasprintf("inet:%d@127.0.0.1", e->mux_port);
	} else {
		e->mux_sock = h_xasprintf("%s/mux.sock", h_tmpdir());
		e->mux_spec = h_xasprintf("unix:%s", e->mux_sock);
	}
	e->mux_log = h_xasprintf("%s/miltermux.log", h_tmpdir());
	e->conf = h_xasprintf("%s/miltermux.json", h_tmpdir());
	cfg = h_xasprintf("{\n\"listen\": \"%s\",\n\"threads\": 2,\n"
	    "\"metrics\": { \"listen\": \"inet:%d@127.0.0.1\" },\n"
	    "\"upstreams\": [\n%s\n] }\n", e->mux_spec, port, upstreams);
	cr_assert_eq(h_write_file(e->conf, cfg), 0);
	free(cfg);
	argv[4] = e->conf;
	e->mux = h_spawn(argv, e->mux_log);
	cr_assert(e->mux > 0);
	cr_assert_eq(inet ? h_wait_port(e->mux_port, 10) :
	    h_wait_unix(e->mux_sock, 10), 0,
	    "miltermux did not come up:\n%s", env_mux_log(e));
	cr_assert_eq(h_wait_port(port, 10), 0, "no metrics listener");
	return port;
}

static int
start_mux(struct env *e, const char *upstreams)
{
	return start_mux_at(e, upstreams, false);
}

/* lines - how many lines of file hold needle */
static int
lines(const char *file, const char *needle)
{
	char	*s = h_read_file(file), *p;
	int	 n = 0;

	if (s == NULL)
		return 0;
	for (p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	free(s);
	return n;
}

/* open_session - negotiate and connect; v: the connect verdict wanted */
static void
open_session(struct env *e, struct mta *m, enum verdict v)
{
	struct mta_result	 r;

	cr_assert_eq(mta_open(m, e->mux_spec, 30), 0);
	cr_assert_eq(mta_negotiate(m, MA_ALL, MP_ALL_V6), 0);
	cr_assert_eq(mta_connect(m, "client.example", "192.0.2.1", &r), 0);
	cr_assert_eq(r.verdict, v, "connect: %s", proto_verdict_name(
	    r.verdict));
	mta_result_fini(&r);
}

static enum verdict
say(int rc, struct mta_result *r)
{
	enum verdict	 v = r->verdict;

	cr_assert_eq(rc, 0, "no answer");
	mta_result_fini(r);
	return v;
}

/* message - one message through an open session: the eom verdict */
static enum verdict
message(struct mta *m, const char *from)
{
	struct mta_result	 r;
	const char		*rcpt = "<bob@example.net>";

	cr_assert_eq(say(mta_mail(m, &from, 1, &r), &r), VERDICT_CONTINUE);
	cr_assert_eq(say(mta_rcpt(m, &rcpt, 1, &r), &r), VERDICT_CONTINUE);
	cr_assert_eq(say(mta_data(m, &r), &r), VERDICT_CONTINUE);
	(void)say(mta_header(m, "Subject", "s", 1, &r), &r);
	(void)say(mta_eoh(m, &r), &r);
	(void)say(mta_body(m, "body\r\n", 6, &r), &r);
	return say(mta_eom(m, &r), &r);
}

/* one_message - a session with one message; its eom verdict */
static enum verdict
one_message(struct env *e, const char *from)
{
	struct mta	 m;
	enum verdict	 v;

	open_session(e, &m, VERDICT_CONTINUE);
	v = message(&m, from);
	mta_quit(&m);
	mta_close(&m);
	return v;
}

/* status_replica - /status's replica k of upstream 0, as a JSON copy */
static json_t *
status_replica(int port, size_t k)
{
	json_t	*st, *r;
	char	*body;
	int	 code;

	body = env_http_get(port, "/status", &code);
	cr_assert_eq(code, 200);
	st = json_loads(body, 0, NULL);
	cr_assert_not_null(st, "/status: %s", body);
	r = json_array_get(json_object_get(json_array_get(json_object_get(st,
	    "upstreams"), 0), "replicas"), k);
	cr_assert_not_null(r, "no replica %zu in /status: %s", k, body);
	json_incref(r);
	json_decref(st);
	free(body);
	return r;
}

/*
 * Two replicas, NHOLD sessions held open at once: the replica with the
 * fewest in flight takes each, so each holds NHOLD / 2 (testmilter's
 * log counts its negotiations; /metrics its sessions in flight).  A
 * message then names its replica in the decision log.
 */
Test(pools, sessions_spread_by_the_number_in_flight, .timeout = 60)
{
	struct up	 reps[] = {
		{ "r0", { NULL }, NULL },
		{ "r1", { NULL }, NULL },
	};
	struct env	 e = { 0 };
	struct mta	 m[NHOLD];
	char		*ups, *s0 = sock("r0"), *s1 = sock("r1"), *body, *n0,
			*n1, *log, *want;
	int		 port;

	env_start_upstreams(&e, reps, 2);
	ups = h_xasprintf("{ \"name\": \"pool\", \"address\": [\"%s\", "
	    "\"%s\"] }", s0, s1);
	port = start_mux(&e, ups);
	for (int i = 0; i < NHOLD; i++)
		open_session(&e, &m[i], VERDICT_CONTINUE);
	cr_assert_eq(lines(e.up_log[0], " negotiate "), NHOLD / 2);
	cr_assert_eq(lines(e.up_log[1], " negotiate "), NHOLD / 2);
	n0 = h_xasprintf("miltermux_replica_sessions{upstream=\"pool\","
	    "replica=\"%s\"}", s0);
	n1 = h_xasprintf("miltermux_replica_sessions{upstream=\"pool\","
	    "replica=\"%s\"}", s1);
	body = env_scrape_until(port, n0, NHOLD / 2);
	COUNT(body, n0, NHOLD / 2);
	COUNT(body, n1, NHOLD / 2);
	free(body);

	/* One replica's sessions end: the next ones go to it. */
	for (int i = 0; i < NHOLD; i += 2)
		mta_close(&m[i]);
	body = env_scrape_until(port, n0, 0);
	COUNT(body, n0, 0);
	free(body);
	open_session(&e, &m[0], VERDICT_CONTINUE);
	cr_assert_eq(message(&m[0], "<alice@example.org>"),
	    VERDICT_CONTINUE);
	cr_assert_eq(lines(e.up_log[0], " negotiate ") +
	    lines(e.up_log[1], " negotiate "), NHOLD + 1);
	/* The decision log names the replica that took the message. */
	log = env_wait_log(&e, "message (");
	want = h_xasprintf("upstreams pool[%s]=", lines(e.up_log[0], " eom") ?
	    s0 : s1);
	HAS(log, want);
	mta_close(&m[0]);
	for (int i = 1; i < NHOLD; i += 2)
		mta_close(&m[i]);
	body = env_scrape_until(port, "miltermux_sessions_open", 0);
	COUNT(body, n0, 0);
	COUNT(body, n1, 0);
	free(body);
	env_stop(&e, 3);
	free(log); free(want); free(n0); free(n1); free(ups); free(s0);
	free(s1);
}

/*
 * One replica is not listening: every session goes to the other with
 * no failure of the upstream; the dead one's breaker opens after one
 * failure (failures 1), is probed after retry_after, and comes back
 * once it listens.  /status, /metrics and the log name the replica.
 */
Test(pools, a_dead_replica_is_passed_over_and_probed, .timeout = 60)
{
	struct up	 reps[] = {
		{ "live", { "--verdict", "eom=reject", NULL }, NULL },
		{ "dead", { "--verdict", "eom=reject", NULL }, NULL },
	};
	struct env	 e = { 0 }, e2 = { 0 };
	char		*ups, *sl = sock("live"), *sd = sock("dead"), *body,
			*log, *want;
	json_t		*r;
	int		 port;

	/* Only "live" runs for now. */
	env_start_upstreams(&e, reps, 1);
	ups = h_xasprintf("{ \"name\": \"pool\", \"address\": [\"%s\", "
	    "\"%s\"], \"failures\": 1, \"retry_after\": 1, "
	    "\"on_failure\": \"accept\" }", sd, sl);
	port = start_mux(&e, ups);
	/* Every message scanned by live (reject), none accepted for want
	 * of an upstream. */
	for (int i = 0; i < 8; i++)
		cr_assert_eq(one_message(&e, "<alice@example.org>"),
		    VERDICT_REJECT, "message %d", i);
	cr_assert_eq(lines(e.up_log[0], " eom"), 8);
	log = env_wait_log(&e, "down after 1 consecutive failure");
	want = h_xasprintf("upstream pool[%s]: negotiate: connect", sd);
	HAS(log, want);
	HAS(log, "trying the next replica");
	free(want);
	want = h_xasprintf("upstream pool[%s]: down after 1 consecutive "
	    "failure", sd);
	HAS(log, want);
	HASNT(log, "applying on_failure");
	free(want);
	want = h_xasprintf("upstreams pool[%s]=reject", sl);
	HAS(log, want);
	free(want);
	free(log);

	r = status_replica(port, 0);
	cr_assert_str_eq(json_string_value(json_object_get(r, "address")),
	    sd);
	cr_assert_eq(json_object_get(r, "up"), json_false());
	json_decref(r);
	r = status_replica(port, 1);
	cr_assert_eq(json_object_get(r, "up"), json_true());
	cr_assert_str_eq(json_string_value(json_object_get(r, "breaker")),
	    "up");
	json_decref(r);
	body = env_http_get(port, "/metrics", &(int){ 0 });
	want = h_xasprintf("miltermux_upstream_up{upstream=\"pool\","
	    "replica=\"%s\"}", sd);
	COUNT(body, want, 0);
	free(want);
	want = h_xasprintf("miltermux_upstream_up{upstream=\"pool\","
	    "replica=\"%s\"}", sl);
	COUNT(body, want, 1);
	free(want);
	COUNT(body, "miltermux_upstream_up{upstream=\"pool\"}", 1);
	want = h_xasprintf("miltermux_upstream_failures_total{upstream="
	    "\"pool\",replica=\"%s\",reason=\"connect\"}", sd);
	/* One failure opened the breaker; later sessions skipped it until
	 * the probes, which fail the same way. */
	cr_assert(env_metric(body, want) >= 1, "%s in:\n%s", want, body);
	free(want);
	COUNT(body, "miltermux_upstream_verdicts_total{upstream=\"pool\","
	    "verdict=\"failed\"}", 0);
	COUNT(body, "miltermux_upstream_verdicts_total{upstream=\"pool\","
	    "verdict=\"down\"}", 0);
	COUNT(body, "miltermux_upstream_verdicts_total{upstream=\"pool\","
	    "verdict=\"reject\"}", 8);
	free(body);
	{
		int	 code;

		free(env_http_get(port, "/healthz", &code));
		cr_assert_eq(code, 200);
	}

	/* The dead replica starts; after retry_after a session probes it
	 * and it is back. */
	env_start_upstreams(&e2, &reps[1], 1);
	for (int i = 0; i < 40; i++) {
		cr_assert_eq(one_message(&e, "<alice@example.org>"),
		    VERDICT_REJECT);
		log = env_mux_log(&e);
		want = h_xasprintf("upstream pool[%s]: back up", sd);
		if (strstr(log, want) != NULL) {
			free(want);
			free(log);
			break;
		}
		free(want);
		free(log);
		nanosleep(&(struct timespec){ 0, 100 * 1000 * 1000 }, NULL);
	}
	log = env_mux_log(&e);
	want = h_xasprintf("upstream pool[%s]: probing", sd);
	HAS(log, want);
	free(want);
	want = h_xasprintf("upstream pool[%s]: back up", sd);
	HAS(log, want);
	free(want);
	free(log);
	r = status_replica(port, 0);
	cr_assert_eq(json_object_get(r, "up"), json_true());
	json_decref(r);
	/* Sessions go to it again. */
	cr_assert_eq(one_message(&e, "<alice@example.org>"), VERDICT_REJECT);
	cr_assert_eq(one_message(&e, "<alice@example.org>"), VERDICT_REJECT);
	cr_assert(lines(e2.up_log[0], " eom") >= 1);
	env_stop(&e2, 3);
	env_stop(&e, 3);
	free(ups); free(sl); free(sd);
}

/*
 * Every replica down: the upstream's on_failure applies (tempfail at
 * connect), the upstream as a whole is down in /metrics and /healthz.
 */
Test(pools, all_replicas_down_apply_on_failure, .timeout = 60)
{
	struct env	 e = { 0 };
	struct mta	 m;
	char		*ups, *s0 = sock("gone0"), *s1 = sock("gone1"), *body,
			*log, *want;
	int		 port, code;

	ups = h_xasprintf("{ \"name\": \"pool\", \"address\": [\"%s\", "
	    "\"%s\"], \"failures\": 1, \"retry_after\": 60, "
	    "\"on_failure\": \"tempfail\" }", s0, s1);
	port = start_mux(&e, ups);
	open_session(&e, &m, VERDICT_TEMPFAIL);
	mta_close(&m);
	/* The first replica's failure moves on, the last one's applies
	 * on_failure. */
	want = h_xasprintf("upstream pool[%s]: negotiate: connect: No such "
	    "file or directory; trying the next replica", s0);
	log = env_wait_log(&e, want);
	HAS(log, want);
	free(want);
	want = h_xasprintf("upstream pool[%s]: negotiate: connect: No such "
	    "file or directory; applying on_failure=tempfail", s1);
	HAS(log, want);
	free(want);
	free(log);
	/* Both breakers are open now: the next session tries neither, and
	 * still gets on_failure. */
	open_session(&e, &m, VERDICT_TEMPFAIL);
	mta_close(&m);
	log = env_wait_log(&e, "conn-2: session without");
	cr_assert_eq(lines(e.mux_log, "directory; trying the next replica"),
	    1);
	free(log);
	body = env_http_get(port, "/metrics", &code);
	COUNT(body, "miltermux_upstream_up{upstream=\"pool\"}", 0);
	free(body);
	body = env_http_get(port, "/healthz", &code);
	cr_assert_eq(code, 503, "/healthz: %d %s", code, body);
	free(body);
	env_stop(&e, 3);
	free(ups); free(s0); free(s1);
}

/*
 * A replica that accepts the connection but fails the option
 * negotiation (libmilter drops the session when xxfi_negotiate does
 * not continue): the session moves to the next replica; the failure is
 * counted against the first one only.
 */
Test(pools, a_failed_negotiation_moves_to_the_next_replica, .timeout = 60)
{
	struct up	 reps[] = {
		{ "bad", { "--verdict", "negotiate=reject", NULL }, NULL },
		{ "good", { "--verdict", "eom=discard", NULL }, NULL },
	};
	struct env	 e = { 0 };
	char		*ups, *sb = sock("bad"), *sg = sock("good"), *body,
			*log, *want;
	int		 port;

	env_start_upstreams(&e, reps, 2);
	/* failures 10: the bad one stays up, so every session tries it
	 * first (round robin lets each replica be first in turn). */
	ups = h_xasprintf("{ \"name\": \"pool\", \"address\": [\"%s\", "
	    "\"%s\"], \"failures\": 10, \"on_failure\": \"reject\" }", sb,
	    sg);
	port = start_mux(&e, ups);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(one_message(&e, "<alice@example.org>"),
		    VERDICT_DISCARD, "message %d", i);
	cr_assert_eq(lines(e.up_log[1], " eom"), 4);
	cr_assert(lines(e.up_log[0], " negotiate ") >= 2);
	log = env_wait_log(&e, "trying the next replica");
	want = h_xasprintf("upstream pool[%s]: negotiate:", sb);
	HAS(log, want);
	HASNT(log, "applying on_failure");
	free(want);
	free(log);
	body = env_http_get(port, "/metrics", &(int){ 0 });
	want = h_xasprintf("miltermux_upstream_failures_total{upstream="
	    "\"pool\",replica=\"%s\",reason=\"closed\"}", sb);
	cr_assert(env_metric(body, want) >= 2, "%s in:\n%s", want, body);
	free(want);
	want = h_xasprintf("miltermux_upstream_failures_total{upstream="
	    "\"pool\",replica=\"%s\",reason=\"closed\"}", sg);
	COUNT(body, want, 0);
	free(want);
	COUNT(body, "miltermux_upstream_verdicts_total{upstream=\"pool\","
	    "verdict=\"discard\"}", 4);
	free(body);
	env_stop(&e, 3);
	free(ups); free(sb); free(sg);
}

/*
 * A replica that accepts but hangs in negotiation: its attempt gets half
 * of the connect budget (two replicas to try), then the session moves
 * to the other one and is served within the budget.
 */
Test(pools, a_hanging_replica_leaves_time_for_the_next, .timeout = 60)
{
	struct up	 reps[] = {
		{ "hang", { "--delay", "negotiate=4000", NULL }, NULL },
		{ "fast", { "--verdict", "eom=reject", NULL }, NULL },
	};
	struct env	 e = { 0 };
	char		*ups, *sh = sock("hang"), *sf = sock("fast"), *log,
			*want;
	double		 t0, took;

	env_start_upstreams(&e, reps, 2);
	ups = h_xasprintf("{ \"name\": \"pool\", \"address\": [\"%s\", "
	    "\"%s\"], \"failures\": 1, \"retry_after\": 60, "
	    "\"on_failure\": \"accept\", \"timeouts\": { \"connect\": 2 } }",
	    sh, sf);
	(void)start_mux(&e, ups);
	/* The first session chooses "hang" (round robin starts there). */
	t0 = h_now();
	cr_assert_eq(one_message(&e, "<alice@example.org>"), VERDICT_REJECT);
	took = h_now() - t0;
	cr_assert(took > 0.9 && took < 1.9, "took %.2f s", took);
	want = h_xasprintf("upstream pool[%s]: negotiate: no answer in "
	    "time", sh);
	log = env_wait_log(&e, want);
	HAS(log, want);
	HAS(log, "trying the next replica");
	free(want);
	free(log);
	/* Its breaker is open: the next ones go straight to "fast". */
	t0 = h_now();
	cr_assert_eq(one_message(&e, "<alice@example.org>"), VERDICT_REJECT);
	cr_assert(h_now() - t0 < 0.5, "took %.2f s", h_now() - t0);
	cr_assert_eq(lines(e.up_log[1], " eom"), 2);
	env_stop(&e, 3);
	free(ups); free(sh); free(sf);
}

/*
 * SIGHUP with a changed replica list: a pool of one replica becomes a
 * pool of two, and held sessions then spread over both.
 */
Test(pools, reload_changes_the_replica_list, .timeout = 60)
{
	struct up	 reps[] = {
		{ "r0", { NULL }, NULL },
		{ "r1", { NULL }, NULL },
	};
	struct env	 e = { 0 };
	struct mta	 m[4];
	char		*ups, *s0 = sock("r0"), *s1 = sock("r1"), *cfg, *p,
			*log, *dump;
	const char	*argv[] = { BIN("miltermux"), "--dump-config", "-c",
			    NULL, NULL };
	int		 st;

	env_start_upstreams(&e, reps, 2);
	ups = h_xasprintf("{ \"name\": \"pool\", \"address\": [\"%s\"] }",
	    s0);
	(void)start_mux(&e, ups);
	open_session(&e, &m[0], VERDICT_CONTINUE);
	mta_close(&m[0]);
	cr_assert_eq(lines(e.up_log[0], " negotiate "), 1);

	cfg = h_read_file(e.conf);
	p = strstr(cfg, "] }");
	cr_assert_not_null(p);
	*p = '\0';
	free(ups);
	ups = h_xasprintf("%s, \"%s\"] }%s", cfg, s1, p + 3);
	cr_assert_eq(h_write_file(e.conf, ups), 0);
	argv[3] = e.conf;
	cr_assert_eq(h_run(argv, 10, &dump, &st), 0);
	HAS(dump, s1);
	free(dump);
	cr_assert_eq(h_kill(e.mux, SIGHUP), 0);
	log = env_wait_log(&e, "configuration reloaded");
	HAS(log, "configuration reloaded");
	free(log);
	/* Wait for the new snapshot: a session that reaches r1. */
	for (int i = 0; i < 4; i++)
		open_session(&e, &m[i], VERDICT_CONTINUE);
	cr_assert_eq(lines(e.up_log[0], " negotiate "), 1 + 2,
	    "log:\n%s", env_mux_log(&e));
	cr_assert_eq(lines(e.up_log[1], " negotiate "), 2);
	for (int i = 0; i < 4; i++)
		mta_close(&m[i]);
	env_stop(&e, 3);
	free(cfg); free(ups); free(s0); free(s1);
}

/*
 * Through a private Postfix: a pool of two replicas; one is killed
 * halfway.  Every message is still scanned by a replica (its tag header
 * is delivered) or rejected by it (spam), none tempfailed.
 */
Test(pools, postfix_pool_survives_a_killed_replica, .timeout = 120,
    .fini = env_pf_fini)
{
	struct up	 reps[] = {
		{ "r0", { "--tag", "--only-from", "<spam@example.org>",
		    "--verdict", "envfrom=reject", NULL }, NULL },
		{ "r1", { "--tag", "--only-from", "<spam@example.org>",
		    "--verdict", "envfrom=reject", NULL }, NULL },
	};
	struct env	 e = { 0 };
	struct h_smtp	 s;
	const char	*rcpt[] = { "bob@example.net", NULL };
	char		*ups, *s0 = sock("r0"), *s1 = sock("r1"), *spec,
			*reply = NULL, *msg;
	int		 rc, code, sent = 0, rejected = 0, tagged = 0;

	env_start_upstreams(&e, reps, 2);
	ups = h_xasprintf("{ \"name\": \"pool\", \"address\": [\"%s\", "
	    "\"%s\"], \"failures\": 1, \"retry_after\": 60, "
	    "\"on_failure\": \"tempfail\" }", s0, s1);
	(void)start_mux_at(&e, ups, true);
	spec = h_xasprintf("inet:127.0.0.1:%d", e.mux_port);
	rc = h_postfix_start(&env_pf, spec, NULL);
	free(spec);
	if (rc == -EPERM || rc == -ENOENT)
		cr_skip_test("no private Postfix here: %s", strerror(-rc));
	cr_assert_eq(rc, 0, "h_postfix_start: %s", strerror(-rc));
	env_pf_started = true;
	for (int i = 0; i < 20; i++) {
		const char *from = i % 5 == 4 ? "spam@example.org" :
		    "alice@example.org";

		if (i == 10) {
			/* r0 dies between two SMTP sessions. */
			cr_assert_eq(h_stop(e.up_pid[0], 0, NULL), 0);
			e.up_pid[0] = 0;
		}
		code = h_smtp_open(&s, "127.0.0.1", env_pf.smtpd_port, &reply);
		cr_assert_eq(code, 220, "greeting %d: %d", i, code);
		free(reply);
		reply = NULL;
		code = h_smtp_cmd(&s, "EHLO client.example.test", NULL);
		cr_assert_eq(code, 250);
		code = h_smtp_send(&s, from, rcpt, "Subject: pool\n\nbody\n",
		    &reply);
		if (i % 5 == 4) {
			cr_assert_eq(code, 550, "message %d: %d %s", i, code,
			    reply);
			rejected++;
		} else {
			cr_assert_eq(code, 250, "message %d: %d %s", i, code,
			    reply);
			sent++;
		}
		free(reply);
		reply = NULL;
		h_smtp_close(&s);
	}
	cr_assert_eq(h_sink_wait_messages(&env_pf, sent, 30), sent);
	for (int i = 0; i < sent; i++) {
		msg = h_sink_message(&env_pf, i);
		cr_assert_not_null(msg);
		if (strstr(msg, "X-Testmilter-r0: seen") != NULL ||
		    strstr(msg, "X-Testmilter-r1: seen") != NULL)
			tagged++;
		free(msg);
	}
	cr_assert_eq(sent, 16);
	cr_assert_eq(rejected, 4);
	cr_assert_eq(tagged, sent);
	/* Each message was scanned once, by one replica; r0 only before
	 * it was killed. */
	cr_assert_eq(lines(e.up_log[0], " eom") + lines(e.up_log[1], " eom"),
	    sent);
	cr_assert(lines(e.up_log[0], " eom") > 0 &&
	    lines(e.up_log[0], " eom") <= 8);
	/* The dead replica was tried once, failed over, and skipped. */
	{
		char	*want = h_xasprintf("upstream pool[%s]: negotiate: "
			    "connect: Connection refused; trying the next "
			    "replica", s0);

		cr_assert_eq(lines(e.mux_log, want), 1, "%s", want);
		free(want);
	}
	env_pf_passed = true;
	env_stop(&e, 3);
	free(ups); free(s0); free(s1);
}
