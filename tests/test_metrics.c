/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_metrics - the HTTP listener of metrics and health ("metrics" in
 * the configuration): GET /metrics, /healthz and /status, scraped with
 * curl from the real miltermux, checked against the traffic the test
 * sent through it: with the raw MTA client (tests/mtaclient.c), and
 * through a private Postfix.
 */
#include <criterion/criterion.h>

#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>

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
#include "metrics.h"
#include "mtaclient.h"

static struct h_postfix	pf;
static bool		passed;

static void
fini(void)
{
	(void)h_postfix_stop(&pf);
	if (!passed && pf.dir != NULL)
		h_postfix_print_logs(&pf, stderr);
	h_postfix_fini(&pf);
}

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

static enum verdict
say(int rc, struct mta_result *r)
{
	enum verdict	 v = r->verdict;

	cr_assert_eq(rc, 0, "no answer");
	mta_result_fini(r);
	return v;
}

/* message - MAIL, the recipients, content and end of message: the end's
 * verdict as the MTA hears it */
static enum verdict
message(struct mta *m, const char *from, const char *const *rcpts,
    size_t n, const enum verdict *rcpt_want)
{
	struct mta_result	 r;

	cr_assert_eq(say(mta_mail(m, &from, 1, &r), &r), VERDICT_CONTINUE);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(say(mta_rcpt(m, &rcpts[i], 1, &r), &r),
		    rcpt_want[i], "RCPT %s", rcpts[i]);
	cr_assert_eq(say(mta_data(m, &r), &r), VERDICT_CONTINUE);
	(void)say(mta_header(m, "Subject", "s", 1, &r), &r);
	(void)say(mta_eoh(m, &r), &r);
	(void)say(mta_body(m, "body\r\n", 6, &r), &r);
	return say(mta_eom(m, &r), &r);
}

/*
 * Through the raw MTA client: 3 messages pass, 2 are rejected at end
 * of message by "b" (--only-from spam), 1 recipient of the passing ones
 * is refused at RCPT by "a", 1 message is aborted by the MTA after MAIL;
 * over 2 sessions.  Every counter says exactly that.
 */
