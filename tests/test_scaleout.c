/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_scaleout - a scale-out tier: several miltermux instances behind
 * HAProxy in TCP mode (miltermux(8), SCALING OUT; the configuration is
 * etc/haproxy-miltermux.cfg with this test's ports).
 *
 * The mail path: the test's SMTP clients hand messages to an "edge"
 * Postfix, which relays them (one SMTP session per message) to the
 * filtering Postfix, whose smtpd_milters is HAProxy; HAProxy passes
 * each milter connection to one of two miltermux instances, each in
 * front of its own testmilter, which adds "X-Scanned: mux1" or
 * "X-Scanned: mux2" after 300 ms at end of message (so that sessions
 * are in flight at any moment; mux1 is stopped while it has at least
 * three open).  The filtering Postfix relays to its
 * sink.  Both Postfix instances have milter_default_action = tempfail
 * (the harness's): a milter that goes away mid-session makes the
 * filtering Postfix answer 4xx, and the edge Postfix defers the
 * message and sends it again; the test hastens that with postqueue -f
 * on the edge instance.
 *
 * Under load, one instance is stopped:
 * - SIGKILL: its sessions in flight are deferred (at least one), then
 *   delivered through the survivor; HAProxy's health check (GET
 *   /healthz on the metrics listener) marks it down.
 * - SIGTERM: it closes its milter port at once, answers /healthz with
 *   503, finishes its sessions and exits; nothing is deferred at all.
 * Either way every message sent reaches the sink exactly once, with
 * exactly one X-Scanned header; each instance's decision log counts
 * the messages it scanned; and a batch sent after the stop is scanned
 * by the survivor alone.
 *
 * A test without Postfix or HAProxy checks the fix these need: after
 * SIGTERM the milter port refuses at once (it used to accept and
 * tempfail until the process exited), while the session in flight
 * finishes.  And the shipped example configuration must be valid.
 *
 * Concurrency: Criterion runs each test in its own process; the client
 * threads share only the atomic counters.
 */
#define _DEFAULT_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "fixture.h"
#include "harness.h"

#define CLIENTS		4
#define PER_CLIENT	30
#define TOTAL		(CLIENTS * PER_CLIENT)
#define AFTER		20		/* sent once the stop is over */
#define EXAMPLE		PACKAGE_SRCDIR "/etc/haproxy-miltermux.cfg"

static struct h_postfix	edge, filter;
static bool		edge_started, filter_started, passed;
static char		*haproxy_log;

static atomic_int	accepted;	/* 250 from the edge */
static atomic_int	failed;		/* anything else */
static char		first_bad[512];
static atomic_flag	first_bad_set = ATOMIC_FLAG_INIT;

/* One miltermux instance with its testmilter. */
struct inst {
	const char	*name;		/* mux1, mux2 */
	int		 port, mport;	/* milter, metrics */
	char		*log, *conf, *tm_log;
	pid_t		 pid, tm_pid;
};

static void
print_file(const char *what, const char *path)
{
	char	*s = path != NULL ? h_read_file(path) : NULL;

	fprintf(stderr, "----- %s -----\n%s\n", what,
	    s != NULL ? s : "(none)");
	free(s);
}

static void
fini(void)
{
	if (filter_started) {
		(void)h_postfix_stop(&filter);
		if (!passed)
			h_postfix_print_logs(&filter, stderr);
		h_postfix_fini(&filter);
	}
	if (edge_started) {
		(void)h_postfix_stop(&edge);
		if (!passed)
			h_postfix_print_logs(&edge, stderr);
		h_postfix_fini(&edge);
	}
	if (!passed)
		print_file("haproxy", haproxy_log);
}

/* inst_start - the instance's testmilter, then miltermux on a free
 * port with its metrics on another */
static void
inst_start(struct inst *in, const char *name)
{
	const char	*argv[12];
	char		*sock, *spec, *hdr, *cfg;

	in->name = name;
	sock = h_xasprintf("%s/%s-tm.sock", h_tmpdir(), name);
	spec = h_xasprintf("unix:%s", sock);
	hdr = h_xasprintf("X-Scanned:%s", name);
	in->tm_log = h_xasprintf("%s/%s-tm.log", h_tmpdir(), name);
	argv[0] = BIN("tests/milters/testmilter");
	argv[1] = "-p";
	argv[2] = spec;
	argv[3] = "-n";
	argv[4] = name;
	argv[5] = "--addheader";
	argv[6] = hdr;
	argv[7] = "--delay";
	argv[8] = "eom=300";
	argv[9] = NULL;
	in->tm_pid = h_spawn(argv, in->tm_log);
	cr_assert_gt(in->tm_pid, 0);
	cr_assert_eq(h_wait_unix(sock, 10), 0, "testmilter %s", name);

	in->port = h_free_port();
	do
		in->mport = h_free_port();
	while (in->mport == in->port);
	cr_assert(in->port > 0 && in->mport > 0);
	in->log = h_xasprintf("%s/%s.log", h_tmpdir(), name);
	in->conf = h_xasprintf("%s/%s.json", h_tmpdir(), name);
	cfg = h_xasprintf("{\n\"listen\": \"inet:%d@127.0.0.1\",\n"
	    "\"threads\": 4,\n\"shutdown_grace\": 20,\n"
	    "\"metrics\": { \"listen\": \"inet:%d@127.0.0.1\" },\n"
	    "\"upstreams\": [ { \"name\": \"tm\", \"address\": \"%s\" } ]\n}\n",
	    in->port, in->mport, spec);
	cr_assert_eq(h_write_file(in->conf, cfg), 0);
	argv[0] = BIN("miltermux");
	argv[1] = "-f";
	argv[2] = "-c";
	argv[3] = in->conf;
	argv[4] = NULL;
	in->pid = h_spawn(argv, in->log);
	cr_assert_gt(in->pid, 0);
	/* Its log line, not a probe: a probe is an accepted connection
	 * that never begins, which a stop waits out. */
	cr_assert_eq(h_wait_file_contains(in->log, "listening on", 10), 0,
	    "%s did not start", name);
	cr_assert_eq(h_wait_port(in->mport, 10), 0);
	free(sock);
	free(spec);
	free(hdr);
	free(cfg);
}

/* sessions_open - miltermux_sessions_open from the instance's /metrics,
 * or -1 */
static int
sessions_open(const struct inst *in)
{
	static const char	 name[] = "\nmiltermux_sessions_open ";
	char			*url, *out = NULL, *p;
	int			 n = -1;

	url = h_xasprintf("http://127.0.0.1:%d/metrics", in->mport);
	{
		const char	*argv[] = { "curl", "-sS", "-m", "5", url, NULL };

		if (h_run(argv, 10, &out, NULL) == 0 && out != NULL &&
		    (p = strstr(out, name)) != NULL)
			n = atoi(p + strlen(name));
	}
	free(out);
	free(url);
	return n;
}

/* replace - every "from" in s by "to"; s is freed, the result returned */
static char *
replace(char *s, const char *from, const char *to)
{
	char	*p, *r;

	cr_assert(strstr(s, from) != NULL, "\"%s\" not in the example", from);
	while ((p = strstr(s, from)) != NULL) {
		r = h_xasprintf("%.*s%s%s", (int)(p - s), s, to,
		    p + strlen(from));
		free(s);
		s = r;
	}
	return s;
}

/*
 * haproxy_start - etc/haproxy-miltermux.cfg with this test's ports and
 * a quicker health check, in the foreground (-db); returns its port
 */
static int
haproxy_start(const struct inst *a, const struct inst *b, pid_t *pid)
{
	const char	*argv[6];
	char		*cfg, *path, *to;
	int		 port;

	cfg = h_read_file(EXAMPLE);
	cr_assert_not_null(cfg, "%s", EXAMPLE);
	port = h_free_port();
	cr_assert_gt(port, 0);
	to = h_xasprintf("127.0.0.1:%d", port);
	cfg = replace(cfg, "127.0.0.1:8890", to);
	free(to);
	to = h_xasprintf("127.0.0.1:%d check port %d", a->port, a->mport);
	cfg = replace(cfg, "127.0.0.1:8891 check port 9891", to);
	free(to);
	to = h_xasprintf("127.0.0.1:%d check port %d", b->port, b->mport);
	cfg = replace(cfg, "127.0.0.1:8892 check port 9892", to);
	free(to);
	cfg = replace(cfg, "inter 1s", "inter 200ms");
	path = h_path("haproxy.cfg");
	cr_assert_eq(h_write_file(path, cfg), 0);
	haproxy_log = h_path("haproxy.log");
	argv[0] = "haproxy";
	argv[1] = "-db";
	argv[2] = "-f";
	argv[3] = path;
	argv[4] = NULL;
	*pid = h_spawn(argv, haproxy_log);
	if (*pid == -ENOENT)
		cr_skip_test("no haproxy here (Debian: apt-get install "
		    "haproxy)");
	cr_assert_gt(*pid, 0);
	/* Ready once its frontend accepts (the probe reaches an instance
	 * as a connection that never begins a session). */
	cr_assert_eq(h_wait_port(port, 10), 0, "haproxy did not start");
	free(cfg);
	free(path);
	return port;
}

static void
note_bad(const char *what, int code, const char *reply)
{
	if (!atomic_flag_test_and_set(&first_bad_set))
		snprintf(first_bad, sizeof first_bad, "%s: %d %s", what, code,
		    reply != NULL ? reply : strerror(code < 0 ? -code : 0));
}

/* send_range - messages first..last-1 to the edge, one session each */
static void
send_range(int first, int last)
{
	static const char *const	 rcpt[] = { "<rcpt@example.test>",
					     NULL };
	struct h_smtp			 s;
	char				*reply, *msg;
	int				 code;

	for (int i = first; i < last; i++) {
		reply = NULL;
		code = h_smtp_open(&s, "127.0.0.1", edge.smtpd_port, &reply);
		if (code == 220) {
			free(reply);
			reply = NULL;
			code = h_smtp_cmd(&s, "EHLO client.example.test",
			    &reply);
		}
		if (code == 250) {
			free(reply);
			reply = NULL;
			msg = h_xasprintf("From: <sender@example.test>\n"
			    "To: <rcpt@example.test>\n"
			    "Subject: scaleout %d.\n\nbody %d\n", i, i);
			code = h_smtp_send(&s, "<sender@example.test>", rcpt,
			    msg, &reply);
			free(msg);
		}
		if (code == 250)
			atomic_fetch_add(&accepted, 1);
		else {
			atomic_fetch_add(&failed, 1);
			note_bad("edge", code, reply);
		}
		free(reply);
		h_smtp_close(&s);
	}
}

static void *
client(void *arg)
{
	int	 id = (int)(long)arg;

	send_range(id * PER_CLIENT, (id + 1) * PER_CLIENT);
	return NULL;
}

/* flush_until - postqueue -f on the edge until the filter's sink has n
 * messages; returns what it has */
static int
flush_until(int n, double timeout_s)
{
	const char	*argv[] = { "postqueue", "-c", edge.config_dir, "-f",
			    NULL };
	double		 deadline = h_now() + timeout_s;
	int		 got = 0;

	while (h_now() < deadline) {
		got = h_sink_wait_messages(&filter, n, 1.0);
		if (got >= n)
			return got;
		cr_assert_eq(h_run(argv, 10, NULL, NULL), 0);
	}
	return h_sink_count(&filter);
}

/*
 * check_sink - every message 0..total-1 exactly once, each with one
 * X-Scanned header; *by1 and *by2 count mux1's and mux2's; the messages
 * numbered from only_mux2 on must all be mux2's
 */
static void
check_sink(int total, int only_mux2, int *by1, int *by2)
{
	int	*seen = h_xmalloc((size_t)total * sizeof *seen);
	char	*msg, *p, subj[64];
	int	 n, k;

	memset(seen, 0, (size_t)total * sizeof *seen);
	*by1 = *by2 = 0;
	n = h_sink_count(&filter);
	cr_assert_eq(n, total, "the sink has %d messages, %d sent", n, total);
	for (int i = 0; i < n; i++) {
		msg = h_sink_message(&filter, i);
		cr_assert_not_null(msg, "message %d missing", i);
		p = strstr(msg, "\nSubject: scaleout ");
		cr_assert_not_null(p, "%s", msg);
		k = atoi(p + strlen("\nSubject: scaleout "));
		cr_assert(k >= 0 && k < total, "%s", msg);
		seen[k]++;
		cr_assert_eq(h_count(msg, "\nX-Scanned: "), 1,
		    "message %d: not scanned exactly once:\n%s", k, msg);
		if (strstr(msg, "\nX-Scanned: mux1\n") != NULL) {
			(*by1)++;
			cr_assert_lt(k, only_mux2, "message %d, sent after "
			    "the stop, went to mux1", k);
		} else {
			cr_assert(strstr(msg, "\nX-Scanned: mux2\n") != NULL,
			    "%s", msg);
			(*by2)++;
		}
		free(msg);
	}
	for (k = 0; k < total; k++) {
		snprintf(subj, sizeof subj, "scaleout %d.", k);
		cr_assert_eq(seen[k], 1, "\"%s\" delivered %d times", subj,
		    seen[k]);
	}
	free(seen);
}

/* run - the load, the stop of mux1 by sig, the batch after it */
static void
run(int sig)
{
	struct inst	 a, b;
	pthread_t	 t[CLIENTS];
	char		*spec, *extra, *la, *lb, *elog, *flog, *hlog;
	const char	*p;
	pid_t		 hp;
	int		 port, rc, status, by1, by2, n, deferred;

	inst_start(&a, "mux1");
	inst_start(&b, "mux2");
	port = haproxy_start(&a, &b, &hp);

	spec = h_xasprintf("inet:127.0.0.1:%d", port);
	rc = h_postfix_start(&filter, spec, NULL);
	if (rc == -EPERM || rc == -ENOENT)
		cr_skip_test("no private Postfix here: %s", strerror(-rc));
	cr_assert_eq(rc, 0, "h_postfix_start: %s", strerror(-rc));
	filter_started = true;
	/* The edge: no milter; one SMTP session per message, so that a
	 * session that failed is not reused for the next message. */
	extra = h_xasprintf("relayhost = [127.0.0.1]:%d\n"
	    "smtp_connection_cache_on_demand = no\n"
	    "initial_destination_concurrency = 10\n", filter.smtpd_port);
	rc = h_postfix_start(&edge, NULL, extra);
	cr_assert_eq(rc, 0, "h_postfix_start (edge): %s", strerror(-rc));
	edge_started = true;

	for (long i = 0; i < CLIENTS; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, client, (void *)i),
		    0);
	/* A third through the filter, mux1 is stopped, in the middle of
	 * some of its sessions (each spends 300 ms at end of message). */
	for (int i = 0; i < 600 && h_sink_count(&filter) < TOTAL / 3; i++)
		usleep(20000);
	for (int i = 0; i < 200 && sessions_open(&a) < 3; i++)
		usleep(10000);
	n = h_sink_count(&filter);
	cr_assert(n >= TOTAL / 3 && n < TOTAL, "%d delivered before the "
	    "stop", n);
	cr_assert_eq(h_kill(a.pid, sig), 0);
	if (sig == SIGTERM) {
		/* The milter port refuses at once, while it drains. */
		cr_assert_eq(h_wait_file_contains(a.log,
		    "not accepting new connections", 10), 0);
		cr_assert_eq(h_wait_exit(a.pid, 30, &status), 0,
		    "mux1 did not finish draining");
		cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		    "mux1: status 0x%x", status);
	} else {
		cr_assert_eq(h_wait_exit(a.pid, 10, &status), 0);
		cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	}
	cr_assert_eq(h_wait_file_contains(haproxy_log,
	    "Server miltermux/mux1 is DOWN", 10), 0,
	    "haproxy did not mark mux1 down");

	for (int i = 0; i < CLIENTS; i++)
		pthread_join(t[i], NULL);
	cr_assert_eq(atomic_load(&failed), 0, "%d; first: %s",
	    atomic_load(&failed), first_bad);
	cr_assert_eq(atomic_load(&accepted), TOTAL);
	n = flush_until(TOTAL, 30);
	cr_assert_eq(n, TOTAL, "%d of %d delivered", n, TOTAL);

	/* mux1 is gone and known to be: every new session is mux2's. */
	send_range(TOTAL, TOTAL + AFTER);
	cr_assert_eq(atomic_load(&failed), 0, "%s", first_bad);
	n = flush_until(TOTAL + AFTER, 30);
	cr_assert_eq(n, TOTAL + AFTER, "%d of %d delivered", n,
	    TOTAL + AFTER);
	/* No transaction in progress at the sink: it could be a second
	 * copy. */
	usleep(300000);
	check_sink(TOTAL + AFTER, TOTAL, &by1, &by2);

	la = h_read_file(a.log);
	lb = h_read_file(b.log);
	elog = h_postfix_log(&edge);
	flog = h_postfix_log(&filter);
	cr_assert(la != NULL && lb != NULL);
	/* Both served; each message scanned by mux2 is in its log; mux1
	 * may have scanned a message whose answer it never sent. */
	cr_assert_gt(by1, 0);
	cr_assert_gt(by2, AFTER);
	cr_assert_eq(h_count(lb, ": message ("), by2, "%s", lb);
	deferred = h_count(elog, "status=deferred");
	if (sig == SIGKILL) {
		cr_assert_geq(h_count(la, ": message ("), by1);
		/* The sessions in flight got the filter's default action
		 * (tempfail), and the edge sent them again. */
		cr_assert_gt(deferred, 0, "nothing was in flight at mux1?");
		HAS(flog, "milter-reject: END-OF-MESSAGE from "
		    "localhost[127.0.0.1]: 4.7.1 Service unavailable - try "
		    "again later");
	} else {
		cr_assert_eq(h_count(la, ": message ("), by1, "%s", la);
		cr_assert_eq(deferred, 0, "%d deferred; the first: %.300s",
		    deferred, deferred > 0 ? strstr(elog, "status=deferred") :
		    "");
		HASNT(flog, "warning: milter");
		HASNT(flog, "4.7.1");
		/* It had sessions in flight, and finished them. */
		p = strstr(la, "received SIGTERM: not accepting new "
		    "connections; waiting up to 20 s for ");
		cr_assert_not_null(p, "%s", la);
		cr_assert_gt(atoi(p + strlen("received SIGTERM: not accepting "
		    "new connections; waiting up to 20 s for ")), 0, "%s", la);
		HAS(la, "all sessions ended");
	}
	hlog = h_read_file(haproxy_log);
	/* mux2 stayed up all along. */
	HASNT(hlog, "mux2 is DOWN");
	fprintf(stderr, "scaleout %s: %d messages, mux1 scanned %d, mux2 %d,"
	    " edge deferred %d\n", sig == SIGKILL ? "SIGKILL" : "SIGTERM",
	    TOTAL + AFTER, by1, by2, deferred);
	free(hlog);
	free(la);
	free(lb);
	free(elog);
	free(flog);
	free(spec);
	free(extra);
	(void)h_stop(hp, 2, NULL);
	(void)h_stop(b.pid, 5, NULL);
	(void)h_stop(a.tm_pid, 2, NULL);
	(void)h_stop(b.tm_pid, 2, NULL);
	passed = true;
}

