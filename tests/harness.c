/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * harness - process, socket and Postfix helpers for integration tests.
 *
 * The contracts are in harness.h.  This file is self-contained (POSIX,
 * stdio, and close_range(2) where glibc has it): no project module and
 * no Criterion, so that any test program can link it.
 *
 * Design: one static struct holds this process's state: the temp
 * directory, the registered children and the guard socket.  Every child
 * is started by spawn_child(), which makes it a session leader and
 * registers it here and with the guard.  So children die in one of two
 * ways: teardown() at exit(), or the guard when the test process vanished
 * without exiting (a Criterion timeout sends SIGKILL; a crash runs no
 * atexit handler either).  A leader is reaped only after its group got
 * SIGKILL, while its zombie still pins the group id, so that a group
 * kill never reaches a process that merely reused the id.
 *
 * On Linux the test process is a child subreaper, so that a daemon's
 * helpers orphaned by its master become our children: reaping them is
 * then ours to do at once, instead of waiting for a PID 1 that may reap
 * slowly or never (containers).
 *
 * The Postfix instance runs master(8) directly as a child (what
 * "postfix start-fg" does, without its slow check-warn pass), after the
 * queue was built as "postfix post-install create-missing" would, from
 * Postfix's own postfix-files list but without forking ~60 processes.
 *
 * Length: over the house's ~1,500 lines on purpose.  It is one test
 * support module that every integration test links as a single source;
 * the Postfix part (from postfix_defaults on) is the cut to make if it
 * grows further.
 *
 * Concurrency: single-threaded use only; see harness.h.
 * Ownership: see harness.h; buffers inside structs belong to the struct.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1	/* setgroups(), pipe2(), close_range(), nftw() */
#endif

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define H_TMP_PREFIX	"/tmp/miltermux-test."
#define H_MAX_CHILDREN	64		/* registered at once */
#define H_GRACE_S	3.0		/* SIGTERM to SIGKILL at teardown */
#define H_GRACE_MAX_S	60.0		/* most H_GRACE_S may ask for */
#define H_REAP_S	5.0		/* SIGKILL to gone */
#define H_EXEC_S	10.0		/* fork to exec */
#define H_MAX_REAP	10000		/* orphans reaped per poll */
#define H_RUN_MAX_OUT	(16u << 20)
#define H_FILE_MAX	(64u << 20)
#define H_LINE_MAX	8192		/* one SMTP reply line */
#define H_REPLY_MAX	65536		/* one SMTP reply */
#define H_REPLY_LINES	1000
#define H_MAX_RCPT	1000
#define H_MAX_DUMPS	100000		/* sink files listed */
#define H_GUARD_MSGS	(1L << 20)	/* guard loop bound */
#define H_GUARD_PATH	128		/* room for the temp dir's name */
#define H_POLL_MIN_S	0.001
#define H_POLL_MAX_S	0.05

#define H_SINK_USER	"nobody"	/* smtp-sink refuses to run as root */
#define H_START_TRIES	3		/* fresh ports after EADDRINUSE */
#define H_START_S	30.0		/* one daemon's start-up */
#define H_STOP_S	10.0		/* master's SIGTERM grace */

/*
 * teardown_grace - seconds from SIGTERM to SIGKILL at teardown:
 * H_GRACE_S, or the environment's H_GRACE_S.  tests/sancheck raises it
 * in sanitizer builds: a daemon must exit by itself for its leak and
 * exit-time reports, and libmilter notices SIGTERM only when its
 * listener's 5-second poll ends.
 */
static double
teardown_grace(void)
{
	const char	*e = getenv("H_GRACE_S");
	char		*end;
	double		 v;

	if (e == NULL)
		return H_GRACE_S;
	v = strtod(e, &end);
	return end != e && *end == '\0' && v > 0 && v <= H_GRACE_MAX_S ?
	    v : H_GRACE_S;
}

/* Test process to guard: one record per SOCK_SEQPACKET message. */
enum guard_op {
	GUARD_ADD = 'A',	/* pid leads a group to kill */
	GUARD_DEL = 'D',	/* pid is being reaped: forget it */
	GUARD_TMP = 'T',	/* path is the temp dir to remove */
	GUARD_QUIT = 'Q'	/* clean exit: do nothing */
};

struct guard_msg {
	char	 op;
	pid_t	 pid;
	char	 path[H_GUARD_PATH];
};

static struct {
	pid_t	 owner;		/* process this state belongs to */
	char	*tmpdir;
	pid_t	 child[H_MAX_CHILDREN];	/* registered leaders; 0 = free */
	int	 guard_fd;	/* our end of the guard socket, or -1 */
	pid_t	 guard_pid;
	bool	 exiting;	/* teardown() ran */
} hs;

struct sbuf {
	char	*s;
	size_t	 len, cap;
};

static void	teardown(void);

/* die - report a harness failure that leaves the test meaningless */
static _Noreturn void
die(const char *what)
{
	fprintf(stderr, "harness: %s: %s\n", what, strerror(errno));
	abort();
}

/* h_xmalloc - malloc that aborts instead of returning NULL */
void *
h_xmalloc(size_t n)
{
	void	*p;

	if ((p = malloc(n ? n : 1)) == NULL)
		die("malloc");
	return p;
}

/* h_xrealloc - realloc that aborts instead of returning NULL */
void *
h_xrealloc(void *p, size_t n)
{
	if ((p = realloc(p, n ? n : 1)) == NULL)
		die("realloc");
	return p;
}

/* h_xstrdup - strdup that aborts instead of returning NULL */
char *
h_xstrdup(const char *s)
{
	size_t	 n = strlen(s) + 1;

	return memcpy(h_xmalloc(n), s, n);
}

/* h_xasprintf - formatted allocation; aborts instead of failing */
char *
h_xasprintf(const char *fmt, ...)
{
	va_list	 ap;
	char	*s;
	int	 n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		die("vsnprintf");
	s = h_xmalloc((size_t)n + 1);
	va_start(ap, fmt);
	(void)vsnprintf(s, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return s;
}

/* sb_add - append n bytes, keeping the buffer NUL-terminated */
static void
sb_add(struct sbuf *sb, const void *p, size_t n)
{
	if (sb->len + n + 1 > sb->cap) {
		size_t	 cap = sb->cap ? sb->cap : 256;

		while (cap < sb->len + n + 1)
			cap *= 2;
		sb->s = h_xrealloc(sb->s, cap);
		sb->cap = cap;
	}
	memcpy(sb->s + sb->len, p, n);
	sb->len += n;
	sb->s[sb->len] = '\0';
}

/* sb_steal - hand the string to the caller ("" if nothing was added) */
static char *
sb_steal(struct sbuf *sb)
{
	char	*s = sb->s ? sb->s : h_xstrdup("");

	sb->s = NULL;
	sb->len = sb->cap = 0;
	return s;
}

/* h_now - CLOCK_MONOTONIC in seconds */
double
h_now(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ms_left - milliseconds to the deadline, for poll(2); 0 once past it */
static int
ms_left(double deadline)
{
	double	 left = deadline - h_now();

	if (left <= 0)
		return 0;
	if (left > INT_MAX / 1000.0)
		return INT_MAX;
	return (int)(left * 1000.0) + 1;
}

/*
 * backoff - pause before polling a condition again: 1 ms, doubling up to
 * 50 ms, never past the deadline.  This is the only place that sleeps.
 */
static void
backoff(double *step, double deadline)
{
	struct timespec	 ts;
	double		 d = deadline - h_now();

	if (*step < H_POLL_MIN_S)
		*step = H_POLL_MIN_S;
	if (d > *step)
		d = *step;
	if (d > 0) {
		ts.tv_sec = (time_t)d;
		ts.tv_nsec = (long)((d - (double)ts.tv_sec) * 1e9);
		(void)nanosleep(&ts, NULL);
	}
	*step = *step * 2 > H_POLL_MAX_S ? H_POLL_MAX_S : *step * 2;
}

/*
 * close_fds_except - in a fresh child: close every descriptor above 2
 * except keep, which the caller has moved above 9.
 */
static void
close_fds_except(int keep)
{
	long	 max, fd;

#if defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
	if (close_range(3, (unsigned)keep - 1, 0) == 0 &&
	    close_range((unsigned)keep + 1, ~0U, 0) == 0)
		return;
#endif
	max = sysconf(_SC_OPEN_MAX);
	if (max < 0 || max > 65536)
		max = 65536;
	for (fd = 3; fd < max; fd++)
		if (fd != keep)
			(void)close((int)fd);
}

/* stdio_to_null - point 0, 1 and 2 at /dev/null (guard process) */
static void
stdio_to_null(void)
{
	int	 fd;

	if ((fd = open("/dev/null", O_RDWR)) == -1)
		return;
	(void)dup2(fd, 0);
	(void)dup2(fd, 1);
	(void)dup2(fd, 2);
	if (fd > 2)
		(void)close(fd);
}

/* rm_entry - nftw callback: remove one entry, depth first */
static int
rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)type;
	(void)ftw;
	(void)remove(path);
	return 0;
}