Test(metrics, counts_exactly_what_the_mta_sent, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--reject-rcpt", "<bad@example.net>", NULL }, NULL },
		{ "b", { "--only-from", "<spam@example.org>", "--verdict",
		    "eom=reject", NULL }, NULL },
	};
	const char	*ok1[] = { "<bob@example.net>" };
	const char	*ok2[] = { "<bob@example.net>", "<bad@example.net>" };
	const enum verdict w1[] = { VERDICT_CONTINUE };
	const enum verdict w2[] = { VERDICT_CONTINUE, VERDICT_REJECT };
	const char	*from = "<carol@example.org>";
	struct mta_result r;
	struct mta	 m;
	char		*body;
	int		 port, code;

	port = env_setup_metrics(&e, ups, 2, NULL, 0);
	body = env_http_get(port, "/metrics", &code);
	cr_assert_eq(code, 200);
	COUNT(body, "miltermux_sessions_total", 0);
	COUNT(body, "miltermux_messages_total{verdict=\"continue\"}", 0);
	COUNT(body, "miltermux_upstream_up{upstream=\"a\"}", 1);
	free(body);

	open_session(&e, &m);
	cr_assert_eq(message(&m, "<alice@example.org>", ok1, 1, w1),
	    VERDICT_CONTINUE);
	cr_assert_eq(message(&m, "<alice@example.org>", ok2, 2, w2),
	    VERDICT_CONTINUE);
	cr_assert_eq(message(&m, "<spam@example.org>", ok1, 1, w1),
	    VERDICT_REJECT);
	body = env_http_get(port, "/metrics", &code);
	COUNT(body, "miltermux_sessions_open", 1);
	COUNT(body, "miltermux_sessions_total", 1);
	free(body);
	mta_quit(&m);
	mta_close(&m);

	open_session(&e, &m);
	cr_assert_eq(message(&m, "<spam@example.org>", ok1, 1, w1),
	    VERDICT_REJECT);
	cr_assert_eq(message(&m, "<dave@example.org>", ok1, 1, w1),
	    VERDICT_CONTINUE);
	cr_assert_eq(say(mta_mail(&m, &from, 1, &r), &r), VERDICT_CONTINUE);
	cr_assert_eq(mta_abort(&m), 0);
	mta_quit(&m);
	mta_close(&m);

	body = env_scrape_until(port, "miltermux_sessions_open", 0);
	COUNT(body, "miltermux_sessions_open", 0);
	COUNT(body, "miltermux_sessions_total", 2);
	COUNT(body, "miltermux_messages_total{verdict=\"continue\"}", 3);
	COUNT(body, "miltermux_messages_total{verdict=\"reject\"}", 2);
	COUNT(body, "miltermux_messages_total{verdict=\"aborted\"}", 1);
	COUNT(body, "miltermux_messages_total{verdict=\"tempfail\"}", 0);
	COUNT(body, "miltermux_messages_total{verdict=\"accept\"}", 0);
	COUNT(body, "miltermux_upstream_verdicts_total{upstream=\"b\","
	    "verdict=\"reject\"}", 2);
	COUNT(body, "miltermux_upstream_verdicts_total{upstream=\"a\","
	    "verdict=\"reject\"}", 0);
	COUNT(body, "miltermux_upstream_failures_total{upstream=\"a\","
	    "reason=\"timeout\"}", 0);
	COUNT(body, "miltermux_upstream_up{upstream=\"a\"}", 1);
	COUNT(body, "miltermux_upstream_up{upstream=\"b\"}", 1);
	/* One stage answer per command: 6 MAIL, 6 RCPT, 5 end of message. */
	COUNT(body, "miltermux_stage_seconds_count{stage=\"envfrom\"}", 6);
	COUNT(body, "miltermux_stage_seconds_count{stage=\"envrcpt\"}", 6);
	COUNT(body, "miltermux_stage_seconds_count{stage=\"eom\"}", 5);
	COUNT(body, "miltermux_stage_seconds_bucket{stage=\"eom\","
	    "le=\"+Inf\"}", 5);
	COUNT(body, "miltermux_stage_seconds_count{stage=\"connect\"}", 2);
	cr_assert(env_metric(body, "miltermux_stage_seconds_sum{stage=\"eom\"}")
	    > 0);
	free(body);
	env_stop(&e, 5);
}

/*
 * /healthz says 200 while serving; after SIGTERM, with a session held
 * open so that miltermux drains, 503 "draining", and /status says so.
 */
Test(metrics, healthz_503_while_draining, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = { { "a", { NULL }, NULL } };
	struct mta	 m;
	char		*body = NULL;
	int		 port, code = 0;
	json_t		*st;
	json_error_t	 jerr;

	port = env_setup_metrics(&e, ups, 1, NULL, 0);
	body = env_http_get(port, "/healthz", &code);
	cr_assert_eq(code, 200, "/healthz: %d: %s", code, body);
	cr_assert_str_eq(body, "ok\n");
	free(body);
	open_session(&e, &m);
	cr_assert_eq(h_kill(e.mux, SIGTERM), 0);
	free(env_wait_log(&e, "not accepting new connections"));
	body = env_http_get(port, "/healthz", &code);
	cr_assert_eq(code, 503, "/healthz while draining: %d: %s", code,
	    body);
	cr_assert_str_eq(body, "draining\n");
	free(body);
	body = env_http_get(port, "/status", &code);
	cr_assert_eq(code, 200);
	st = json_loads(body, 0, &jerr);
	cr_assert(st != NULL, "/status is not JSON: %s: %s", jerr.text, body);
	cr_assert(json_is_true(json_object_get(st, "draining")), "%s", body);
	cr_assert_eq(json_integer_value(json_object_get(json_object_get(st,
	    "sessions"), "open")), 1, "%s", body);
	json_decref(st);
	free(body);
	mta_quit(&m);
	mta_close(&m);
	cr_assert_eq(h_wait_exit(e.mux, 10, NULL), 0, "did not stop");
	e.mux = 0;
	env_stop(&e, 5);
}

/*
 * The only upstream is down: the first session's connect fails, the
 * breaker (failures 1) opens, and /healthz says 503; /metrics counts
 * the failure as "connect" and the upstream as down; /status shows it.
 */
