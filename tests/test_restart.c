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
 * The upgrade tests do the same with SIGUSR2, the way the Debian
 * package's postinst and a systemd unit restart it (miltermux(8),
 * RESTARTING AND UPGRADING): miltermux starts its successor itself,
 * which must tell systemd's notify socket (a datagram socket of the
 * test's, as NOTIFY_SOCKET) that it is the main process now and ready,
 * take over the pid file, and send its predecessor SIGTERM; the old
 * one must then drain without a word to systemd.  An upgrade whose new
 * process cannot start (a broken configuration) must leave the old one
 * serving, and say so.
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
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <poll.h>
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

/* start_load - Postfix in front of miltermux, and the client threads */
static void
start_load(const struct env *e, int inet, pthread_t t[CLIENTS])
{
	char	*spec;
	int	 rc;

	spec = inet ? h_xasprintf("inet:127.0.0.1:%d", e->mux_port) :
	    h_xasprintf("unix:%s", e->mux_sock);
	rc = h_postfix_start(&pf, spec, NULL);
	if (rc == -EPERM || rc == -ENOENT)
		cr_skip_test("no private Postfix here: %s", strerror(-rc));
	cr_assert_eq(rc, 0, "h_postfix_start: %s", strerror(-rc));
	free(spec);
	for (long i = 0; i < CLIENTS; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, client, (void *)i),
		    0);
}

/*
 * join_and_check - the clients done: nothing refused, tempfailed or
 * otherwise failed, and every message delivered with the header
 */
static void
join_and_check(pthread_t t[CLIENTS], const char *header)
{
	char	*msg;
	int	 scanned = 0;

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
	for (int i = 0; i < TOTAL; i++) {
		msg = h_sink_message(&pf, i);
		cr_assert_not_null(msg, "message %d missing", i);
		if (strstr(msg, header) != NULL)
			scanned++;
		free(msg);
	}
	cr_assert_eq(scanned, TOTAL, "scanned %d of %d", scanned, TOTAL);
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
	char			*log1, *log2, *mlog, *log2path;
	pid_t			 old, new;
	double			 t0, dt;
	int			 status, n, n_exit;

	/* Postfix's smtpd connects as the postfix user. */
	env_setup(&e, ups, 1, inet ? "\"shutdown_grace\": 20" :
	    "\"shutdown_grace\": 20, \"socket_mode\": \"0666\"", inet);
	start_load(&e, inet, t);

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

	join_and_check(t, "\nX-Scanned: restart-test\n");

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

/* notify_open - the test's stand-in for systemd's notify socket */
static int
notify_open(void)
{
	struct sockaddr_un	 sun = { .sun_family = AF_UNIX };
	char			*path = h_path("notify.sock");
	int			 fd;

	cr_assert_lt(strlen(path), sizeof sun.sun_path);
	strcpy(sun.sun_path, path);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0);
	cr_assert_eq(setenv("NOTIFY_SOCKET", path, 1), 0);
	free(path);
	return fd;
}

/* notify_next - the next datagram within timeout seconds, or NULL */
static char *
notify_next(int fd, double timeout)
{
	struct pollfd	 p = { .fd = fd, .events = POLLIN };
	char		 buf[1024];
	ssize_t		 n;

	if (poll(&p, 1, (int)(timeout * 1000)) != 1)
		return NULL;
	if ((n = recv(fd, buf, sizeof buf - 1, 0)) <= 0)
		return NULL;
	buf[n] = '\0';
	return h_xstrdup(buf);
}

/* notify_mainpid - the pid in "MAINPID=N\nREADY=1", or -1 */
static long
notify_mainpid(const char *msg)
{
	long	 pid;
	char	 tail[64];

	if (msg == NULL || sscanf(msg, "MAINPID=%ld\n%63s", &pid, tail) != 2 ||
	    strcmp(tail, "READY=1") != 0)
		return -1;
	return pid;
}

static long
pidfile_pid(const char *path)
{
	char	*s = h_read_file(path);
	long	 pid = s != NULL ? strtol(s, NULL, 10) : -1;

	free(s);
	return pid;
}

