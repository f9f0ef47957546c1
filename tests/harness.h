/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * harness - process, socket and Postfix helpers for integration tests.
 *
 * Gives a test a private temp directory, child processes that cannot
 * outlive it, a small SMTP client, and a private Postfix instance that
 * relays everything to a capturing smtp-sink(1).  It knows nothing of
 * Criterion and nothing of miltermux: tests assert, the harness only
 * reports.  It does not touch the system Postfix (its configuration,
 * queue or daemons), which need not be running.
 *
 * Network rules: every socket it opens, listens on or connects to is on
 * loopback (127.0.0.1 or ::1) or is a unix-domain socket; h_smtp_open()
 * refuses anything else.  Every loop is bounded in count and in time.
 *
 * Teardown: every process started through the harness leads its own
 * session and process group, and is registered.  At exit() (atexit)
 * the harness sends SIGTERM to each registered group, SIGKILL after a
 * grace period (3 s, or H_GRACE_S seconds from the environment), reaps, then removes the temp directory unless KEEP_TMP
 * is set in the environment.  A test process that dies without running
 * atexit handlers (a Criterion .timeout kill, a crash) is covered by a
 * guard process, forked on first use, holding one end of a socket pair:
 * when the test process goes away it sees EOF, kills the groups still
 * registered, and removes the temp directory.  On Linux the test
 * process also makes itself a child subreaper (prctl), so that helpers
 * orphaned by a daemon's death are reparented to it and reaped at once;
 * a test that forks processes of its own should know that.
 *
 * Concurrency: not thread-safe.  Call it from the test's main thread
 * only.  State is per process: under Criterion each test runs in its own
 * forked process and gets its own temp directory, children and guard.
 * State inherited across a fork() not made by the harness is ignored.
 *
 * Ownership: functions returning char * return a string the caller owns,
 * free with free().  Structures are caller storage, set up by the _open
 * and _start functions and released by _close and _stop.
 *
 * Errors: int functions return 0 (or a documented non-negative value) on
 * success and a negative errno on failure.  Out of memory aborts
 * (h_xmalloc and friends).
 */
#ifndef HARNESS_H
#define HARNESS_H

#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

/* Default deadline for one SMTP reply, in seconds. */
#define H_SMTP_TIMEOUT		30.0

/* Allocation that aborts with a message instead of returning NULL. */
void	*h_xmalloc(size_t);
void	*h_xrealloc(void *, size_t);
char	*h_xstrdup(const char *);
char	*h_xasprintf(const char *, ...)
	    __attribute__((format(printf, 1, 2)));

/* Seconds on CLOCK_MONOTONIC; for deadlines and timings. */
double	 h_now(void);

/*
 * Per-process temp directory, /tmp/miltermux-test.XXXXXX, mode 0711 so
 * that daemons that drop privileges (Postfix, smtp-sink) can reach
 * subdirectories the harness hands to them.  Created on first call.
 * Borrowed, valid until exit.  Aborts if it cannot be created.
 */
const char *h_tmpdir(void);

/* "<tmpdir>/<name>"; caller owns, free with free(). */
char	*h_path(const char *name);

/*
 * A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read
 * it, close).  Another process may take it before the caller binds it:
 * callers that own the listener should retry on EADDRINUSE.  Returns the
 * port, or a negative errno.
 */
int	 h_free_port(void);

/*
 * Start argv[0] (searched in PATH, then /usr/sbin, /usr/local/sbin,
 * /sbin) with stdin on /dev/null and stdout and stderr appended to
 * logfile (created 0644; NULL means /dev/null).  The child calls
 * setsid(), so it leads its own session and process group, with default
 * signal dispositions, an empty signal mask and no inherited descriptor
 * above 2.  It is registered for teardown.  Returns the pid once exec
 * has succeeded, or a negative errno (-ENOENT: no such program) and
 * then nothing is left running.
 */
pid_t	 h_spawn(const char *const argv[], const char *logfile);

/*
 * As h_spawn(), but when running as root the child switches to user
 * (groups, gid, uid) before exec.  user NULL, or not running as root:
 * same as h_spawn().  -ENOENT if the user does not exist.
 */
pid_t	 h_spawn_as(const char *const argv[], const char *logfile,
	    const char *user);

/*
 * Register pid, a process that leads its own process group and that
 * will be this process's child (as the subreaper) once its parent has
 * exited, for h_kill, h_stop, h_wait_exit and teardown.  0, or a
 * negative errno (-ENOSPC: the table is full).
 */
