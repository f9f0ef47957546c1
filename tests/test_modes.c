/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_modes - upstream modes: "monitor" (waited for, never applied)
 * and "shadow" (a copy off the latency path, never waited for), with
 * the real miltermux, real libmilter upstreams (testmilter, randmilter)
 * over real sockets, the raw MTA client, /metrics scraped with curl,
 * and one run through a private Postfix.
 *
 * Concurrency: Criterion runs each test in its own process.
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

#include "codec.h"
#include "fixture.h"
#include "harness.h"
#include "mtaclient.h"

/* wait_count - the log once it holds needle n times (10 s at most) */
static char *
wait_count(struct env *e, const char *needle, size_t n)
{
	char	*log = NULL;

	for (int i = 0; i < 200; i++) {
		free(log);
		log = env_mux_log(e);
		if (h_count(log, needle) >= n)
			break;
		nanosleep(&(struct timespec){ 0, 50 * 1000 * 1000 }, NULL);
	}
	return log;
}

static enum verdict
say(int rc, struct mta_result *r)
{
	enum verdict	 v = r->verdict;

	cr_assert_eq(rc, 0, "no answer");
	mta_result_fini(r);
	return v;
}

static void
open_session(struct env *e, struct mta *m, const char *host)
{
	struct mta_result	 r;

	cr_assert_eq(mta_open(m, e->mux_spec, 30), 0);
	cr_assert_eq(mta_negotiate(m, MA_ALL, MP_ALL_V6), 0);
	cr_assert_eq(mta_connect(m, host, "192.0.2.1", &r), 0);
	cr_assert_eq(say(0, &r), VERDICT_CONTINUE);
	cr_assert_eq(mta_helo(m, host, &r), 0);
	cr_assert_eq(say(0, &r), VERDICT_CONTINUE);
}

/*
 * message - one message that every enforcing upstream lets through:
 * each envelope stage must be answered continue; returns the end of
 * message's result (caller finishes it)
 */
static void
message(struct mta *m, const char *from, struct mta_result *eom)
{
	const char		*rcpt = "<bob@example.net>";
	struct mta_result	 r;

	cr_assert_eq(say(mta_mail(m, &from, 1, &r), &r), VERDICT_CONTINUE);
	cr_assert_eq(say(mta_rcpt(m, &rcpt, 1, &r), &r), VERDICT_CONTINUE);
	cr_assert_eq(say(mta_data(m, &r), &r), VERDICT_CONTINUE);
	(void)say(mta_header(m, "Subject", "modes", 5, &r), &r);
	(void)say(mta_eoh(m, &r), &r);
	(void)say(mta_body(m, "body\r\n", 6, &r), &r);
	cr_assert_eq(mta_eom(m, eom), 0, "no answer at end of message");
}

/* has_header_mod - does the end of message add header name? */
static bool
has_header_mod(const struct mta_result *r, const char *name)
{
	for (size_t i = 0; i < r->nmods; i++)
		if ((r->mods[i].kind == MOD_ADDHEADER ||
		    r->mods[i].kind == MOD_INSHEADER) &&
		    strcmp(r->mods[i].name, name) == 0)
			return true;
	return false;
}

/*
 * A monitor that rejects at end of message and adds a header, and one
 * that rejects at MAIL: the MTA hears continue at every stage and gets
 * only the enforcing upstream's header; the log says what each monitor
 * would have done; the metrics count their verdicts and the messages
 * they would have changed; the one that rejected at MAIL got no more of
 * that message.
 */