static void
run_upgrade(int inet)
{
	static const struct up	 ups[] = {
		{ "a", { "--addheader", "X-Scanned:upgrade-test", NULL },
		    NULL },
	};
	struct env		 e;
	pthread_t		 t[CLIENTS];
	char			*log, *msg, *pidfile, *mlog;
	pid_t			 old, new;
	int			 nfd, status;

	nfd = notify_open();
	pidfile = h_path("miltermux.pid");
	env_mux_pidfile = pidfile;
	env_setup(&e, ups, 1, inet ? "\"shutdown_grace\": 20" :
	    "\"shutdown_grace\": 20, \"socket_mode\": \"0666\"", inet);
	unsetenv("NOTIFY_SOCKET");
	old = e.mux;
	msg = notify_next(nfd, 10);
	cr_assert_eq(notify_mainpid(msg), (long)old,
	    "first notification: %s", msg != NULL ? msg : "(none)");
	free(msg);
	cr_assert_eq(pidfile_pid(pidfile), (long)old);

	start_load(&e, inet, t);
	for (int i = 0; i < 600 && atomic_load(&done) < TOTAL / 3; i++)
		usleep(50000);
	cr_assert_eq(kill(old, SIGUSR2), 0);

	/* The successor: ready, and the main process now. */
	msg = notify_next(nfd, 15);
	new = (pid_t)notify_mainpid(msg);
	cr_assert(new > 0 && new != old, "after SIGUSR2: %s\n%s",
	    msg != NULL ? msg : "(no notification)", env_mux_log(&e));
	free(msg);
	cr_assert_eq(h_wait_exit(old, 30, &status), 0,
	    "the old miltermux did not exit");
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "old miltermux: status 0x%x", status);
	/* Reparented to this process (the harness is a subreaper). */
	cr_assert_eq(h_adopt(new), 0);
	e.mux = new;
	cr_assert_eq(pidfile_pid(pidfile), (long)new,
	    "the pid file does not name the successor");
	/* The old one said nothing more: no STOPPING=1 for the unit. */
	msg = notify_next(nfd, 0.2);
	cr_assert_null(msg, "the old miltermux notified: %s", msg);

	join_and_check(t, "\nX-Scanned: upgrade-test\n");

	/* Both wrote to the same log (the successor inherits stderr). */
	log = env_mux_log(&e);
	HAS(log, "SIGUSR2: started the new miltermux");
	HAS(log, "took over from miltermux pid");
	HAS(log, "all sessions ended; the new miltermux serves on");
	cr_assert_eq(log_count(log, ": message ("), TOTAL, "%s", log);
	free(log);
	mlog = h_postfix_log(&pf);
	HASNT(mlog, "warning: milter");
	free(mlog);

	/* The successor is the service now: it stops as one. */
	cr_assert_eq(h_stop(new, 20, &status), 0);
	e.mux = 0;
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "successor: status 0x%x", status);
	msg = notify_next(nfd, 5);
	cr_assert(msg != NULL && strcmp(msg, "STOPPING=1") == 0,
	    "at SIGTERM: %s", msg != NULL ? msg : "(nothing)");
	free(msg);
	cr_assert_eq(access(pidfile, F_OK), -1, "pid file left behind");
	env_stop(&e, 5);
	close(nfd);
	free(pidfile);
	env_mux_pidfile = NULL;
	passed = true;
}

Test(restart, upgrade_by_sigusr2_on_inet_under_postfix_load,
    .timeout = 120, .fini = fini)
{
	run_upgrade(1);
}

Test(restart, upgrade_by_sigusr2_on_unix_under_postfix_load,
    .timeout = 120, .fini = fini)
{
	run_upgrade(0);
}

/* A successor that cannot start leaves the old one serving. */
Test(restart, failed_upgrade_keeps_serving, .timeout = 60)
{
	static const struct up	 ups[] = {
		{ "a", { "--addheader", "X-Scanned:kept", NULL }, NULL },
	};
	struct env		 e;
	const char		*send[12];
	char			*log, *good, *out = NULL, *msg;
	char			*eml = h_path("msg.eml");
	int			 nfd, rc, status;

	cr_assert_eq(h_write_file(eml, "From: <a@example.test>\n"
	    "To: <b@example.test>\nSubject: kept\n\nbody\n"), 0);
	nfd = notify_open();
	env_setup(&e, ups, 1, NULL, 0);
	unsetenv("NOTIFY_SOCKET");
	msg = notify_next(nfd, 10);
	cr_assert_eq(notify_mainpid(msg), (long)e.mux);
	free(msg);
	good = h_read_file(e.conf);
	cr_assert_eq(h_write_file(e.conf, "{ \"listen\": 5 }\n"), 0);
	cr_assert_eq(kill(e.mux, SIGUSR2), 0);
	cr_assert_eq(h_wait_file_contains(e.mux_log, "upgrade failed", 10), 0,
	    "%s", env_mux_log(&e));
	log = env_mux_log(&e);
	HAS(log, "listen: must be a string");
	HAS(log, "exited with status 78 (see its log lines); still serving");
	free(log);
	msg = notify_next(nfd, 0.3);
	cr_assert_null(msg, "notified: %s", msg);
	cr_assert_eq(h_write_file(e.conf, good), 0);

	send[0] = BIN("miltermux-send");
	send[1] = "-s";
	send[2] = e.mux_spec;
	send[3] = "-f";
	send[4] = "<a@example.test>";
	send[5] = "-r";
	send[6] = "<b@example.test>";
	send[7] = "-t";
	send[8] = "10";
	send[9] = eml;
	send[10] = NULL;
	rc = h_run(send, 20, &out, &status);
	cr_assert_eq(rc, 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s", out);
	HAS(out, "result: accept");
	HAS(out, "addheader X-Scanned: kept");
	free(out);
	cr_assert_eq(kill(e.mux, 0), 0, "the old miltermux is gone");
	/* And a second SIGUSR2, with the configuration right, works. */
	cr_assert_eq(kill(e.mux, SIGUSR2), 0);
	cr_assert_eq(h_wait_file_contains(e.mux_log, "took over from", 10), 0,
	    "%s", env_mux_log(&e));
	cr_assert_eq(h_wait_exit(e.mux, 20, &status), 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	msg = notify_next(nfd, 5);
	cr_assert_gt(notify_mainpid(msg), 0, "%s", msg != NULL ? msg : "-");
	cr_assert_eq(h_adopt((pid_t)notify_mainpid(msg)), 0);
	e.mux = (pid_t)notify_mainpid(msg);
	free(msg);
	free(good);
	free(eml);
	close(nfd);
	env_stop(&e, 5);
}