int	 h_adopt(pid_t pid);

/*
 * Send sig to the process group of pid, a child from h_spawn() that has
 * not been reaped.  Returns 0, -ESRCH for a pid the harness does not
 * own, or a negative errno from kill(2).
 */
int	 h_kill(pid_t pid, int sig);

/*
 * Wait up to timeout_s for the child pid to exit, then reap it.  Any
 * process still in its group at that point (a daemon's orphaned
 * helpers) is sent SIGKILL first, while the zombie leader still pins the
 * group id, so that no later group kill can hit a stranger that reused
 * the id.  *status (may be NULL) gets the wait status.  Returns 0,
 * -ETIMEDOUT (the child still runs and stays registered), or -ESRCH.
 */
int	 h_wait_exit(pid_t pid, double timeout_s, int *status);

/*
 * Stop a child: SIGTERM to its group, wait up to grace_s, SIGKILL to the
 * group, reap.  Returns 0 or -ESRCH.  *status as for h_wait_exit().
 */
int	 h_stop(pid_t pid, double grace_s, int *status);

/* Poll until a TCP connect to 127.0.0.1:port succeeds.  0 or -ETIMEDOUT. */
int	 h_wait_port(int port, double timeout_s);

/* Poll until a connect to the unix socket path succeeds.  0 or -ETIMEDOUT. */
int	 h_wait_unix(const char *path, double timeout_s);

/*
 * Run argv (as h_spawn()) to completion, capturing stdout and stderr
 * together in *out (may be NULL; caller owns, free with free(); at most
 * 16 MiB is kept).  On timeout the group is killed and -ETIMEDOUT is
 * returned, with whatever output there was.  *status (may be NULL) gets
 * the wait status.  Returns 0 when the command ran (whatever its exit
 * status), or a negative errno.
 */
int	 h_run(const char *const argv[], double timeout_s, char **out,
	    int *status);

/*
 * Whole file as a NUL-terminated string (NUL bytes in the file are kept
 * and truncate the C string view).  Caller owns, free with free().
 * NULL, with errno set, if it cannot be read.
 */
char	*h_read_file(const char *path);
/* How many times needle occurs in hay (overlaps count; NULL hay: 0). */
size_t	 h_count(const char *hay, const char *needle);

/* Create or truncate path with content, mode 0644.  0 or -errno. */
int	 h_write_file(const char *path, const char *content);

/*
 * Poll until path exists and contains needle.  0 or -ETIMEDOUT.  The
 * caller must not rely on the rest of the file being complete.
 */
int	 h_wait_file_contains(const char *path, const char *needle,
	    double timeout_s);

/*
 * SMTP client, one connection.  Each reply must arrive within timeout_s
 * (H_SMTP_TIMEOUT after h_smtp_open(); the caller may change it).
 * After an error other than a reply code the connection is out of sync:
 * only h_smtp_close() is allowed.
 */
struct h_smtp {
	int	 fd;		/* -1 when closed */
	double	 timeout_s;	/* deadline for each reply */
	char	*rbuf;		/* bytes read but not yet consumed */
	size_t	 rlen, rcap;
};

/*
 * Connect to a numeric loopback host ("127.0.0.1", "::1") and port, and
 * read the greeting.  Returns its code (220 when all is well), or a
 * negative errno (-EINVAL: not a numeric loopback address).  *reply
 * (may be NULL) gets the full reply text; caller owns it.  On a negative
 * return s is closed.
 */
int	 h_smtp_open(struct h_smtp *s, const char *host, int port,
	    char **reply);

/*
 * Send one command line (without CRLF) and read the reply.  Returns the
 * three-digit code, or a negative errno (-EPROTO for a malformed reply,
 * -ETIMEDOUT, -ECONNRESET...).  *reply (may be NULL) gets the whole,
 * possibly multi-line, reply with CRLFs; caller owns it.
 */
int	 h_smtp_cmd(struct h_smtp *s, const char *line, char **reply);

/*
 * DATA, then the message (LF or CRLF line ends; sent with CRLF, lines
 * starting with "." dot-stuffed, a missing final line end added), then
 * ".".  Returns the final code; if DATA itself did not get 354, returns
 * that code and sends no message.  *reply as for h_smtp_cmd().
 */
int	 h_smtp_data(struct h_smtp *s, const char *message, char **reply);

