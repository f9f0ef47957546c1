/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_restart - a restart under load through a real Postfix refuses
 * and tempfails nothing.
 *
 * miltermux listens on 127.0.0.1 (or a unix socket, which the new
 * instance replaces) in a private Postfix's smtpd_milters
 * (milter_default_action = tempfail, so a milter that cannot be reached
 * or goes away shows as a 4xx), in front of one testmilter that adds a
 * header to every message.  A few client threads send a few hundred SMTP
 * sessions, one message each; meanwhile the documented restart happens
 * (miltermux(8), RESTARTING AND UPGRADING): a second miltermux is
 * started on the same address and, once it logs that it listens, the
 * first one gets SIGTERM.  Every SMTP reply is counted: no connection
 * refused, no 4xx, and every message reaches the sink with the
 * testmilter's header, so every one of them was scanned.  Both
 * instances must have served some of them, and the old one must have
 * exited on its own, having seen its successor.
 *
 * Concurrency: Criterion runs the test in its own process; the client
 * threads share only the atomic counters below.
 */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "fixture.h"
#include "harness.h"

#define CLIENTS		4
#define PER_CLIENT	100
#define TOTAL		(CLIENTS * PER_CLIENT)

static struct h_postfix	pf;
static bool		passed;

static atomic_int	done;		/* sessions finished */
static atomic_int	delivered;	/* 250 after the data */
static atomic_int	refused;	/* no 220 greeting */
static atomic_int	tempfailed;	/* a 4xx anywhere */
static atomic_int	other;		/* anything else */
static char		first_bad[512];
static atomic_flag	first_bad_set = ATOMIC_FLAG_INIT;

static void
fini(void)
{
	(void)h_postfix_stop(&pf);
	if (!passed && pf.dir != NULL)
		h_postfix_print_logs(&pf, stderr);
	h_postfix_fini(&pf);
}

static void
note_bad(const char *what, int code, const char *reply)
{
	if (!atomic_flag_test_and_set(&first_bad_set))
		snprintf(first_bad, sizeof first_bad, "%s: %d %s", what, code,
		    reply != NULL ? reply : strerror(code < 0 ? -code : 0));
}

/* client - PER_CLIENT sessions, one after the other, one message each */
static void *
client(void *arg)
{
	static const char *const	 rcpt[] = { "<rcpt@example.test>",
					     NULL };
	struct h_smtp			 s;
	char				*reply, *msg;
	int				 id = (int)(long)arg, code;

	for (int i = 0; i < PER_CLIENT; i++) {
		reply = NULL;
		code = h_smtp_open(&s, "127.0.0.1", pf.smtpd_port, &reply);
		if (code != 220) {
			atomic_fetch_add(&refused, 1);
			note_bad("greeting", code, reply);
			free(reply);
			h_smtp_close(&s);
			atomic_fetch_add(&done, 1);
			continue;
		}
		free(reply);
		reply = NULL;
		code = h_smtp_cmd(&s, "EHLO client.example.test", &reply);
		if (code == 250) {
			free(reply);
			reply = NULL;
			msg = h_xasprintf("From: <sender@example.test>\n"
			    "To: <rcpt@example.test>\n"
			    "Subject: restart %d-%d\n\nbody %d-%d\n", id, i,
			    id, i);
			code = h_smtp_send(&s, "<sender@example.test>", rcpt,
			    msg, &reply);
			free(msg);
		}
		if (code == 250)
			atomic_fetch_add(&delivered, 1);
		else if (code >= 400 && code < 500) {
			atomic_fetch_add(&tempfailed, 1);
			note_bad("transaction", code, reply);
		} else {
			atomic_fetch_add(&other, 1);
			note_bad("transaction", code, reply);
		}
		free(reply);
		h_smtp_close(&s);
		atomic_fetch_add(&done, 1);
	}
	return NULL;
}

static int
log_count(const char *log, const char *needle)
{
	int	 n = 0;

	for (const char *p = log; (p = strstr(p, needle)) != NULL; p++)
		n++;
	return n;
}