Test(scaleout, sigkill_under_load_loses_nothing, .timeout = 120,
    .fini = fini)
{
	run(SIGKILL);
}

Test(scaleout, sigterm_under_load_defers_nothing, .timeout = 120,
    .fini = fini)
{
	run(SIGTERM);
}

/*
 * After SIGTERM the milter port refuses new connections at once (so a
 * load balancer retries them elsewhere) and /healthz says 503, while
 * the session in flight finishes with its upstream's answer.
 */
Test(scaleout, sigterm_closes_the_milter_port_at_once, .timeout = 60)
{
	static const struct up	 ups[] = {
		{ "a", { "--addheader", "X-A:1", "--delay", "eom=2000",
		    NULL }, NULL },
	};
	struct sockaddr_in	 sin;
	struct env		 e;
	const char		*argv[10];
	char			*top, *eml, *bg, *out, *log, *url, *body;
	pid_t			 pid;
	int			 mport, fd, rc, err, status;

	mport = h_free_port();
	cr_assert_gt(mport, 0);
	top = h_xasprintf("\"metrics\": { \"listen\": \"inet:%d@127.0.0.1\" }",
	    mport);
	env_setup(&e, ups, 1, top, 1);
	cr_assert_eq(h_wait_port(mport, 10), 0);
	eml = h_path("msg.eml");
	cr_assert_eq(h_write_file(eml, "From: <alice@example.org>\n"
	    "Subject: in flight\n\nbody\n"), 0);
	bg = h_path("bg.out");
	argv[0] = BIN("miltermux-send");
	argv[1] = "-s";
	argv[2] = e.mux_spec;
	argv[3] = "-f";
	argv[4] = "<alice@example.org>";
	argv[5] = "-r";
	argv[6] = "<bob@example.net>";
	argv[7] = eml;
	argv[8] = NULL;
	pid = h_spawn(argv, bg);
	cr_assert_gt(pid, 0);
	cr_assert_eq(h_wait_file_contains(e.up_log[0], " eom", 10), 0);

	cr_assert_eq(h_kill(e.mux, SIGTERM), 0);
	free(env_wait_log(&e, "received SIGTERM: not accepting new "
	    "connections; waiting up to 30 s for 1 open session"));
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_port = htons((unsigned short)e.mux_port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert_geq(fd, 0);
	rc = connect(fd, (struct sockaddr *)&sin, sizeof sin);
	err = errno;
	close(fd);
	cr_assert(rc == -1 && err == ECONNREFUSED, "connect after SIGTERM: "
	    "%s", rc == 0 ? "accepted" : strerror(err));

	url = h_xasprintf("http://127.0.0.1:%d/healthz", mport);
	{
		const char	*cargv[] = { "curl", "-sS", "-m", "5", "-o",
				    "-", "-w", " %{http_code}", url, NULL };

		cr_assert_eq(h_run(cargv, 10, &body, NULL), 0);
	}
	cr_assert_str_eq(body, "draining\n 503");
	free(body);
	free(url);

	cr_assert_eq(h_wait_exit(pid, 20, &status), 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "miltermux-send: status 0x%x", status);
	out = h_read_file(bg);
	HAS(out, "addheader X-A: 1");
	free(out);
	cr_assert_eq(h_wait_exit(e.mux, 10, &status), 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	e.mux = 0;
	log = env_mux_log(&e);
	HAS(log, "all sessions ended");
	HASNT(log, "cannot close the listening socket");
	free(log);
	free(top);
	free(eml);
	free(bg);
	env_stop(&e, 2);
}

/* The shipped example is a valid HAProxy configuration. */
Test(scaleout, example_haproxy_config_is_valid, .timeout = 30)
{
	const char	*argv[] = { "haproxy", "-c", "-f", EXAMPLE, NULL };
	char		*out = NULL;
	int		 rc, status = 0;

	rc = h_run(argv, 20, &out, &status);
	if (rc == -ENOENT)
		cr_skip_test("no haproxy here");
	cr_assert_eq(rc, 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s", out);
	HAS(out, "Configuration file is valid");
	free(out);
}