/* rm_tmpdir - rm -rf, but only of a directory this harness makes */
static void
rm_tmpdir(const char *path)
{
	if (strncmp(path, H_TMP_PREFIX, strlen(H_TMP_PREFIX)) != 0 ||
	    strstr(path, "..") != NULL)
		return;
	(void)nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

/* group_alive - does process group pgid still have a member (zombies count) */
static bool
group_alive(pid_t pgid)
{
	return kill(-pgid, 0) == 0 || errno == EPERM;
}

/*
 * guard_main - the guard process: mirror the registrations; on EOF
 * without GUARD_QUIT the test process is gone, so TERM then KILL the
 * groups it left and remove its temp directory.
 */
static _Noreturn void
guard_main(int fd)
{
	pid_t			 pids[H_MAX_CHILDREN] = { 0 };
	char			 tmp[H_GUARD_PATH] = "";
	struct guard_msg	 m;
	bool			 quit = false, alive;
	double			 deadline, step = 0;
	ssize_t			 r;
	long			 n;
	int			 i, sig;

	for (n = 0; n < H_GUARD_MSGS && !quit; n++) {
		r = recv(fd, &m, sizeof m, 0);
		if (r == -1 && errno == EINTR)
			continue;
		if (r != (ssize_t)sizeof m)
			break;
		switch (m.op) {
		case GUARD_ADD:
			for (i = 0; i < H_MAX_CHILDREN && pids[i] != 0; i++)
				;
			if (i < H_MAX_CHILDREN)
				pids[i] = m.pid;
			break;
		case GUARD_DEL:
			for (i = 0; i < H_MAX_CHILDREN; i++)
				if (pids[i] == m.pid)
					pids[i] = 0;
			break;
		case GUARD_TMP:
			memcpy(tmp, m.path, sizeof tmp);
			tmp[sizeof tmp - 1] = '\0';
			break;
		case GUARD_QUIT:
			quit = true;
			break;
		}
	}
	if (quit)
		_exit(0);
	for (sig = SIGTERM; ; sig = SIGKILL) {
		for (i = 0; i < H_MAX_CHILDREN; i++)
			if (pids[i] != 0)
				(void)kill(-pids[i], sig);
		deadline = h_now() + teardown_grace();
		do {
			/* A group gone is forgotten: its id may be reused. */
			alive = false;
			for (i = 0; i < H_MAX_CHILDREN; i++)
				if (pids[i] != 0 && !group_alive(pids[i]))
					pids[i] = 0;
				else if (pids[i] != 0)
					alive = true;
			if (alive)
				backoff(&step, deadline);
		} while (alive && h_now() < deadline);
		if (sig == SIGKILL)
			break;
	}
	if (tmp[0] != '\0' && getenv("KEEP_TMP") == NULL)
		rm_tmpdir(tmp);
	_exit(0);
}

/* guard_send - tell the guard; a guard that went away is simply dropped */
static void
guard_send(enum guard_op op, pid_t pid, const char *path)
{
	struct guard_msg	 m;
	ssize_t			 r;
	int			 i;

	if (hs.guard_fd < 0)
		return;
	memset(&m, 0, sizeof m);
	m.op = (char)op;
	m.pid = pid;
	if (path != NULL)
		(void)snprintf(m.path, sizeof m.path, "%s", path);
	for (i = 0; i < 100; i++) {
		r = send(hs.guard_fd, &m, sizeof m, MSG_NOSIGNAL);
		if (r == (ssize_t)sizeof m)
			return;
		if (r == -1 && errno == EINTR)
			continue;
		break;
	}
	(void)close(hs.guard_fd);
	hs.guard_fd = -1;
}

/* guard_start - fork the guard; without one, only teardown() protects us */
static void
guard_start(void)
{
	int	 sv[2], fd;
	pid_t	 pid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == -1)
		return;
	if ((pid = fork()) == -1) {
		(void)close(sv[0]);
		(void)close(sv[1]);
		return;
	}
	if (pid == 0) {
		/* Own group: a ^C to the test's group must not reach it. */
		(void)setpgid(0, 0);
		(void)signal(SIGINT, SIG_IGN);
		(void)signal(SIGHUP, SIG_IGN);
		(void)signal(SIGQUIT, SIG_IGN);
		(void)signal(SIGPIPE, SIG_IGN);
		if ((fd = fcntl(sv[1], F_DUPFD_CLOEXEC, 10)) == -1)
			_exit(1);
		stdio_to_null();
		close_fds_except(fd);
		guard_main(fd);
	}
	(void)close(sv[1]);
	hs.guard_fd = sv[0];
	hs.guard_pid = pid;
}

/*
 * h_init - set up this process's state on first use.  A process that
 * inherited state through a fork the harness did not make forgets it:
 * those children and that directory are the parent's to clean up.
 */
static void
h_init(void)
{
	if (hs.owner == getpid())
		return;
	if (hs.owner != 0 && hs.guard_fd >= 0)
		(void)close(hs.guard_fd);
	free(hs.tmpdir);
	memset(&hs, 0, sizeof hs);
	hs.owner = getpid();
	hs.guard_fd = -1;
	if (atexit(teardown) != 0)
		die("atexit");
#if defined(__linux__) && defined(PR_SET_CHILD_SUBREAPER)
	(void)prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
#endif
	guard_start();
}

/* h_tmpdir - create this process's temp dir once and tell the guard */
const char *
h_tmpdir(void)
{
	char	 tmpl[] = H_TMP_PREFIX "XXXXXX";

	h_init();
	if (hs.tmpdir != NULL)
		return hs.tmpdir;
	if (mkdtemp(tmpl) == NULL)
		die("mkdtemp");
	/* Daemons that dropped privileges must reach their subdirectories. */
	if (chmod(tmpl, 0711) == -1)
		die("chmod");
	hs.tmpdir = h_xstrdup(tmpl);
	guard_send(GUARD_TMP, 0, hs.tmpdir);
	return hs.tmpdir;
}

char *
h_path(const char *name)
{
	return h_xasprintf("%s/%s", h_tmpdir(), name);
}

/* child_index - slot of a registered child, or -1 */
static int
child_index(pid_t pid)
{
	int	 i;

	if (pid <= 0 || hs.owner != getpid())
		return -1;
	for (i = 0; i < H_MAX_CHILDREN; i++)
		if (hs.child[i] == pid)
			return i;
	return -1;
}

/* child_exited - has pid exited (not yet reaped)?  Leaves it a zombie. */
static bool
child_exited(pid_t pid)
{
	siginfo_t	 si;

	memset(&si, 0, sizeof si);
	if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == -1)
		return errno == ECHILD;
	return si.si_pid == pid;
}

/* wait_exited - poll child_exited() until the deadline */
static bool
wait_exited(pid_t pid, double deadline)
{
	double	 step = 0;
	int	 i;

	for (i = 0; i < 1000000; i++) {
		if (child_exited(pid))
			return true;
		if (h_now() >= deadline)
			return false;
		backoff(&step, deadline);
	}
	return false;
}

/*
 * reap_child - the leader of slot idx has exited: SIGKILL what is left
 * of its group while the zombie pins the id, reap, then wait (bounded)
 * for the group to empty, reaping the members that were orphaned to us.
 */