Test(metrics, healthz_503_when_every_upstream_is_down, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "down", { NULL }, "\"failures\": 1, \"retry_after\": 60, "
		    "\"on_failure\": \"accept\"" },
	};
	struct mta_result r;
	struct mta	 m;
	char		*body;
	int		 port, code;
	json_t		*st, *u;
	json_error_t	 jerr;

	port = env_setup_metrics(&e, ups, 1, NULL, 0);
	body = env_http_get(port, "/healthz", &code);
	cr_assert_eq(code, 200, "never tried yet: %d: %s", code, body);
	free(body);
	/* Nothing is asked: the connect stage's answer is on_failure's. */
	cr_assert_eq(mta_open(&m, e.mux_spec, 30), 0);
	cr_assert_eq(mta_negotiate(&m, MA_ALL, MP_ALL_V6), 0);
	cr_assert_eq(mta_connect(&m, "client.example", "192.0.2.1", &r), 0);
	mta_result_fini(&r);
	mta_quit(&m);
	mta_close(&m);
	body = env_http_get(port, "/healthz", &code);
	cr_assert_eq(code, 503, "/healthz: %d: %s", code, body);
	cr_assert_str_eq(body, "every upstream is down\n");
	free(body);
	body = env_http_get(port, "/metrics", &code);
	COUNT(body, "miltermux_upstream_up{upstream=\"down\"}", 0);
	COUNT(body, "miltermux_upstream_failures_total{upstream=\"down\","
	    "reason=\"connect\"}", 1);
	COUNT(body, "miltermux_upstream_failures_total{upstream=\"down\","
	    "reason=\"protocol\"}", 0);
	free(body);
	body = env_http_get(port, "/status", &code);
	cr_assert_eq(code, 200);
	st = json_loads(body, 0, &jerr);
	cr_assert(st != NULL, "/status is not JSON: %s: %s", jerr.text, body);
	cr_assert(json_is_false(json_object_get(st, "healthy")), "%s", body);
	u = json_array_get(json_object_get(st, "upstreams"), 0);
	cr_assert_str_eq(json_string_value(json_object_get(u, "name")),
	    "down");
	cr_assert(strstr(json_string_value(json_object_get(u, "address")),
	    "down.sock") != NULL, "%s", body);
	cr_assert_str_eq(json_string_value(json_object_get(u, "breaker")),
	    "down");
	cr_assert(json_is_false(json_object_get(u, "up")), "%s", body);
	json_decref(st);
	free(body);
	body = env_http_get(port, "/nothing", &code);
	cr_assert_eq(code, 404);
	free(body);
	env_stop(&e, 5);
}

/* post_one - one SMTP transaction through Postfix; its final code */
static int
post_one(struct h_smtp *s, const char *from, const char *const *rcpt)
{
	char	*reply = NULL;
	int	 code;

	code = h_smtp_send(s, from, rcpt,
	    "Subject: metrics\n\nHello.\n", &reply);
	free(reply);
	return code;
}

/*
 * Through a private Postfix: 4 messages delivered (one with a recipient
 * refused by "a"), 2 rejected at end of message by "b": the metrics
 * count exactly those messages and verdicts, and the sink got 4.
 */