Test(modes, monitor_reject_and_changes_are_not_applied, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--addheader", "X-A:1", NULL }, NULL },
		{ "m1", { "--verdict", "eom=reject", "--addheader", "X-M1:1",
		    NULL }, "\"mode\": \"monitor\"" },
		{ "m2", { "--verdict", "envfrom=reject", NULL },
		    "\"mode\": \"monitor\", \"on_failure\": \"reject\"" },
	};
	struct mta_result r;
	struct mta	 m;
	char		*log, *body, *ulog;
	int		 port;

	port = env_setup_metrics(&e, ups, 3, NULL, 0);
	open_session(&e, &m, "client.example");
	for (int i = 0; i < 2; i++) {
		message(&m, "<alice@example.org>", &r);
		cr_assert(r.verdict == VERDICT_CONTINUE ||
		    r.verdict == VERDICT_ACCEPT, "end of message: %s",
		    proto_verdict_name(r.verdict));
		cr_assert(has_header_mod(&r, "X-A"), "a's header missing");
		cr_assert(!has_header_mod(&r, "X-M1"),
		    "a monitor's header was applied");
		cr_assert_eq(r.nmods, 1, "%zu modifications", r.nmods);
		mta_result_fini(&r);
	}
	mta_quit(&m);
	mta_close(&m);

	log = wait_count(&e, ": message (", 2);
	cr_assert_eq(h_count(log, " m1=reject(monitor, 1 modification)/"), 2,
	    "%s", log);
	cr_assert_eq(h_count(log, " m2=reject(monitor)/"), 2, "%s", log);
	cr_assert_eq(h_count(log, "; merged continue; 1 modification applied "
	    "(addheader=1);"), 2, "%s", log);
	free(log);
	body = env_http_get(port, "/metrics", NULL);
	COUNT(body, "miltermux_upstream_verdicts_total{upstream=\"m1\","
	    "verdict=\"reject\"}", 2);
	COUNT(body, "miltermux_upstream_verdicts_total{upstream=\"m2\","
	    "verdict=\"reject\"}", 2);
	COUNT(body, "miltermux_upstream_unapplied_total{upstream=\"m1\","
	    "mode=\"monitor\"}", 2);
	COUNT(body, "miltermux_upstream_unapplied_total{upstream=\"m2\","
	    "mode=\"monitor\"}", 2);
	COUNT(body, "miltermux_messages_total{verdict=\"continue\"}", 2);
	COUNT(body, "miltermux_messages_total{verdict=\"reject\"}", 0);
	free(body);
	/* m2 said reject at MAIL: nothing more of those messages. */
	ulog = h_read_file(e.up_log[2]);
	cr_assert_not_null(ulog);
	cr_assert_eq(h_count(ulog, " envfrom"), 2, "%s", ulog);
	cr_assert_eq(h_count(ulog, " envrcpt"), 0, "%s", ulog);
	cr_assert_eq(h_count(ulog, " eom"), 0, "%s", ulog);
	free(ulog);
	env_stop(&e, 1);
}

/*
 * A monitor whose on_failure is reject fails twice over: one never
 * answers in time, one is down.  The MTA gets the enforcing upstream's
 * answers all the same; the log says so.
 */
Test(modes, failing_monitor_changes_nothing, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { NULL }, NULL },
		{ "slow", { "--delay", "eom=3000", NULL },
		    "\"mode\": \"monitor\", \"on_failure\": \"reject\", "
		    "\"timeouts\": { \"content\": 0.3 }" },
		{ "down", { NULL }, "\"mode\": \"monitor\", "
		    "\"on_failure\": \"reject\"" },
	};
	struct mta_result r;
	struct mta	 m;
	char		*log;

	env_setup(&e, ups, 3, NULL, 0);
	open_session(&e, &m, "client.example");
	message(&m, "<alice@example.org>", &r);
	cr_assert(r.verdict == VERDICT_CONTINUE ||
	    r.verdict == VERDICT_ACCEPT, "end of message: %s",
	    proto_verdict_name(r.verdict));
	mta_result_fini(&r);
	mta_quit(&m);
	mta_close(&m);
	log = wait_count(&e, ": message (", 1);
	HAS(log, " slow=failed(monitor)/");
	HAS(log, " down=failed(monitor)/");
	HAS(log, "upstream slow: eom: no answer in time");
	HAS(log, "upstream down: negotiate: connect: ");
	cr_assert_eq(h_count(log, "; ignored (monitor)"), 2, "%s", log);
	HASNT(log, "applying on_failure=reject");
	HAS(log, "; merged continue; 0 modifications applied;");
	free(log);
	env_stop(&e, 1);
}

/*
 * A shadow that takes 500 ms at end of message and rejects: the MTA's
 * messages take far less (no wait for it); each message then gets its
 * shadow line with the verdict, and the metrics count them; nothing
 * dropped.
 */