static int
reap_child(int idx, int *status)
{
	pid_t	 pid = hs.child[idx], r;
	double	 deadline, step = 0;
	int	 st = 0, rc = 0, k;

	(void)kill(-pid, SIGKILL);
	guard_send(GUARD_DEL, pid, NULL);
	do
		r = waitpid(pid, &st, WNOHANG);
	while (r == -1 && errno == EINTR);
	if (r != pid)
		rc = r == -1 ? -errno : -EAGAIN;
	hs.child[idx] = 0;
	deadline = h_now() + H_REAP_S;
	while (group_alive(pid) && h_now() < deadline) {
		for (k = 0; k < H_MAX_REAP && waitpid(-pid, NULL, WNOHANG) > 0;
		    k++)
			;
		if (group_alive(pid))
			backoff(&step, deadline);
	}
	if (status != NULL)
		*status = st;
	return rc;
}

int
h_adopt(pid_t pid)
{
	h_init();
	if (pid <= 0)
		return -EINVAL;
	for (int i = 0; i < H_MAX_CHILDREN; i++)
		if (hs.child[i] == 0) {
			hs.child[i] = pid;
			guard_send(GUARD_ADD, pid, NULL);
			return 0;
		}
	return -ENOSPC;
}

/* h_kill - signal the group of a registered child only */
int
h_kill(pid_t pid, int sig)
{
	if (child_index(pid) < 0)
		return -ESRCH;
	return kill(-pid, sig) == -1 ? -errno : 0;
}

/* h_wait_exit - wait for a registered child, then reap it and its group */
int
h_wait_exit(pid_t pid, double timeout_s, int *status)
{
	int	 idx;

	if ((idx = child_index(pid)) < 0)
		return -ESRCH;
	if (!wait_exited(pid, h_now() + timeout_s))
		return -ETIMEDOUT;
	return reap_child(idx, status);
}

/* h_stop - SIGTERM, grace period, SIGKILL, reap */
int
h_stop(pid_t pid, double grace_s, int *status)
{
	int	 idx;

	if ((idx = child_index(pid)) < 0)
		return -ESRCH;
	(void)kill(-pid, SIGTERM);
	if (!wait_exited(pid, h_now() + grace_s)) {
		(void)kill(-pid, SIGKILL);
		if (!wait_exited(pid, h_now() + H_REAP_S))
			return -ETIMEDOUT;
	}
	return reap_child(idx, status);
}

/*
 * teardown - atexit: TERM every registered group, KILL after the grace
 * period, reap; remove the temp dir; dismiss the guard.
 */
static void
teardown(void)
{
	double	 deadline, step = 0;
	bool	 running;
	int	 i;

	if (hs.owner != getpid() || hs.exiting)
		return;
	hs.exiting = true;
	for (i = 0; i < H_MAX_CHILDREN; i++)
		if (hs.child[i] != 0)
			(void)kill(-hs.child[i], SIGTERM);
	deadline = h_now() + teardown_grace();
	do {
		running = false;
		for (i = 0; i < H_MAX_CHILDREN; i++)
			if (hs.child[i] != 0 && !child_exited(hs.child[i]))
				running = true;
		if (running)
			backoff(&step, deadline);
	} while (running && h_now() < deadline);
	for (i = 0; i < H_MAX_CHILDREN; i++) {
		if (hs.child[i] == 0)
			continue;
		(void)kill(-hs.child[i], SIGKILL);
		(void)wait_exited(hs.child[i], h_now() + H_REAP_S);
		(void)reap_child(i, NULL);
	}
	if (hs.tmpdir != NULL) {
		if (getenv("KEEP_TMP") != NULL)
			fprintf(stderr, "harness: keeping %s\n", hs.tmpdir);
		else
			rm_tmpdir(hs.tmpdir);
	}
	if (hs.guard_fd >= 0) {
		guard_send(GUARD_QUIT, 0, NULL);
		(void)close(hs.guard_fd);
		hs.guard_fd = -1;
	}
	if (hs.guard_pid > 0) {
		if (!wait_exited(hs.guard_pid, h_now() + 2.0))
			(void)kill(hs.guard_pid, SIGKILL);
		(void)waitpid(hs.guard_pid, NULL, 0);
		hs.guard_pid = 0;
	}
}

/*
 * find_program - name itself if it has a slash, else the first
 * executable name in PATH, /usr/sbin, /usr/local/sbin or /sbin (where
 * Postfix lives, often outside a test runner's PATH).  Caller owns.
 */
static char *
find_program(const char *name)
{
	const char	*path = getenv("PATH");
	char		*dirs, *dir, *save = NULL, *cand, *found = NULL;

	if (strchr(name, '/') != NULL)
		return access(name, X_OK) == 0 ? h_xstrdup(name) : NULL;
	dirs = h_xasprintf("%s:/usr/sbin:/usr/local/sbin:/sbin",
	    path != NULL ? path : "/usr/bin:/bin");
	for (dir = strtok_r(dirs, ":", &save); dir != NULL && found == NULL;
	    dir = strtok_r(NULL, ":", &save)) {
		cand = h_xasprintf("%s/%s", dir, name);
		if (access(cand, X_OK) == 0)
			found = cand;
		else
			free(cand);
	}
	free(dirs);
	return found;
}

/*
 * child_exec - in the forked child: new session, default signals, stdio,
 * no other descriptor, optional user, exec.  A failure's errno goes up
 * errfd (close-on-exec, so EOF there means exec succeeded).
 */
static _Noreturn void
child_exec(const char *prog, const char *const argv[], int infd, int outfd,
    int errfd, bool drop, uid_t uid, gid_t gid)
{
	struct sigaction	 sa;
	sigset_t		 none;
	ssize_t			 w;
	int			 sig, e;

	(void)setsid();
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sigemptyset(&sa.sa_mask);
	for (sig = 1; sig < NSIG; sig++)
		(void)sigaction(sig, &sa, NULL);
	sigemptyset(&none);
	(void)sigprocmask(SIG_SETMASK, &none, NULL);
	/* Move everything above 9 first, so dup2 cannot clobber a source. */
	if ((errfd = fcntl(errfd, F_DUPFD_CLOEXEC, 10)) == -1 ||
	    (infd = fcntl(infd, F_DUPFD, 10)) == -1 ||
	    (outfd = fcntl(outfd, F_DUPFD, 10)) == -1)
		goto fail;
	if (dup2(infd, 0) == -1 || dup2(outfd, 1) == -1 ||
	    dup2(outfd, 2) == -1)
		goto fail;
	close_fds_except(errfd);
	if (drop && (setgroups(1, &gid) == -1 || setgid(gid) == -1 ||
	    setuid(uid) == -1))
		goto fail;
	execv(prog, (char *const *)argv);
fail:
	e = errno;
	w = write(errfd, &e, sizeof e);
	(void)w;
	_exit(127);
}

/*
 * spawn_child - fork and exec argv with stdout and stderr on outfd (-1:
 * /dev/null), registered; returns the pid once exec succeeded, or -errno
 * with nothing left running.
 */
static pid_t
spawn_child(const char *const argv[], int outfd, const char *user)
{
	struct passwd	*pw;
	struct pollfd	 pfd;
	char		*prog = NULL;
	uid_t		 uid = 0;
	gid_t		 gid = 0;
	bool		 drop = false;
	pid_t		 pid, rc;
	ssize_t		 r;
	int		 nullfd = -1, ep[2] = { -1, -1 }, err = 0, idx, n;

	h_init();
	if (argv == NULL || argv[0] == NULL)
		return -EINVAL;
	for (idx = 0; idx < H_MAX_CHILDREN && hs.child[idx] != 0; idx++)
		;
	if (idx == H_MAX_CHILDREN)
		return -EMFILE;
	if ((prog = find_program(argv[0])) == NULL)
		return -ENOENT;
	if (user != NULL && geteuid() == 0) {
		/* Looked up before fork: getpwnam is not async-signal-safe. */
		if ((pw = getpwnam(user)) == NULL) {
			rc = -ENOENT;
			goto out;
		}
		uid = pw->pw_uid;
		gid = pw->pw_gid;
		drop = true;
	}
	if ((nullfd = open("/dev/null", O_RDWR | O_CLOEXEC)) == -1 ||
	    pipe2(ep, O_CLOEXEC) == -1) {
		rc = -errno;
		goto out;
	}
	if ((pid = fork()) == -1) {
		rc = -errno;
		goto out;
	}
	if (pid == 0)
		child_exec(prog, argv, nullfd, outfd >= 0 ? outfd : nullfd,
		    ep[1], drop, uid, gid);
	hs.child[idx] = pid;
	guard_send(GUARD_ADD, pid, NULL);
	(void)close(ep[1]);
	ep[1] = -1;
	pfd.fd = ep[0];
	pfd.events = POLLIN;
	do
		n = poll(&pfd, 1, (int)(H_EXEC_S * 1000));
	while (n == -1 && errno == EINTR);
	r = n == 1 ? read(ep[0], &err, sizeof err) : -1;
	if (r == 0) {
		rc = pid;
		goto out;
	}
	rc = r == (ssize_t)sizeof err ? -err : -ETIMEDOUT;
	(void)kill(-pid, SIGKILL);
	(void)wait_exited(pid, h_now() + H_REAP_S);
	(void)reap_child(idx, NULL);
out:
	if (nullfd >= 0)
		(void)close(nullfd);
	if (ep[0] >= 0)
		(void)close(ep[0]);
	if (ep[1] >= 0)
		(void)close(ep[1]);
	free(prog);
	return rc;
}

