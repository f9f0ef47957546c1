/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * pfbench - mail through a real Postfix with given milters, timed: the
 * benchmark's measure of what a milter set-up adds to an SMTP session
 * (bench/run, bench/README.md).
 *
 *   pfbench [-m MILTERS] [-n COUNT] [-c CONCURRENCY]
 *
 * A private Postfix (tests/harness.c: its own directories, smtpd on a
 * free 127.0.0.1 port, delivery to an smtp-sink) is started with
 * MILTERS as smtpd_milters (a space-separated list is Postfix's own
 * chain: each milter asked in turn; empty: no milter).  CONCURRENCY
 * client threads then send COUNT SMTP sessions in all, one message
 * each, and every session is timed from the connect to the reply to
 * the end of DATA (the milters' connect, HELO, envelope and content
 * stages all fall in it) and every message from MAIL FROM to that
 * reply.  One JSON object on stdout: counts by reply class and the
 * percentiles of both.  Needs root (Postfix's master).  Bounded: every
 * reply has a deadline, and COUNT sessions are sent at most.
 *
 * Concurrency: the client threads share the next session's number and
 * the results array (one slot each), through atomics only.
 */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define MAX_THREADS	256

static struct h_postfix	 pf;
static int		 count = 200;
static atomic_int	 next;
static double		*session_ms, *message_ms;
static atomic_int	 ok, tempfailed, rejected, failed;

static void *
client(void *arg)
{
	static const char *const	 rcpt[] = { "<rcpt@example.test>",
					     NULL };
	struct h_smtp			 s;
	char				*msg;
	double				 t0, t1;
	int				 i, code;

	(void)arg;
	while ((i = atomic_fetch_add(&next, 1)) < count) {
		t0 = h_now();
		code = h_smtp_open(&s, "127.0.0.1", pf.smtpd_port, NULL);
		if (code == 220)
			code = h_smtp_cmd(&s, "EHLO client.example.test",
			    NULL);
		t1 = h_now();
		if (code == 250) {
			msg = h_xasprintf("From: <sender@example.test>\n"
			    "To: <rcpt@example.test>\n"
			    "Subject: pfbench %d\n"
			    "Message-ID: <pfbench-%d@example.test>\n\n"
			    "A short body, line one.\nLine two.\n", i, i);
			t1 = h_now();
			code = h_smtp_send(&s, "<sender@example.test>", rcpt,
			    msg, NULL);
			free(msg);
		}
		session_ms[i] = (h_now() - t0) * 1000;
		message_ms[i] = (h_now() - t1) * 1000;
		h_smtp_close(&s);
		if (code == 250)
			atomic_fetch_add(&ok, 1);
		else if (code >= 400 && code < 500)
			atomic_fetch_add(&tempfailed, 1);
		else if (code >= 500 && code < 600)
			atomic_fetch_add(&rejected, 1);
		else
			atomic_fetch_add(&failed, 1);
	}
	return NULL;
}

static int
cmp(const void *a, const void *b)
{
	double	 x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double
pct(const double *v, int n, double p)
{
	int	 i = (int)(p / 100 * (n - 1) + 0.5);

	return n > 0 ? v[i] : 0;
}

static void
print_pcts(const char *name, double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp);
	printf("\"%s\": { \"p50\": %.3f, \"p95\": %.3f, \"p99\": %.3f, "
	    "\"max\": %.3f }", name, pct(v, n, 50), pct(v, n, 95),
	    pct(v, n, 99), n > 0 ? v[n - 1] : 0);
}

int
main(int argc, char **argv)
{
	pthread_t	 t[MAX_THREADS];
	const char	*milters = "";
	double		 t0, secs;
	int		 c = 4, ch, rc;

	while ((ch = getopt(argc, argv, "m:n:c:")) != -1)
		switch (ch) {
		case 'm':
			milters = optarg;
			break;
		case 'n':
			count = atoi(optarg);
			break;
		case 'c':
			c = atoi(optarg);
			break;
		default:
			fprintf(stderr, "usage: pfbench [-m MILTERS] "
			    "[-n COUNT] [-c CONCURRENCY]\n");
			return 64;
		}
	if (count < 1 || count > 1000000 || c < 1 || c > MAX_THREADS) {
		fprintf(stderr, "pfbench: -n 1..1000000, -c 1..%d\n",
		    MAX_THREADS);
		return 64;
	}
	session_ms = h_xmalloc(sizeof *session_ms * (size_t)count);
	message_ms = h_xmalloc(sizeof *message_ms * (size_t)count);
	/* Postfix's own milter timeouts are its defaults but for the
	 * content one, which the test harness shortens. */
	rc = h_postfix_start(&pf, milters[0] != '\0' ? milters : NULL,
	    "smtpd_client_connection_count_limit = 0\n"
	    "default_process_limit = 300\n");
	if (rc != 0) {
		fprintf(stderr, "pfbench: Postfix did not start: %s\n",
		    strerror(-rc));
		h_postfix_print_logs(&pf, stderr);
		h_postfix_fini(&pf);
		return 69;
	}
	t0 = h_now();
	for (int i = 0; i < c; i++)
		if (pthread_create(&t[i], NULL, client, NULL) != 0) {
			fprintf(stderr, "pfbench: pthread_create\n");
			return 71;
		}
	for (int i = 0; i < c; i++)
		pthread_join(t[i], NULL);
	secs = h_now() - t0;
	(void)h_postfix_stop(&pf);
	printf("{ \"milters\": \"%s\", \"count\": %d, \"concurrency\": %d, "
	    "\"seconds\": %.3f, \"sessions_per_second\": %.1f, "
	    "\"results\": { \"passed\": %d, \"tempfailed\": %d, "
	    "\"rejected\": %d, \"failed\": %d }, ", milters, count, c, secs,
	    count / secs, atomic_load(&ok), atomic_load(&tempfailed),
	    atomic_load(&rejected), atomic_load(&failed));
	print_pcts("session_ms", session_ms, count);
	printf(", ");
	print_pcts("message_ms", message_ms, count);
	printf(" }\n");
	h_postfix_fini(&pf);
	return atomic_load(&ok) == count ? 0 : 1;
}