Test(modes, shadow_does_not_delay_the_mta, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--addheader", "X-A:1", NULL }, NULL },
		{ "s", { "--delay", "eom=500", "--verdict", "eom=reject",
		    "--addheader", "X-S:1", NULL },
		    "\"mode\": \"shadow\"" },
	};
	struct mta_result r;
	struct mta	 m;
	char		*log, *body;
	double		 t0, worst = 0;
	int		 port;

	port = env_setup_metrics(&e, ups, 2, NULL, 0);
	open_session(&e, &m, "client.example");
	for (int i = 0; i < 3; i++) {
		t0 = h_now();
		message(&m, "<alice@example.org>", &r);
		if (h_now() - t0 > worst)
			worst = h_now() - t0;
		cr_assert(r.verdict == VERDICT_CONTINUE ||
		    r.verdict == VERDICT_ACCEPT);
		cr_assert_eq(r.nmods, 1);
		cr_assert(has_header_mod(&r, "X-A"));
		mta_result_fini(&r);
	}
	mta_quit(&m);
	mta_close(&m);
	cr_assert(worst < 0.2, "a message took %.0f ms", worst * 1000);

	log = wait_count(&e, ": shadow s (", 3);
	cr_assert_eq(h_count(log, ": shadow s ("), 3, "%s", log);
	cr_assert_eq(h_count(log, "): reject/"), 3, "%s", log);
	cr_assert_eq(h_count(log, "; 1 modification not applied"), 3, "%s",
	    log);
	/* The enforcing upstream's line does not name the shadow. */
	HASNT(log, " s=");
	free(log);
	body = env_http_get(port, "/metrics", NULL);
	COUNT(body, "miltermux_upstream_verdicts_total{upstream=\"s\","
	    "verdict=\"reject\"}", 3);
	COUNT(body, "miltermux_upstream_unapplied_total{upstream=\"s\","
	    "mode=\"shadow\"}", 3);
	COUNT(body, "miltermux_shadow_dropped_total{upstream=\"s\"}", 0);
	COUNT(body, "miltermux_messages_total{verdict=\"continue\"}", 3);
	free(body);
	env_stop(&e, 1);
}

/*
 * A shadow that takes 300 ms a message behind a queue of one: of 12
 * messages sent as fast as the MTA may, most are dropped for it; every
 * one is either replayed (a shadow line, a verdict counted) or dropped
 * (counted), exactly; and every MTA message is answered promptly.
 */
Test(modes, shadow_behind_drops_whole_messages_and_counts_them,
    .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { NULL }, NULL },
		{ "s", { "--delay", "eom=300", "--verdict", "eom=tempfail",
		    NULL }, "\"mode\": \"shadow\", \"shadow_queue\": 1" },
	};
	struct mta_result r;
	struct mta	 m;
	char		*log = NULL, *body = NULL;
	double		 t0, worst = 0, seen = 0, drop = 0;
	int		 port;

	port = env_setup_metrics(&e, ups, 2, NULL, 0);
	open_session(&e, &m, "client.example");
	for (int i = 0; i < 12; i++) {
		t0 = h_now();
		message(&m, "<alice@example.org>", &r);
		if (h_now() - t0 > worst)
			worst = h_now() - t0;
		cr_assert(r.verdict == VERDICT_CONTINUE ||
		    r.verdict == VERDICT_ACCEPT);
		mta_result_fini(&r);
	}
	mta_quit(&m);
	mta_close(&m);
	cr_assert(worst < 0.2, "a message took %.0f ms", worst * 1000);
	/* Wait until the queue has been worked off. */
	for (int i = 0; i < 100 && seen + drop < 12; i++) {
		free(body);
		nanosleep(&(struct timespec){ 0, 100 * 1000 * 1000 }, NULL);
		body = env_http_get(port, "/metrics", NULL);
		seen = env_metric(body, "miltermux_upstream_verdicts_total{"
		    "upstream=\"s\",verdict=\"tempfail\"}");
		drop = env_metric(body, "miltermux_shadow_dropped_total{"
		    "upstream=\"s\"}");
	}
	cr_assert_eq(seen + drop, 12, "replayed %g, dropped %g:\n%s", seen,
	    drop, body);
	cr_assert(drop >= 6, "only %g dropped", drop);
	free(body);
	log = wait_count(&e, "): tempfail/", (size_t)seen);
	cr_assert_eq(h_count(log, "): tempfail/"), (size_t)seen, "%s", log);
	/* The first drop is logged; more within a second are not. */
	cr_assert_eq(h_count(log, "message dropped: its queue is full"), 1,
	    "%s", log);
	free(log);
	env_stop(&e, 1);
}