/* h_spawn_as - open the log for appending and spawn_child() into it */
pid_t
h_spawn_as(const char *const argv[], const char *logfile, const char *user)
{
	pid_t	 pid;
	int	 fd = -1;

	if (logfile != NULL && (fd = open(logfile,
	    O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) == -1)
		return -errno;
	pid = spawn_child(argv, fd, user);
	if (fd >= 0)
		(void)close(fd);
	return pid;
}

pid_t
h_spawn(const char *const argv[], const char *logfile)
{
	return h_spawn_as(argv, logfile, NULL);
}

/* h_run - spawn with a pipe, drain it until EOF and exit or the deadline */
int
h_run(const char *const argv[], double timeout_s, char **out, int *status)
{
	struct sbuf	 sb = { 0 };
	struct pollfd	 pfd;
	double		 deadline = h_now() + timeout_s;
	char		 buf[4096];
	ssize_t		 r;
	pid_t		 pid;
	int		 p[2], n, rc = 0;

	if (out != NULL)
		*out = NULL;
	if (pipe2(p, O_CLOEXEC) == -1)
		return -errno;
	pid = spawn_child(argv, p[1], NULL);
	(void)close(p[1]);
	if (pid < 0) {
		(void)close(p[0]);
		return pid;
	}
	pfd.fd = p[0];
	pfd.events = POLLIN;
	for (;;) {
		if (h_now() >= deadline) {
			rc = -ETIMEDOUT;
			break;
		}
		n = poll(&pfd, 1, ms_left(deadline));
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			rc = -errno;
			break;
		}
		if (n == 0)
			continue;
		r = read(p[0], buf, sizeof buf);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			rc = -errno;
			break;
		}
		if (r == 0)
			break;
		if (sb.len < H_RUN_MAX_OUT)
			sb_add(&sb, buf, (size_t)r);
	}
	(void)close(p[0]);
	if (rc == 0)
		rc = h_wait_exit(pid, deadline - h_now(), status);
	if (rc != 0)
		(void)h_stop(pid, 0.0, status);
	if (out != NULL)
		*out = sb_steal(&sb);
	else
		free(sb.s);
	return rc;
}

/*
 * connect_deadline - non-blocking connect to sa, completed before the
 * deadline; returns the descriptor (O_NONBLOCK, close-on-exec) or -errno.
 */
static int
connect_deadline(const struct sockaddr *sa, socklen_t salen, double deadline)
{
	struct pollfd	 pfd;
	socklen_t	 elen = sizeof(int);
	int		 fd, n, err = 0;

	fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0);
	if (fd == -1)
		return -errno;
	if (connect(fd, sa, salen) == 0)
		return fd;
	if (errno != EINPROGRESS) {
		err = errno;
		goto fail;
	}
	pfd.fd = fd;
	pfd.events = POLLOUT;
	do
		n = poll(&pfd, 1, ms_left(deadline));
	while (n == -1 && errno == EINTR && h_now() < deadline);
	if (n != 1) {
		err = n == 0 ? ETIMEDOUT : errno;
		goto fail;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == -1)
		err = errno;
	if (err == 0)
		return fd;
fail:
	(void)close(fd);
	return -err;
}

/* loopback_inet - 127.0.0.1:port as a sockaddr */
static struct sockaddr_in
loopback_inet(int port)
{
	struct sockaddr_in	 sin;

	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = htons((uint16_t)port);
	return sin;
}

/* h_free_port - let the kernel pick a loopback port, then let it go */
int
h_free_port(void)
{
	struct sockaddr_in	 sin = loopback_inet(0);
	socklen_t		 len = sizeof sin;
	int			 fd, rc;

	if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sin, sizeof sin) == -1 ||
	    getsockname(fd, (struct sockaddr *)&sin, &len) == -1)
		rc = -errno;
	else
		rc = ntohs(sin.sin_port);
	(void)close(fd);
	return rc;
}

/* wait_connect - poll until connecting to sa succeeds */
static int
wait_connect(const struct sockaddr *sa, socklen_t salen, double timeout_s)
{
	double	 deadline = h_now() + timeout_s, step = 0;
	int	 fd, i;

	for (i = 0; i < 1000000; i++) {
		fd = connect_deadline(sa, salen, deadline);
		if (fd >= 0) {
			(void)close(fd);
			return 0;
		}
		if (h_now() >= deadline)
			break;
		backoff(&step, deadline);
	}
	return -ETIMEDOUT;
}

/* h_wait_port - wait_connect() to 127.0.0.1:port */
int
h_wait_port(int port, double timeout_s)
{
	struct sockaddr_in	 sin = loopback_inet(port);

	if (port <= 0 || port > 65535)
		return -EINVAL;
	return wait_connect((struct sockaddr *)&sin, sizeof sin, timeout_s);
}

/* h_wait_unix - wait_connect() to a unix-domain socket */
int
h_wait_unix(const char *path, double timeout_s)
{
	struct sockaddr_un	 sun;

	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof sun.sun_path)
		return -ENAMETOOLONG;
	memcpy(sun.sun_path, path, strlen(path));
	return wait_connect((struct sockaddr *)&sun, sizeof sun, timeout_s);
}

size_t
h_count(const char *hay, const char *needle)
{
	size_t	 n = 0;

	for (const char *p = hay; p != NULL && (p = strstr(p, needle)) !=
	    NULL; p++)
		n++;
	return n;
}

/* h_read_file - slurp a file, at most H_FILE_MAX bytes */
char *
h_read_file(const char *path)
{
	struct sbuf	 sb = { 0 };
	char		 buf[8192];
	ssize_t		 r;
	int		 fd, e;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return NULL;
	for (;;) {
		r = read(fd, buf, sizeof buf);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1 || sb.len + (size_t)r > H_FILE_MAX) {
			e = r == -1 ? errno : EFBIG;
			(void)close(fd);
			free(sb.s);
			errno = e;
			return NULL;
		}
		if (r == 0)
			break;
		sb_add(&sb, buf, (size_t)r);
	}
	(void)close(fd);
	return sb_steal(&sb);
}

/* h_write_file - create or truncate, write all, check close */
int
h_write_file(const char *path, const char *content)
{
	size_t	 off = 0, len = strlen(content);
	ssize_t	 w;
	int	 fd, rc = 0;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd == -1)
		return -errno;
	while (off < len) {
		w = write(fd, content + off, len - off);
		if (w == -1 && errno == EINTR)
			continue;
		if (w == -1) {
			rc = -errno;
			break;
		}
		off += (size_t)w;
	}
	if (close(fd) == -1 && rc == 0)
		rc = -errno;
	return rc;
}

/* h_wait_file_contains - re-read the file until the needle shows */
int
h_wait_file_contains(const char *path, const char *needle, double timeout_s)
{
	double	 deadline = h_now() + timeout_s, step = 0;
	char	*s;
	bool	 found;
	int	 i;

	for (i = 0; i < 1000000; i++) {
		s = h_read_file(path);
		found = s != NULL && strstr(s, needle) != NULL;
		free(s);
		if (found)
			return 0;
		if (h_now() >= deadline)
			break;
		backoff(&step, deadline);
	}
	return -ETIMEDOUT;
}

/* smtp_poison - an SMTP stream out of sync is closed, never reused */
static void
smtp_poison(struct h_smtp *s)
{
	if (s->fd >= 0)
		(void)close(s->fd);
	s->fd = -1;
}