/*
 * One transaction: MAIL FROM:<from>, RCPT TO:<r> for each entry of the
 * NULL-terminated rcpt, then h_smtp_data().  Stops at the first reply
 * that is not 2xx (354 for DATA) and returns its code; otherwise returns
 * the final code.  *reply gets the last reply read.
 */
int	 h_smtp_send(struct h_smtp *s, const char *from,
	    const char *const rcpt[], const char *message, char **reply);

/* Send QUIT (briefly waiting for 221) if connected, and close.  Idempotent. */
void	 h_smtp_close(struct h_smtp *s);

/*
 * A private Postfix instance: its own config, queue and data directories
 * under the temp directory, smtpd on 127.0.0.1:<smtpd_port>, everything
 * relayed to an smtp-sink on 127.0.0.1:<sink_port> that keeps one file
 * per delivered message in sink_dir.
 */
struct h_postfix {
	char	*dir;		/* instance root */
	char	*config_dir;	/* main.cf, master.cf */
	char	*queue_dir;
	char	*data_dir;
	char	*sink_dir;	/* smtp-sink -d dumps */
	char	*maillog;	/* Postfix log (maillog_file) */
	char	*master_log;	/* master(8) stdout and stderr */
	char	*sink_log;	/* smtp-sink stdout and stderr */
	char	*token;		/* unique; in both greetings */
	int	 smtpd_port;
	int	 sink_port;
	pid_t	 master_pid;	/* 0 when not running */
	pid_t	 sink_pid;	/* 0 when not running */
};

/*
 * Create and start an instance.  milter_spec (may be NULL) becomes
 * smtpd_milters, e.g. "inet:127.0.0.1:8890" or "unix:/path"; lines in
 * extra_main_cf (may be NULL) are appended to main.cf, so they override
 * the defaults.  Returns once smtpd answers with its own greeting.
 * Requires root (master(8) must be started as root): -EPERM otherwise;
 * -ENOENT if Postfix, smtp-sink or the user "nobody" (the sink's) is
 * missing; -ETIMEDOUT, -EIO or -EADDRINUSE if it would not come up.  On
 * error nothing is left running, and pf keeps its paths so that the
 * logs can be read; release it with h_postfix_fini().  Blocks for some
 * 50 ms on an idle machine.
 */
int	 h_postfix_start(struct h_postfix *pf, const char *milter_spec,
	    const char *extra_main_cf);

/*
 * Stop the instance (what "postfix stop" does: SIGTERM to the master,
 * which passes it to its children), then SIGKILL anything left in its
 * process group; then the sink.  Files and strings stay, so the logs
 * can still be read.  Idempotent.  Returns 0, or -ETIMEDOUT if the
 * master had to be killed.  Blocks up to about 15 s.
 */
int	 h_postfix_stop(struct h_postfix *pf);

/* Stop if running, free pf's strings and zero it.  Idempotent. */
void	 h_postfix_fini(struct h_postfix *pf);

/* The Postfix log so far; caller owns.  "" if none yet. */
char	*h_postfix_log(struct h_postfix *pf);

/* Print the Postfix, master and sink logs to fp, for failing tests. */
void	 h_postfix_print_logs(struct h_postfix *pf, FILE *fp);

/*
 * Messages the sink has completely received (its own "mesg=" counter,
 * written after each dump file is closed).  A negative errno on error.
 */
int	 h_sink_count(struct h_postfix *pf);

/*
 * Wait until at least n messages are complete and no transaction is in
 * progress at the sink (as many dump files as complete messages).
 * Returns the number of complete messages, or -ETIMEDOUT.
 */
int	 h_sink_wait_messages(struct h_postfix *pf, int n, double timeout_s);

/*
 * The i-th (from 0) dump file, ordered by modification time then name,
 * which is delivery order for messages delivered one after the other.
 * Each dump holds smtp-sink's X-Client-Addr, X-Client-Proto,
 * X-Helo-Args, X-Mail-Args and one X-Rcpt-Args per recipient (the
 * arguments as Postfix sent them: "<a@b.example> ORCPT=rfc822;..."), a
 * Received header, then the message as received, dot-unstuffed.  Call
 * it after h_sink_wait_messages(), when no delivery is in flight.
 * Caller owns; NULL if there is no such message.
 */
char	*h_sink_message(struct h_postfix *pf, int i);

#endif /* HARNESS_H */