/*
 * A shadow upstream that is down changes nothing for the MTA: answers
 * and changes as without it, promptly.  Its first message fails (one
 * failure line, "ignored"); its breaker (failures 1) then marks it down,
 * and the second is not tried: its line says "down".
 */
Test(modes, shadow_down_changes_nothing, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--addheader", "X-A:1", NULL }, NULL },
		{ "down", { NULL }, "\"mode\": \"shadow\", \"failures\": 1, "
		    "\"retry_after\": 60" },
	};
	struct mta_result r;
	struct mta	 m;
	char		*log;
	double		 t0;

	env_setup(&e, ups, 2, NULL, 0);
	open_session(&e, &m, "client.example");
	for (int i = 0; i < 2; i++) {
		t0 = h_now();
		message(&m, "<alice@example.org>", &r);
		cr_assert(h_now() - t0 < 0.2);
		cr_assert(r.verdict == VERDICT_CONTINUE ||
		    r.verdict == VERDICT_ACCEPT);
		cr_assert_eq(r.nmods, 1);
		cr_assert(has_header_mod(&r, "X-A"));
		mta_result_fini(&r);
		/* One at a time: the second after the breaker opened. */
		free(wait_count(&e, ": shadow down (", (size_t)i + 1));
	}
	mta_quit(&m);
	mta_close(&m);
	log = wait_count(&e, ": shadow down (", 2);
	cr_assert_eq(h_count(log, "): failed/"), 1, "%s", log);
	cr_assert_eq(h_count(log, "): down/"), 1, "%s", log);
	cr_assert_eq(h_count(log, "upstream down: negotiate: connect: "), 1,
	    "%s", log);
	HAS(log, "; ignored (shadow)");
	cr_assert_eq(h_count(log, "; merged continue; 1 modification applied "
	    "(addheader=1);"), 2, "%s", log);
	free(log);
	env_stop(&e, 1);
}

/*
 * At shutdown, a shadow's queue is worked off within shutdown_grace, no
 * longer: of 6 messages at 400 ms each with a grace of 1 s, a few are
 * replayed, the rest are dropped and said so; every message is one or
 * the other; the daemon is gone soon after the grace.
 */
Test(modes, shadow_drains_at_shutdown_within_the_grace, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { NULL }, NULL },
		{ "s", { "--delay", "eom=400", NULL }, "\"mode\": \"shadow\"" },
	};
	struct mta_result r;
	struct mta	 m;
	char		*log, *p;
	unsigned long	 dropped = 0;
	size_t		 replayed;
	double		 t0;
	int		 cut;

	env_setup(&e, ups, 2, "\"shutdown_grace\": 1", 0);
	open_session(&e, &m, "client.example");
	for (int i = 0; i < 6; i++) {
		message(&m, "<alice@example.org>", &r);
		mta_result_fini(&r);
	}
	mta_quit(&m);
	mta_close(&m);
	t0 = h_now();
	cr_assert_eq(h_kill(e.mux, SIGTERM), 0);
	cr_assert_eq(h_wait_exit(e.mux, 10, NULL), 0, "did not stop");
	e.mux = 0;
	/* The grace, and some slack for a loaded machine. */
	cr_assert(h_now() - t0 < 4, "took %.1f s to stop", h_now() - t0);
	log = env_mux_log(&e);
	replayed = h_count(log, "): continue/") + h_count(log, "): accept/");
	p = strstr(log, "shadow s: ");
	cr_assert_not_null(p, "%s", log);
	cr_assert_eq(sscanf(p, "shadow s: %lu queued", &dropped), 1, "%s",
	    log);
	cut = strstr(p, ", 1 cut off while replayed") != NULL &&
	    strstr(p, ", 1 cut off while replayed") < strchr(p, '\n');
	cr_assert_eq(replayed + dropped + (size_t)cut, 6, "replayed %zu, "
	    "dropped %lu, cut %d:\n%s", replayed, dropped, cut, log);
	/* 2.4 s of work for 1 s of grace: not everything was replayed. */
	cr_assert(dropped + (unsigned long)cut >= 1, "%s", log);
	cr_log_info("replayed %zu, dropped %lu, cut %d", replayed, dropped,
	    cut);
	free(log);
	env_stop(&e, 1);
}