/* smtp_fill - read more bytes into s->rbuf before the deadline */
static int
smtp_fill(struct h_smtp *s, double deadline)
{
	struct pollfd	 pfd;
	ssize_t		 r;
	int		 n;

	if (s->rlen == s->rcap) {
		if (s->rcap >= H_LINE_MAX)
			return -EPROTO;
		s->rcap = s->rcap ? s->rcap * 2 : 512;
		s->rbuf = h_xrealloc(s->rbuf, s->rcap);
	}
	pfd.fd = s->fd;
	pfd.events = POLLIN;
	while (h_now() < deadline) {
		n = poll(&pfd, 1, ms_left(deadline));
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return -errno;
		if (n == 0)
			break;
		r = recv(s->fd, s->rbuf + s->rlen, s->rcap - s->rlen, 0);
		if (r > 0) {
			s->rlen += (size_t)r;
			return 0;
		}
		if (r == 0)
			return -ECONNRESET;
		if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
	}
	return -ETIMEDOUT;
}

/*
 * smtp_read_reply - one complete reply, all lines with the same code,
 * "ddd-" continuing and "ddd " or "ddd" ending it.  Returns the code.
 */
static int
smtp_read_reply(struct h_smtp *s, double deadline, char **reply)
{
	struct sbuf	 text = { 0 };
	char		*nl, sep;
	size_t		 len;
	int		 code = -1, c, lines, rc;

	for (lines = 0; lines < H_REPLY_LINES; lines++) {
		/* rbuf is NULL until the first read; memchr must not see it. */
		while ((nl = s->rlen > 0 ? memchr(s->rbuf, '\n', s->rlen) :
		    NULL) == NULL)
			if ((rc = smtp_fill(s, deadline)) != 0)
				goto fail;
		len = (size_t)(nl - s->rbuf) + 1;
		rc = -EPROTO;
		if (len < 4 || s->rbuf[0] < '2' || s->rbuf[0] > '5' ||
		    s->rbuf[1] < '0' || s->rbuf[1] > '9' ||
		    s->rbuf[2] < '0' || s->rbuf[2] > '9')
			goto fail;
		sep = s->rbuf[3];
		if (sep != ' ' && sep != '-' && sep != '\r' && sep != '\n')
			goto fail;
		c = (s->rbuf[0] - '0') * 100 + (s->rbuf[1] - '0') * 10 +
		    (s->rbuf[2] - '0');
		if ((code != -1 && c != code) ||
		    text.len + len > H_REPLY_MAX)
			goto fail;
		code = c;
		sb_add(&text, s->rbuf, len);
		memmove(s->rbuf, s->rbuf + len, s->rlen - len);
		s->rlen -= len;
		if (sep != '-') {
			if (reply != NULL)
				*reply = sb_steal(&text);
			else
				free(text.s);
			return code;
		}
	}
	rc = -EPROTO;
fail:
	free(text.s);
	smtp_poison(s);
	return rc;
}

/* smtp_write - send all of buf before the deadline */
static int
smtp_write(struct h_smtp *s, const char *buf, size_t len, double deadline)
{
	struct pollfd	 pfd;
	size_t		 off = 0;
	ssize_t		 w;

	pfd.fd = s->fd;
	pfd.events = POLLOUT;
	while (off < len) {
		if (h_now() >= deadline)
			return -ETIMEDOUT;
		w = send(s->fd, buf + off, len - off, MSG_NOSIGNAL);
		if (w > 0) {
			off += (size_t)w;
			continue;
		}
		if (w == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
			(void)poll(&pfd, 1, ms_left(deadline));
		else if (w == -1 && errno != EINTR)
			return -errno;
	}
	return 0;
}

/* smtp_open_deadline - h_smtp_open() with an explicit time limit */
static int
smtp_open_deadline(struct h_smtp *s, const char *host, int port,
    double timeout_s, char **reply)
{
	struct sockaddr_storage	 ss;
	struct sockaddr_in	*sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6	*sin6 = (struct sockaddr_in6 *)&ss;
	socklen_t		 len;
	double			 deadline = h_now() + timeout_s;
	int			 fd, rc;

	memset(s, 0, sizeof *s);
	s->fd = -1;
	s->timeout_s = H_SMTP_TIMEOUT;
	if (reply != NULL)
		*reply = NULL;
	if (host == NULL || port <= 0 || port > 65535)
		return -EINVAL;
	memset(&ss, 0, sizeof ss);
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		if ((ntohl(sin->sin_addr.s_addr) >> 24) != 127)
			return -EINVAL;
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		len = sizeof *sin;
	} else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		if (!IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr))
			return -EINVAL;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		len = sizeof *sin6;
	} else {
		return -EINVAL;
	}
	if ((fd = connect_deadline((struct sockaddr *)&ss, len, deadline)) < 0)
		return fd;
	s->fd = fd;
	if ((rc = smtp_read_reply(s, deadline, reply)) < 0)
		h_smtp_close(s);
	return rc;
}

/* h_smtp_open - connect and read the greeting, H_SMTP_TIMEOUT */
int
h_smtp_open(struct h_smtp *s, const char *host, int port, char **reply)
{
	return smtp_open_deadline(s, host, port, H_SMTP_TIMEOUT, reply);
}

/* h_smtp_cmd - one command line, one reply; poisons the stream on I/O error */
int
h_smtp_cmd(struct h_smtp *s, const char *line, char **reply)
{
	double	 deadline = h_now() + s->timeout_s;
	char	*wire;
	int	 rc;

	if (reply != NULL)
		*reply = NULL;
	if (s->fd < 0)
		return -ENOTCONN;
	if (strpbrk(line, "\r\n") != NULL)
		return -EINVAL;
	wire = h_xasprintf("%s\r\n", line);
	rc = smtp_write(s, wire, strlen(wire), deadline);
	free(wire);
	if (rc != 0) {
		smtp_poison(s);
		return rc;
	}
	return smtp_read_reply(s, deadline, reply);
}

/* dot_stuff - DATA content: CRLF line ends, leading dots doubled, "." */
static void
dot_stuff(struct sbuf *out, const char *msg)
{
	const char	*p = msg, *nl;
	size_t		 len, linelen;

	while (*p != '\0') {
		nl = strchr(p, '\n');
		len = nl != NULL ? (size_t)(nl - p) : strlen(p);
		linelen = len > 0 && p[len - 1] == '\r' ? len - 1 : len;
		if (p[0] == '.')
			sb_add(out, ".", 1);
		sb_add(out, p, linelen);
		sb_add(out, "\r\n", 2);
		p += len + (nl != NULL ? 1 : 0);
	}
	sb_add(out, ".\r\n", 3);
}

/* h_smtp_data - DATA, the dot-stuffed message, the final reply */
int
h_smtp_data(struct h_smtp *s, const char *message, char **reply)
{
	struct sbuf	 wire = { 0 };
	double		 deadline;
	int		 code, rc;

	code = h_smtp_cmd(s, "DATA", reply);
	if (code != 354)
		return code;
	if (reply != NULL) {
		free(*reply);
		*reply = NULL;
	}
	dot_stuff(&wire, message);
	deadline = h_now() + s->timeout_s;
	rc = smtp_write(s, wire.s, wire.len, deadline);
	free(wire.s);
	if (rc != 0) {
		smtp_poison(s);
		return rc;
	}
	return smtp_read_reply(s, h_now() + s->timeout_s, reply);
}

/* h_smtp_send - MAIL, RCPTs and DATA; stops at the first refusal */
int
h_smtp_send(struct h_smtp *s, const char *from, const char *const rcpt[],
    const char *message, char **reply)
{
	char	*cmd, *r = NULL;
	int	 code, i;

	if (reply != NULL)
		*reply = NULL;
	cmd = h_xasprintf("MAIL FROM:<%s>", from);
	code = h_smtp_cmd(s, cmd, &r);
	free(cmd);
	if (code < 200 || code > 299)
		goto out;
	for (i = 0; rcpt != NULL && rcpt[i] != NULL && i < H_MAX_RCPT; i++) {
		free(r);
		cmd = h_xasprintf("RCPT TO:<%s>", rcpt[i]);
		code = h_smtp_cmd(s, cmd, &r);
		free(cmd);
		if (code < 200 || code > 299)
			goto out;
	}
	free(r);
	code = h_smtp_data(s, message, &r);
out:
	if (reply != NULL)
		*reply = r;
	else
		free(r);
	return code;
}