Test(metrics, postfix_counts_exactly_the_messages_sent, .timeout = 120,
    .fini = fini)
{
	struct env	 e;
	struct h_smtp	 s;
	struct up	 ups[] = {
		{ "a", { "--reject-rcpt", "<bad@example.net>", NULL }, NULL },
		{ "b", { "--only-from", "<spam@example.org>", "--verdict",
		    "eom=reject", NULL }, NULL },
	};
	const char	*good[] = { "bob@example.net", NULL };
	const char	*two[] = { "bob@example.net", "carol@example.net",
			    NULL };
	char		*spec, *reply = NULL, *body;
	int		 port, code, rc;

	port = env_setup_metrics(&e, ups, 2, NULL, 1);
	spec = h_xasprintf("inet:127.0.0.1:%d", e.mux_port);
	rc = h_postfix_start(&pf, spec, NULL);
	free(spec);
	if (rc == -EPERM || rc == -ENOENT)
		cr_skip_test("no private Postfix here: %s", strerror(-rc));
	cr_assert_eq(rc, 0, "h_postfix_start: %s", strerror(-rc));
	code = h_smtp_open(&s, "127.0.0.1", pf.smtpd_port, &reply);
	cr_assert_eq(code, 220);
	free(reply);
	reply = NULL;
	cr_assert_eq(h_smtp_cmd(&s, "EHLO client.example.test", NULL), 250);
	cr_assert_eq(post_one(&s, "alice@example.org", good), 250);
	cr_assert_eq(post_one(&s, "alice@example.org", two), 250);
	cr_assert_eq(post_one(&s, "spam@example.org", good), 550);
	cr_assert_eq(post_one(&s, "dave@example.org", good), 250);
	cr_assert_eq(post_one(&s, "spam@example.org", two), 550);
	/* One recipient refused at RCPT, the message delivered. */
	cr_assert_eq(h_smtp_cmd(&s, "MAIL FROM:<erin@example.org>", NULL),
	    250);
	cr_assert_eq(h_smtp_cmd(&s, "RCPT TO:<bad@example.net>", NULL), 550);
	cr_assert_eq(h_smtp_cmd(&s, "RCPT TO:<bob@example.net>", NULL), 250);
	cr_assert_eq(h_smtp_data(&s, "Subject: m\n\nHi.\n", NULL), 250);
	h_smtp_close(&s);
	cr_assert_eq(h_sink_wait_messages(&pf, 4, 30), 4);

	body = env_scrape_until(port, "miltermux_sessions_open", 0);
	COUNT(body, "miltermux_sessions_open", 0);
	COUNT(body, "miltermux_messages_total{verdict=\"continue\"}", 4);
	COUNT(body, "miltermux_messages_total{verdict=\"reject\"}", 2);
	COUNT(body, "miltermux_messages_total{verdict=\"tempfail\"}", 0);
	COUNT(body, "miltermux_messages_total{verdict=\"aborted\"}", 0);
	COUNT(body, "miltermux_upstream_verdicts_total{upstream=\"b\","
	    "verdict=\"reject\"}", 2);
	COUNT(body, "miltermux_upstream_verdicts_total{upstream=\"b\","
	    "verdict=\"failed\"}", 0);
	COUNT(body, "miltermux_stage_seconds_count{stage=\"eom\"}", 6);
	COUNT(body, "miltermux_stage_seconds_count{stage=\"envrcpt\"}", 9);
	free(body);
	passed = true;
	env_stop(&e, 5);
}

/* write_conf - e's configuration with metrics on port and the named
 * upstreams (each on its fixture socket), then a reload */
static void
reload_with(struct env *e, int port, const char *ups_json)
{
	char	*cfg = h_xasprintf("{ \"listen\": \"%s\", \"threads\": 2, "
		    "\"metrics\": { \"listen\": \"inet:%d@127.0.0.1\" }, "
		    "\"upstreams\": [ %s ] }\n", e->mux_spec, port, ups_json);

	cr_assert_eq(h_write_file(e->conf, cfg), 0);
	free(cfg);
	cr_assert_eq(h_kill(e->mux, SIGUSR1), 0);
}

/*
 * An upstream that does not answer in time fails with reason
 * "timeout" and votes "failed" for the message; a reload that drops it
 * drops its series, and one that brings it back shows its counters as
 * they were (kept by name).
 */