/* ---- the same MTA results with and without a monitor and a shadow ---- */

#define EX_SESSIONS	16
#define EX_MESSAGES	2
#define EX_RCPTS	2

/*
 * run_script - sessions sN with messages mM, each stage as a Postfix
 * would go on after each answer; appends one line per message to out:
 * how it ended for the MTA, which recipients were refused, and the
 * changes it was asked to make.  A transaction (or session) that the
 * MTA was told to accept is accepted as is: its line is the same
 * whether or not the rest of it went through the milter.
 */
static void
run_script(struct env *e, char **out)
{
	struct mta_result	 r;
	struct mta		 m;
	char			 line[512], host[64], from[64], rcpt[64];
	enum verdict		 v;

	for (int s = 0; s < EX_SESSIONS; s++) {
		bool	 done = false, acc = false;

		snprintf(host, sizeof host, "s%d.example", s + 1);
		cr_assert_eq(mta_open(&m, e->mux_spec, 30), 0);
		cr_assert_eq(mta_negotiate(&m, MA_ALL, MP_ALL_V6), 0);
		v = say(mta_connect(&m, host, "192.0.2.1", &r), &r);
		if (v == VERDICT_CONTINUE)
			v = say(mta_helo(&m, host, &r), &r);
		if (v != VERDICT_CONTINUE) {
			done = true;
			acc = v == VERDICT_ACCEPT;
		}
		for (int k = 0; k < EX_MESSAGES; k++) {
			const char	*p;
			char		 refused[128] = "";
			const char	*end = NULL;
			size_t		 nok = 0;
			bool		 at_eom = false;
			char		*mods = h_xstrdup("");

			if (done) {
				snprintf(line, sizeof line, "s%d m%d %s\n",
				    s + 1, k + 1, acc ? "accept -" :
				    "session-refused");
				goto put;
			}
			snprintf(from, sizeof from, "<m%d@example.org>",
			    k + 1);
			p = from;
			v = say(mta_mail(&m, &p, 1, &r), &r);
			if (v != VERDICT_CONTINUE) {
				end = proto_verdict_name(v);
				goto ended;
			}
			for (int i = 0; i < EX_RCPTS && end == NULL; i++) {
				snprintf(rcpt, sizeof rcpt,
				    "<r%d@example.net>", i + 1);
				p = rcpt;
				v = say(mta_rcpt(&m, &p, 1, &r), &r);
				if (v == VERDICT_REJECT ||
				    v == VERDICT_TEMPFAIL) {
					snprintf(refused + strlen(refused),
					    sizeof refused - strlen(refused),
					    "r%d=%s,", i + 1,
					    proto_verdict_name(v));
					continue;
				}
				nok++;
				if (v != VERDICT_CONTINUE)
					end = proto_verdict_name(v);
			}
			if (end != NULL)
				goto ended;
			if (nok == 0) {
				end = "no-recipient";
				goto ended;
			}
			v = say(mta_data(&m, &r), &r);
			if (v == VERDICT_CONTINUE)
				v = say(mta_header(&m, "Subject", "x", 1, &r),
				    &r);
			if (v == VERDICT_CONTINUE || v == VERDICT_NONE)
				v = say(mta_eoh(&m, &r), &r);
			if (v == VERDICT_CONTINUE || v == VERDICT_NONE)
				v = say(mta_body(&m, "b\r\n", 3, &r), &r);
			if (v == VERDICT_CONTINUE || v == VERDICT_NONE) {
				cr_assert_eq(mta_eom(&m, &r), 0);
				at_eom = true;
				v = r.verdict;
				for (size_t i = 0; i < r.nmods; i++) {
					char *t = h_xasprintf("%s%s:%s,",
					    mods, codec_mod_kind_name(
					    r.mods[i].kind), r.mods[i].name !=
					    NULL ? r.mods[i].name : "");

					free(mods);
					mods = t;
				}
				mta_result_fini(&r);
				if (v == VERDICT_CONTINUE)
					v = VERDICT_ACCEPT;
			}
			end = proto_verdict_name(v);
ended:
			/* Ended before its end of message: the MTA tells
			 * the milter so (no answer is due). */
			if (!at_eom)
				cr_assert_eq(mta_abort(&m), 0);
			snprintf(line, sizeof line, "s%d m%d %s %s%s\n", s + 1,
			    k + 1, end, refused[0] != '\0' ? refused : "-",
			    mods);
put:
			free(mods);
			{
				char	*t = h_xasprintf("%s%s", *out, line);

				free(*out);
				*out = t;
			}
		}
		mta_quit(&m);
		mta_close(&m);
	}
}