/* h_smtp_close - QUIT briefly if still in sync, close, free */
void
h_smtp_close(struct h_smtp *s)
{
	double	 t = s->timeout_s;

	if (s->fd >= 0) {
		s->timeout_s = t < 2.0 ? t : 2.0;
		(void)h_smtp_cmd(s, "QUIT", NULL);
		s->timeout_s = t;
		smtp_poison(s);
	}
	free(s->rbuf);
	s->rbuf = NULL;
	s->rlen = s->rcap = 0;
}

/* file_size - current size of path, 0 if it does not exist */
static off_t
file_size(const char *path)
{
	struct stat	 st;

	return stat(path, &st) == 0 ? st.st_size : 0;
}

/* log_has - does path contain needle at or after byte offset off */
static bool
log_has(const char *path, off_t off, const char *needle)
{
	char	*s = h_read_file(path);
	bool	 found;

	found = s != NULL && (size_t)off <= strlen(s) &&
	    strstr(s + off, needle) != NULL;
	free(s);
	return found;
}

/* Compiled-in settings the private instance shares with the system one. */
struct postfix_defaults {
	char	*daemon_dir;	/* master(8) and friends */
	char	*meta_dir;	/* postfix-files */
	char	*mail_owner;
	char	*setgid_group;
};

/* postfix_defaults_free - release postfix_defaults_get() strings */
static void
postfix_defaults_free(struct postfix_defaults *d)
{
	free(d->daemon_dir);
	free(d->meta_dir);
	free(d->mail_owner);
	free(d->setgid_group);
	memset(d, 0, sizeof *d);
}

/*
 * postfix_defaults_get - one "postconf -dh" for the defaults.  The
 * instance's main.cf sets none of them, so defaults are what it uses.
 * -ENOENT when Postfix is not installed.
 */
static int
postfix_defaults_get(struct postfix_defaults *d)
{
	static const char *const argv[] = {
		"postconf", "-dh", "daemon_directory", "meta_directory",
		"mail_owner", "setgid_group", NULL
	};
	char	**fields[] = {
		&d->daemon_dir, &d->meta_dir, &d->mail_owner, &d->setgid_group
	};
	char	*out = NULL, *line, *save = NULL;
	size_t	 i;
	int	 st = 0, rc;

	memset(d, 0, sizeof *d);
	rc = h_run(argv, H_START_S, &out, &st);
	if (rc == 0 && (!WIFEXITED(st) || WEXITSTATUS(st) != 0))
		rc = -ENOENT;
	line = rc == 0 ? strtok_r(out, "\n", &save) : NULL;
	for (i = 0; rc == 0 && i < sizeof fields / sizeof fields[0]; i++) {
		if (line == NULL || (i < 2 && line[0] != '/')) {
			rc = -ENOENT;
			break;
		}
		*fields[i] = h_xstrdup(line);
		line = strtok_r(NULL, "\n", &save);
	}
	free(out);
	if (rc != 0)
		postfix_defaults_free(d);
	return rc;
}

/* pf_owner - uid for a postfix-files owner field, or -1 */
static int
pf_owner(const char *name, const struct postfix_defaults *d, uid_t *uid)
{
	struct passwd	*pw;

	if (strcmp(name, "$mail_owner") == 0)
		name = d->mail_owner;
	if ((pw = getpwnam(name)) == NULL)
		return -1;
	*uid = pw->pw_uid;
	return 0;
}

/* pf_group - gid for a postfix-files group field ("-": leave it), or -1 */
static int
pf_group(const char *name, const struct postfix_defaults *d, gid_t *gid)
{
	struct group	*gr;

	*gid = (gid_t)-1;
	if (strcmp(name, "-") == 0)
		return 0;
	if (strcmp(name, "$setgid_group") == 0)
		name = d->setgid_group;
	if ((gr = getgrnam(name)) == NULL)
		return -1;
	*gid = gr->gr_gid;
	return 0;
}

/*
 * make_queue - what "post-install create-missing" does for this
 * instance: every directory that $meta_directory/postfix-files marks
 * "c" (create) under $queue_directory or $data_directory, with its
 * owner, group and mode.  Returns the number made, or -errno.
 */
static int
make_queue(struct h_postfix *pf, const struct postfix_defaults *d)
{
	char		*path, *line = NULL, *f[6], *save, *full;
	const char	*base;
	size_t		 cap = 0;
	FILE		*fp;
	uid_t		 uid;
	gid_t		 gid;
	long		 mode;
	int		 made = 0, i, lines;

	path = h_xasprintf("%s/postfix-files", d->meta_dir);
	fp = fopen(path, "r");
	free(path);
	if (fp == NULL)
		return -errno;
	for (lines = 0; lines < 10000 && getline(&line, &cap, fp) != -1;
	    lines++) {
		line[strcspn(line, "\r\n")] = '\0';
		save = NULL;
		for (i = 0; i < 6; i++)
			f[i] = strtok_r(i == 0 ? line : NULL, ":", &save);
		if (f[5] == NULL || strcmp(f[1], "d") != 0 ||
		    strchr(f[5], 'c') == NULL)
			continue;
		if (strncmp(f[0], "$queue_directory", 16) == 0)
			base = pf->queue_dir;
		else if (strncmp(f[0], "$data_directory", 15) == 0)
			base = pf->data_dir;
		else
			continue;
		full = h_xasprintf("%s%s", base, strchr(f[0], '/') != NULL ?
		    strchr(f[0], '/') : "");
		mode = strtol(f[4], NULL, 8);
		errno = 0;
		if (pf_owner(f[2], d, &uid) != 0 ||
		    pf_group(f[3], d, &gid) != 0 ||
		    (mkdir(full, 0700) == -1 && errno != EEXIST) ||
		    chown(full, uid, gid) == -1 ||
		    chmod(full, (mode_t)mode) == -1) {
			free(full);
			made = errno != 0 ? -errno : -EINVAL;
			break;
		}
		free(full);
		made++;
	}
	free(line);
	(void)fclose(fp);
	return made;
}

/*
 * backdate - set path's times a minute back.  Postfix re-reads main.cf
 * every 300 ms until its mtime is over a second older than the read
 * began (dict_load_file: "let it settle down"), which costs a freshly
 * written main.cf two seconds at each daemon start.
 */
static int
backdate(const char *path)
{
	struct timespec	 ts[2];

	if (clock_gettime(CLOCK_REALTIME, &ts[0]) == -1)
		return -errno;
	ts[0].tv_sec -= 60;
	ts[1] = ts[0];
	return utimensat(AT_FDCWD, path, ts, 0) == -1 ? -errno : 0;
}

/*
 * postfix_write_config - main.cf and master.cf for the current ports.
 *
 * No chroot (the instance lives under /tmp), no local delivery, no DNS,
 * no TLS; fast queue runs; no error sleep, so that milter rejects do not
 * cost a second each; milter timeouts short enough to fail inside a test
 * timeout.  mail_owner, setgid_group and the program directories keep
 * their compiled-in defaults, shared with the system instance.
 */