/* run - the load and the restart, with miltermux on inet or unix */
static void
run(int inet)
{
	static const struct up	 ups[] = {
		{ "a", { "--addheader", "X-Scanned:restart-test", NULL },
		    NULL },
	};
	struct env		 e;
	pthread_t		 t[CLIENTS];
	const char		*argv[6];
	char			*spec, *log1, *log2, *mlog, *log2path, *msg;
	pid_t			 old, new;
	double			 t0, dt;
	int			 rc, status, n, n_exit, scanned;

	/* Postfix's smtpd connects as the postfix user. */
	env_setup(&e, ups, 1, inet ? "\"shutdown_grace\": 20" :
	    "\"shutdown_grace\": 20, \"socket_mode\": \"0666\"", inet);
	spec = inet ? h_xasprintf("inet:127.0.0.1:%d", e.mux_port) :
	    h_xasprintf("unix:%s", e.mux_sock);
	rc = h_postfix_start(&pf, spec, NULL);
	if (rc == -EPERM || rc == -ENOENT)
		cr_skip_test("no private Postfix here: %s", strerror(-rc));
	cr_assert_eq(rc, 0, "h_postfix_start: %s", strerror(-rc));
	free(spec);

	for (long i = 0; i < CLIENTS; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, client, (void *)i),
		    0);

	/* A third of the way through: the documented restart. */
	for (int i = 0; i < 600 && atomic_load(&done) < TOTAL / 3; i++)
		usleep(50000);
	old = e.mux;
	log2path = h_path("miltermux2.log");
	argv[0] = BIN("miltermux");
	argv[1] = "-f";
	argv[2] = "-c";
	argv[3] = e.conf;
	argv[4] = NULL;
	new = h_spawn(argv, log2path);
	cr_assert_gt(new, 0);
	cr_assert_eq(h_wait_file_contains(log2path, "listening on", 10), 0,
	    "the new miltermux did not start");
	n = atomic_load(&done);
	t0 = h_now();
	cr_assert_eq(h_kill(old, SIGTERM), 0);
	cr_assert_eq(h_wait_exit(old, 30, &status), 0,
	    "the old miltermux did not exit");
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "old miltermux: status 0x%x", status);
	e.mux = new;
	dt = h_now() - t0;
	n_exit = atomic_load(&done);

	for (int i = 0; i < CLIENTS; i++)
		pthread_join(t[i], NULL);

	cr_assert_eq(atomic_load(&refused), 0, "refused: %d; first: %s",
	    atomic_load(&refused), first_bad);
	cr_assert_eq(atomic_load(&tempfailed), 0, "tempfailed: %d; first: %s",
	    atomic_load(&tempfailed), first_bad);
	cr_assert_eq(atomic_load(&other), 0, "other: %d; first: %s",
	    atomic_load(&other), first_bad);
	cr_assert_eq(atomic_load(&delivered), TOTAL);

	cr_assert_eq(h_sink_wait_messages(&pf, TOTAL, 60), TOTAL);
	scanned = 0;
	for (int i = 0; i < TOTAL; i++) {
		msg = h_sink_message(&pf, i);
		cr_assert_not_null(msg, "message %d missing", i);
		if (strstr(msg, "\nX-Scanned: restart-test\n") != NULL)
			scanned++;
		free(msg);
	}
	cr_assert_eq(scanned, TOTAL, "scanned %d of %d", scanned, TOTAL);

	log1 = env_mux_log(&e);
	log2 = h_read_file(log2path);
	/* The old one was told to stop in the middle of the load, and
	 * stopped within seconds (it waits up to 2 s for the fixture's
	 * port probe, accepted and never begun). */
	cr_assert(n > 0 && n < TOTAL * 2 / 3 && dt < 10, "%d sessions done at "
	    "SIGTERM, %d when it exited %.3f s later: %s", n, n_exit, dt,
	    strstr(log1, "received SIGTERM") != NULL ?
	    strstr(log1, "received SIGTERM") : log1);
	HAS(log1, "received SIGTERM: a new miltermux listens on the same "
	    "address");
	HAS(log1, "all sessions ended; the new miltermux serves on");
	cr_assert_gt(log_count(log1, ": message ("), 0, "%s", log1);
	cr_assert_gt(log_count(log2, ": message ("), 0, "%s", log2);
	cr_assert_eq(log_count(log1, ": message (") +
	    log_count(log2, ": message ("), TOTAL);
	mlog = h_postfix_log(&pf);
	HASNT(mlog, "warning: milter");
	free(mlog);
	free(log1);
	free(log2);
	free(log2path);
	env_stop(&e, 5);
	passed = true;
}

Test(restart, on_inet_under_postfix_load_refuses_and_tempfails_nothing,
    .timeout = 120, .fini = fini)
{
	run(1);
}

Test(restart, on_unix_under_postfix_load_refuses_and_tempfails_nothing,
    .timeout = 120, .fini = fini)
{
	run(0);
}