Test(modes, monitor_and_shadow_leave_random_results_unchanged,
    .timeout = 120)
{
	struct env	 a, b;
	struct up	 ups[] = {
		{ "r1", { RANDMILTER, "--seed", "11", "--delay-max", "3",
		    NULL }, NULL },
		{ "r2", { RANDMILTER, "--seed", "11", "--delay-max", "3",
		    NULL }, NULL },
		{ "mon", { RANDMILTER, "--seed", "11", "--delay-max", "3",
		    NULL }, "\"mode\": \"monitor\"" },
		{ "sh", { RANDMILTER, "--seed", "11", "--delay-max", "3",
		    NULL }, "\"mode\": \"shadow\"" },
	};
	char		*without = h_xstrdup(""), *with = h_xstrdup(""), *log;

	env_setup(&a, ups, 2, NULL, 0);
	run_script(&a, &without);
	env_stop(&a, 1);
	env_setup(&b, ups, 4, NULL, 0);
	run_script(&b, &with);
	cr_log_info("results:\n%s", without);
	cr_assert_str_eq(with, without, "with a monitor and a shadow:\n%s\n"
	    "without:\n%s", with, without);
	/* They did take part: some monitor verdict other than continue,
	 * and some shadow line. */
	log = env_mux_log(&b);
	HAS(log, "(monitor)/");
	HAS(log, ": shadow sh (");
	free(log);
	free(with);
	free(without);
	env_stop(&b, 1);
}

/*
 * Through a private Postfix: a monitor and a shadow that both reject
 * at end of message; the mail is delivered, and the log says what each
 * would have done, under Postfix's queue id.
 */
Test(modes, postfix_delivers_what_monitor_and_shadow_reject,
    .timeout = 150, .fini = env_pf_fini)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "a", { "--addheader", "X-A:1", NULL }, NULL },
		{ "mon", { "--verdict", "eom=reject", "--addheader", "X-Mon:1",
		    NULL }, "\"mode\": \"monitor\"" },
		{ "sh", { "--verdict", "eom=reject", NULL },
		    "\"mode\": \"shadow\"" },
	};
	const char	*rcpt[] = { "<bob@example.net>", NULL };
	struct h_smtp	 s;
	char		*spec, *reply = NULL, *qid, *p, *log, *want, *msg;
	int		 code, rc;

	env_setup(&e, ups, 3, NULL, 1);
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
	code = h_smtp_send(&s, "<alice@example.org>", rcpt,
	    "From: alice@example.org\nSubject: modes\n\nbody\n", &reply);
	cr_assert_eq(code, 250, "end of data: %d: %s", code,
	    reply != NULL ? reply : "");
	p = strstr(reply, "queued as ");
	cr_assert_not_null(p, "no queue id in \"%s\"", reply);
	p += strlen("queued as ");
	qid = strndup(p, strcspn(p, " \r\n"));
	free(reply);
	h_smtp_close(&s);

	cr_assert_eq(h_sink_wait_messages(&env_pf, 1, 30), 1, "not delivered");
	msg = h_sink_message(&env_pf, 0);
	cr_assert_not_null(msg);
	HAS(msg, "X-A: 1");
	HASNT(msg, "X-Mon");
	free(msg);
	want = h_xasprintf("%s: shadow sh (", qid);
	log = env_wait_log(&e, want);
	p = strstr(log, want);
	cr_assert_not_null(p, "no \"%s\" in:\n%s", want, log);
	cr_assert_not_null(strstr(p, "): reject/"), "%s", log);
	free(want);
	want = h_xasprintf("%s: message (", qid);
	HAS(log, want);
	HAS(log, " mon=reject(monitor, 1 modification)/");
	HAS(log, "; merged continue; 1 modification applied (addheader=1);");
	free(want);
	free(log);
	free(qid);
	env_stop(&e, 1);
	env_pf_passed = true;
}