static int
postfix_write_config(struct h_postfix *pf, const char *milter_spec,
    const char *extra_main_cf)
{
	char	*main_cf, *master_cf, *path;
	int	 rc;

	main_cf = h_xasprintf(
	    "# Written by tests/harness.c for one test run.\n"
	    "compatibility_level = 3.6\n"
	    "queue_directory = %s\n"
	    "data_directory = %s\n"
	    "maillog_file = %s\n"
	    "maillog_file_prefixes = %s\n"
	    "myhostname = %s.test.invalid\n"
	    "mydomain = test.invalid\n"
	    "myorigin = $myhostname\n"
	    "smtpd_banner = $myhostname ESMTP miltermux-test\n"
	    "inet_interfaces = 127.0.0.1\n"
	    "inet_protocols = ipv4\n"
	    "mydestination =\n"
	    "local_recipient_maps =\n"
	    "local_transport = error:5.1.1 local delivery is disabled\n"
	    "relay_domains =\n"
	    "relayhost = [127.0.0.1]:%d\n"
	    "mynetworks = 127.0.0.0/8\n"
	    "smtpd_relay_restrictions = permit_mynetworks, reject\n"
	    "alias_maps =\n"
	    "alias_database =\n"
	    "biff = no\n"
	    "smtp_dns_support_level = disabled\n"
	    "smtp_host_lookup = native\n"
	    "smtp_tls_security_level = none\n"
	    "smtpd_tls_security_level = none\n"
	    "queue_run_delay = 1s\n"
	    "minimal_backoff_time = 1s\n"
	    "maximal_backoff_time = 2s\n"
	    "delay_warning_time = 0h\n"
	    "in_flow_delay = 0s\n"
	    "smtpd_error_sleep_time = 0s\n"
	    "smtpd_soft_error_limit = 100\n"
	    "smtpd_hard_error_limit = 100\n"
	    "smtpd_milters = %s\n"
	    "non_smtpd_milters =\n"
	    "milter_default_action = tempfail\n"
	    "milter_protocol = 6\n"
	    "milter_connect_timeout = 10s\n"
	    "milter_command_timeout = 10s\n"
	    "milter_content_timeout = 30s\n"
	    "%s\n",
	    pf->queue_dir, pf->data_dir, pf->maillog, pf->dir, pf->token,
	    pf->sink_port, milter_spec != NULL ? milter_spec : "",
	    extra_main_cf != NULL ? extra_main_cf : "");
	master_cf = h_xasprintf(
	    "# Written by tests/harness.c: only what relaying needs.\n"
	    "127.0.0.1:%d inet n - n - - smtpd\n"
	    "cleanup unix n - n - 0 cleanup\n"
	    "qmgr unix n - n 300 1 qmgr\n"
	    "rewrite unix - - n - - trivial-rewrite\n"
	    "bounce unix - - n - 0 bounce\n"
	    "defer unix - - n - 0 bounce\n"
	    "trace unix - - n - 0 bounce\n"
	    "verify unix - - n - 1 verify\n"
	    "flush unix n - n 1000? 0 flush\n"
	    "proxymap unix - - n - - proxymap\n"
	    "proxywrite unix - - n - 1 proxymap\n"
	    "smtp unix - - n - - smtp\n"
	    "relay unix - - n - - smtp\n"
	    "showq unix n - n - - showq\n"
	    "error unix - - n - - error\n"
	    "retry unix - - n - - error\n"
	    "discard unix - - n - - discard\n"
	    "anvil unix - - n - 1 anvil\n"
	    "scache unix - - n - 1 scache\n"
	    "postlog unix-dgram n - n - 1 postlogd\n",
	    pf->smtpd_port);
	path = h_xasprintf("%s/main.cf", pf->config_dir);
	if ((rc = h_write_file(path, main_cf)) == 0)
		rc = backdate(path);
	free(path);
	if (rc == 0) {
		path = h_xasprintf("%s/master.cf", pf->config_dir);
		if ((rc = h_write_file(path, master_cf)) == 0)
			rc = backdate(path);
		free(path);
	}
	free(main_cf);
	free(master_cf);
	return rc;
}

/* postfix_layout - paths, token and directories for a new instance */
static int
postfix_layout(struct h_postfix *pf, const struct passwd *sink_pw)
{
	static int	 seq;
	const char	*tmp = h_tmpdir();

	seq++;
	pf->dir = h_xasprintf("%s/postfix%d", tmp, seq);
	pf->config_dir = h_xasprintf("%s/etc", pf->dir);
	pf->queue_dir = h_xasprintf("%s/spool", pf->dir);
	pf->data_dir = h_xasprintf("%s/data", pf->dir);
	pf->sink_dir = h_xasprintf("%s/sink", pf->dir);
	pf->maillog = h_xasprintf("%s/maillog", pf->dir);
	pf->master_log = h_xasprintf("%s/master.log", pf->dir);
	pf->sink_log = h_xasprintf("%s/sink.log", pf->dir);
	/* The mkdtemp suffix makes it unique across concurrent runs. */
	pf->token = h_xasprintf("pf%d-%s", seq, tmp + strlen(H_TMP_PREFIX));
	if (mkdir(pf->dir, 0755) == -1 || mkdir(pf->config_dir, 0755) == -1 ||
	    mkdir(pf->queue_dir, 0755) == -1 || mkdir(pf->sink_dir, 0755) == -1)
		return -errno;
	if (chown(pf->sink_dir, sink_pw->pw_uid, sink_pw->pw_gid) == -1)
		return -errno;
	return 0;
}

/*
 * sink_start - smtp-sink on sink_port, as H_SINK_USER, dumping each
 * message into sink_dir and printing its counters (-c) to sink_log
 * after each dump file is closed.  Ready when it greets with its name.
 */
static int
sink_start(struct h_postfix *pf, const char *sink)
{
	struct h_smtp	 s;
	char		*host, *tmpl, *listen, *reply = NULL;
	const char	*argv[10];
	double		 deadline, step = 0;
	off_t		 off = file_size(pf->sink_log);
	pid_t		 pid;
	int		 code, rc = -ETIMEDOUT, i;

	host = h_xasprintf("sink-%s.test.invalid", pf->token);
	tmpl = h_xasprintf("%s/%%Y%%m%%d%%H%%M%%S.", pf->sink_dir);
	listen = h_xasprintf("127.0.0.1:%d", pf->sink_port);
	argv[0] = sink;
	argv[1] = "-4";
	argv[2] = "-c";
	argv[3] = "-h";
	argv[4] = host;
	argv[5] = "-d";
	argv[6] = tmpl;
	argv[7] = listen;
	argv[8] = "64";
	argv[9] = NULL;
	if ((pid = h_spawn_as(argv, pf->sink_log, H_SINK_USER)) < 0) {
		rc = pid;
		goto out;
	}
	pf->sink_pid = pid;
	deadline = h_now() + H_START_S;
	for (i = 0; i < 1000000 && h_now() < deadline; i++) {
		if (child_exited(pid)) {
			rc = log_has(pf->sink_log, off, "in use") ?
			    -EADDRINUSE : -EIO;
			break;
		}
		code = smtp_open_deadline(&s, "127.0.0.1", pf->sink_port,
		    2.0, &reply);
		if (code >= 0) {
			rc = code == 220 && strstr(reply, host) != NULL ?
			    0 : -EADDRINUSE;
			h_smtp_close(&s);
			free(reply);
			reply = NULL;
			break;
		}
		backoff(&step, deadline);
	}
	if (rc != 0) {
		(void)h_stop(pid, 1.0, NULL);
		pf->sink_pid = 0;
	}
out:
	free(host);
	free(tmpl);
	free(listen);
	return rc;
}

/*
 * master_start - run master(8) as our child.  It binds every master.cf
 * socket before it logs "daemon started", so that line in this
 * instance's log means smtpd's port is ours.  Deliberately no probe
 * connection: smtpd would run the milters' connect stage for it.
 */
static int
master_start(struct h_postfix *pf, const char *master)
{
	const char	*argv[4];
	double		 deadline, step = 0;
	off_t		 off = file_size(pf->maillog);
	pid_t		 pid;
	int		 rc = -ETIMEDOUT, i;

	argv[0] = master;
	argv[1] = "-c";
	argv[2] = pf->config_dir;
	argv[3] = NULL;
	if ((pid = h_spawn(argv, pf->master_log)) < 0)
		return pid;
	pf->master_pid = pid;
	deadline = h_now() + H_START_S;
	for (i = 0; i < 1000000 && h_now() < deadline; i++) {
		if (log_has(pf->maillog, off, "daemon started")) {
			rc = 0;
			break;
		}
		if (child_exited(pid)) {
			rc = log_has(pf->maillog, off, "in use") ?
			    -EADDRINUSE : -EIO;
			break;
		}
		backoff(&step, deadline);
	}
	if (rc != 0) {
		(void)h_stop(pid, 1.0, NULL);
		pf->master_pid = 0;
	}
	return rc;
}

/* create_missing - queue and data directories by "postfix post-install" */
static int
create_missing(struct h_postfix *pf)
{
	const char	*argv[] = {
		"postfix", "-c", pf->config_dir, "post-install",
		"create-missing", NULL
	};
	FILE		*fp;
	char		*out = NULL;
	int		 st = 0, rc;

	rc = h_run(argv, H_START_S, &out, &st);
	if (rc == 0 && (!WIFEXITED(st) || WEXITSTATUS(st) != 0))
		rc = -EIO;
	if (rc != 0 && (fp = fopen(pf->master_log, "a")) != NULL) {
		fprintf(fp, "postfix post-install create-missing: %s\n%s",
		    strerror(-rc), out != NULL ? out : "");
		(void)fclose(fp);
	}
	free(out);
	return rc;
}