Test(metrics, timeout_reason_and_upstreams_kept_by_name_across_reloads,
    .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { NULL }, NULL },
		{ "slow", { "--delay", "eom=1500", NULL },
		    "\"on_failure\": \"accept\", \"timeouts\": "
		    "{ \"content\": 0.3 }" },
	};
	const char	*rc1[] = { "<bob@example.net>" };
	const enum verdict w1[] = { VERDICT_CONTINUE };
	const char	*fail = "miltermux_upstream_failures_total{"
			    "upstream=\"slow\",reason=\"timeout\"}";
	char		*body, *a, *slow;
	struct mta	 m;
	int		 port, code;

	port = env_setup_metrics(&e, ups, 2, NULL, 0);
	open_session(&e, &m);
	cr_assert_eq(message(&m, "<alice@example.org>", rc1, 1, w1),
	    VERDICT_CONTINUE);
	mta_quit(&m);
	mta_close(&m);
	body = env_scrape_until(port, "miltermux_sessions_open", 0);
	COUNT(body, fail, 1);
	COUNT(body, "miltermux_upstream_verdicts_total{upstream=\"slow\","
	    "verdict=\"failed\"}", 1);
	COUNT(body, "miltermux_upstream_verdicts_total{upstream=\"a\","
	    "verdict=\"continue\"}", 1);
	COUNT(body, "miltermux_messages_total{verdict=\"continue\"}", 1);
	free(body);

	a = h_xasprintf("{ \"name\": \"a\", \"address\": \"unix:%s/a.sock\" }",
	    h_tmpdir());
	slow = h_xasprintf("%s, { \"name\": \"slow\", \"address\": "
	    "\"unix:%s/slow.sock\" }", a, h_tmpdir());
	reload_with(&e, port, a);
	free(env_wait_log(&e, "configuration reloaded"));
	body = env_http_get(port, "/metrics", &code);
	cr_assert_eq(code, 200);
	HASNT(body, "upstream=\"slow\"");
	COUNT(body, "miltermux_upstream_up{upstream=\"a\"}", 1);
	free(body);
	/* Back again: the same figures. */
	cr_assert_eq(h_write_file(e.mux_log, ""), 0);
	reload_with(&e, port, slow);
	free(env_wait_log(&e, "configuration reloaded"));
	body = env_http_get(port, "/metrics", &code);
	COUNT(body, fail, 1);
	COUNT(body, "miltermux_upstream_up{upstream=\"slow\"}", 1);
	free(body);
	free(a);
	free(slow);
	env_stop(&e, 5);
}

/* The reasons of upstream.c's failures, as its fail() calls give them. */
Test(metrics, failure_reasons_are_classified)
{
	static const struct {
		int			 err;
		const char		*why;
		enum metrics_reason	 want;
	} cases[] = {
		{ -ETIMEDOUT, "no answer in time", METRICS_TIMEOUT },
		{ -ECONNREFUSED, "connect", METRICS_CONNECT },
		{ -ENOENT, "connect", METRICS_CONNECT },
		{ -EMFILE, "connect", METRICS_LOCAL },
		{ -ENOMEM, "read", METRICS_LOCAL },
		{ 0, "connection closed before the reply", METRICS_CLOSED },
		{ 0, "connection closed inside a reply", METRICS_CLOSED },
		{ -EPIPE, "connection closed while a command was written",
		    METRICS_CLOSED },
		{ -ECONNRESET, "read", METRICS_CLOSED },
		{ -EPROTO, "reply 'x' is not a known command",
		    METRICS_PROTOCOL },
		{ -EMSGSIZE, "packet too large", METRICS_PROTOCOL },
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		cr_assert_eq(metrics_reason_of(cases[i].err, cases[i].why),
		    cases[i].want, "%s (%d): got %s, want %s", cases[i].why,
		    cases[i].err, metrics_reason_name(metrics_reason_of(
		    cases[i].err, cases[i].why)),
		    metrics_reason_name(cases[i].want));
}

/* A metrics port that another program holds: the start fails with
 * EX_UNAVAILABLE and says why. */
Test(metrics, port_held_by_another_program_fails_the_start, .timeout = 30)
{
	struct sockaddr_in	 sin = { .sin_family = AF_INET };
	socklen_t		 len = sizeof sin;
	char			*conf, *text, *out = NULL;
	const char		*argv[6];
	int			 fd, st = 0;

	fd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert(fd >= 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
	cr_assert_eq(listen(fd, 1), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
	conf = h_xasprintf("%s/held.json", h_tmpdir());
	text = h_xasprintf("{ \"listen\": \"unix:%s/held.sock\", "
	    "\"metrics\": { \"listen\": \"inet:%d@127.0.0.1\" }, "
	    "\"upstreams\": [ { \"name\": \"a\", \"address\": "
	    "\"unix:%s/a.sock\" } ] }", h_tmpdir(), ntohs(sin.sin_port),
	    h_tmpdir());
	cr_assert_eq(h_write_file(conf, text), 0);
	argv[0] = BIN("miltermux");
	argv[1] = "-f";
	argv[2] = "-c";
	argv[3] = conf;
	argv[4] = NULL;
	cr_assert_eq(h_run(argv, 20, &out, &st), 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 69,
	    "exit status %d: %s", st, out);
	HAS(out, "cannot listen for metrics on \"inet:");
	HAS(out, "Address already in use");
	close(fd);
	free(out);
	free(text);
	free(conf);
}