/*
 * build_queue - make_queue(), or Postfix's own post-install when
 * postfix-files cannot be used (it reads the main.cf just written).
 */
static int
build_queue(struct h_postfix *pf, const struct postfix_defaults *d)
{
	return make_queue(pf, d) > 0 ? 0 : create_missing(pf);
}

/*
 * h_postfix_start - layout; then sink, config, queue and master, again
 * with fresh ports after a port clash
 */
int
h_postfix_start(struct h_postfix *pf, const char *milter_spec,
    const char *extra_main_cf)
{
	struct postfix_defaults	 d;
	struct passwd		*pw;
	char			*master = NULL, *sink = NULL;
	bool			 created = false;
	int			 rc, attempt, i;

	memset(pf, 0, sizeof *pf);
	if (geteuid() != 0)
		return -EPERM;
	if ((rc = postfix_defaults_get(&d)) != 0)
		return rc;
	master = h_xasprintf("%s/master", d.daemon_dir);
	if (access(master, X_OK) == -1 ||
	    (sink = find_program("smtp-sink")) == NULL ||
	    (pw = getpwnam(H_SINK_USER)) == NULL) {
		rc = -ENOENT;
		goto out;
	}
	if ((rc = postfix_layout(pf, pw)) != 0)
		goto out;
	for (attempt = 0; attempt < H_START_TRIES; attempt++) {
		if ((pf->sink_port = h_free_port()) < 0) {
			rc = pf->sink_port;
			break;
		}
		for (i = 0; i < 10; i++)
			if ((pf->smtpd_port = h_free_port()) != pf->sink_port)
				break;
		if (pf->smtpd_port < 0) {
			rc = pf->smtpd_port;
			break;
		}
		if ((rc = sink_start(pf, sink)) == -EADDRINUSE)
			continue;
		if (rc != 0)
			break;
		if ((rc = postfix_write_config(pf, milter_spec,
		    extra_main_cf)) != 0 ||
		    (!created && (rc = build_queue(pf, &d)) != 0) ||
		    (rc = master_start(pf, master)) != 0)
			(void)h_postfix_stop(pf);
		created = true;
		if (rc != -EADDRINUSE)
			break;
	}
out:
	postfix_defaults_free(&d);
	free(master);
	free(sink);
	return rc;
}

/* h_postfix_stop - TERM the master, KILL leftovers, stop the sink */
int
h_postfix_stop(struct h_postfix *pf)
{
	int	 rc = 0;

	if (pf->master_pid > 0) {
		/* As "postfix stop": the master passes SIGTERM on. */
		(void)h_kill(pf->master_pid, SIGTERM);
		if (h_wait_exit(pf->master_pid, H_STOP_S, NULL) == -ETIMEDOUT) {
			rc = -ETIMEDOUT;
			(void)h_stop(pf->master_pid, 0.0, NULL);
		}
		pf->master_pid = 0;
	}
	if (pf->sink_pid > 0) {
		(void)h_stop(pf->sink_pid, 5.0, NULL);
		pf->sink_pid = 0;
	}
	return rc;
}

/* h_postfix_fini - stop and release the instance's strings */
void
h_postfix_fini(struct h_postfix *pf)
{
	(void)h_postfix_stop(pf);
	free(pf->dir);
	free(pf->config_dir);
	free(pf->queue_dir);
	free(pf->data_dir);
	free(pf->sink_dir);
	free(pf->maillog);
	free(pf->master_log);
	free(pf->sink_log);
	free(pf->token);
	memset(pf, 0, sizeof *pf);
}

/* h_postfix_log - the maillog_file so far */
char *
h_postfix_log(struct h_postfix *pf)
{
	char	*s = pf->maillog != NULL ? h_read_file(pf->maillog) : NULL;

	return s != NULL ? s : h_xstrdup("");
}

/* h_postfix_print_logs - the instance's three logs, for a failing test */
void
h_postfix_print_logs(struct h_postfix *pf, FILE *fp)
{
	const char	*paths[3] = { pf->maillog, pf->master_log, pf->sink_log };
	char		*s, *p;
	int		 i;

	for (i = 0; i < 3; i++) {
		if (paths[i] == NULL)
			continue;
		s = h_read_file(paths[i]);
		/* smtp-sink ends its counter lines with a bare CR. */
		for (p = s; p != NULL && *p != '\0'; p++)
			if (*p == '\r')
				*p = '\n';
		fprintf(fp, "----- %s -----\n%s\n", paths[i],
		    s != NULL ? s : "(unreadable)");
		free(s);
	}
}

/* h_sink_count - the last "mesg=" counter smtp-sink -c printed */
int
h_sink_count(struct h_postfix *pf)
{
	const char	*p, *last = NULL;
	char		*s;
	long		 n;

	if (pf->sink_log == NULL)
		return -EINVAL;
	if ((s = h_read_file(pf->sink_log)) == NULL)
		return errno == ENOENT ? 0 : -errno;
	for (p = s; (p = strstr(p, "mesg=")) != NULL; p += 5)
		last = p;
	n = last != NULL ? strtol(last + 5, NULL, 10) : 0;
	free(s);
	return n > INT_MAX ? INT_MAX : (int)n;
}

/* dump_entry - one sink dump file, for ordering */
struct dump_entry {
	char		*name;
	struct timespec	 mtime;
};

/* dump_cmp - order dump files by mtime, then name */
static int
dump_cmp(const void *a, const void *b)
{
	const struct dump_entry	*x = a, *y = b;

	if (x->mtime.tv_sec != y->mtime.tv_sec)
		return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
	if (x->mtime.tv_nsec != y->mtime.tv_nsec)
		return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
	return strcmp(x->name, y->name);
}

/* dump_list - the sink's dump files, sorted; returns the count or -errno */
static int
dump_list(struct h_postfix *pf, struct dump_entry **out)
{
	struct dump_entry	*v = NULL;
	struct dirent		*de;
	struct stat		 st;
	DIR			*d;
	int			 n = 0;

	*out = NULL;
	if (pf->sink_dir == NULL)
		return -EINVAL;
	if ((d = opendir(pf->sink_dir)) == NULL)
		return -errno;
	while (n < H_MAX_DUMPS && (de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' ||
		    fstatat(dirfd(d), de->d_name, &st, 0) == -1 ||
		    !S_ISREG(st.st_mode))
			continue;
		v = h_xrealloc(v, ((size_t)n + 1) * sizeof *v);
		v[n].name = h_xstrdup(de->d_name);
		v[n].mtime = st.st_mtim;
		n++;
	}
	(void)closedir(d);
	if (n > 0)
		qsort(v, (size_t)n, sizeof *v, dump_cmp);
	*out = v;
	return n;
}

/* dump_free - release a dump_list() result */
static void
dump_free(struct dump_entry *v, int n)
{
	int	 i;

	for (i = 0; i < n; i++)
		free(v[i].name);
	free(v);
}

/* h_sink_wait_messages - until n are complete and none is in progress */
int
h_sink_wait_messages(struct h_postfix *pf, int n, double timeout_s)
{
	struct dump_entry	*v;
	double			 deadline = h_now() + timeout_s, step = 0;
	int			 done, files, i;

	for (i = 0; i < 1000000; i++) {
		done = h_sink_count(pf);
		files = dump_list(pf, &v);
		if (files >= 0)
			dump_free(v, files);
		if (done >= n && files == done)
			return done;
		if (h_now() >= deadline)
			break;
		backoff(&step, deadline);
	}
	return -ETIMEDOUT;
}

/* h_sink_message - the i-th dump file in delivery order */
char *
h_sink_message(struct h_postfix *pf, int i)
{
	struct dump_entry	*v;
	char			*path, *s = NULL;
	int			 n;

	if ((n = dump_list(pf, &v)) < 0)
		return NULL;
	if (i >= 0 && i < n) {
		path = h_xasprintf("%s/%s", pf->sink_dir, v[i].name);
		s = h_read_file(path);
		free(path);
	}
	dump_free(v, n);
	return s;
}

/*
 * A test's own bookkeeping (paths, logs read back) lives until exit by
 * design; leak reports in a sanitizer build are for the programs under
 * test, which do not link this file.
 */
const char	*__lsan_default_options(void);

const char *
__lsan_default_options(void)
{
	return "detect_leaks=0";
}
