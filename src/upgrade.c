/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * upgrade - the successor of a running miltermux, started on SIGUSR2.
 *
 * A package upgrade replaces /usr/sbin/miltermux; systemctl restart
 * would stop the old process before starting the new one, and MTA
 * sessions arriving in between would be refused.  Instead the old
 * process starts the new binary itself, with its own command line and
 * environment (so NOTIFY_SOCKET too), and:
 *
 *   - the successor loads its configuration; an error there ends it
 *     with its exit status, and the old one, which reaps it, says so
 *     and keeps serving: a broken upgrade is no outage either;
 *   - it opens its listening socket beside the old one's (handover.c:
 *     SO_REUSEPORT for inet, an atomic rename for unix sockets), and
 *     from then on takes every new connection;
 *   - it inherits the pid file's descriptor and with it the lock
 *     (flock belongs to the open file), writes its own pid there, and
 *     tells systemd MAINPID and READY (notify.c), so that the unit
 *     follows it;
 *   - it sends the old process SIGTERM, which drains as in a manual
 *     restart: what was queued is served, open sessions end, and it
 *     exits without a word to systemd (notify_disown) and without
 *     removing the pid file, which names its successor.
 *
 * The environment carries MILTERMUX_UPGRADE=PID,FD to the successor
 * and is cleared there at once, so that its own successor starts clean.
 *
 * The child between fork and exec calls async-signal-safe functions
 * only: everything it needs is built before fork.  Descriptors other
 * than stdin, stdout, stderr and the pid file's are closed there, not
 * left to O_CLOEXEC: libmilter's sockets do not have it, and an MTA
 * connection held open by the successor would never see its end.
 *
 * Concurrency: main thread only.
 */
#define _GNU_SOURCE
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "upgrade.h"
#include "xalloc.h"

#define UPGRADE_ENV	"MILTERMUX_UPGRADE"

extern char	**environ;

static char	 exe[PATH_MAX];
static char	**args;
static pid_t	 predecessor;
static int	 inherited_fd = -1;
static pid_t	 child;
/* the successor's first process exited 0: it went into the background
 * (daemonize) under a pid we do not know */
static bool	 detached;

void
upgrade_init(int argc, char **argv)
{
	const char	*v = getenv(UPGRADE_ENV);
	ssize_t		 n;
	long		 pid, fd;
	char		*end;

	/* Read now: once a package replaces the file, /proc/self/exe
	 * names the deleted old one. */
	n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	exe[n > 0 ? n : 0] = '\0';
	if (n <= 0 && argv[0] != NULL && strchr(argv[0], '/') != NULL)
		snprintf(exe, sizeof exe, "%s", argv[0]);
	/* A copy, as getopt_long reorders argv. */
	args = xcalloc((size_t)argc + 1, sizeof *args);
	for (int i = 0; i < argc; i++)
		args[i] = xstrdup(argv[i]);

	if (v == NULL)
		return;
	pid = strtol(v, &end, 10);
	if (*end == ',') {
		fd = strtol(end + 1, &end, 10);
		if (*end == '\0' && pid > 1 && fd >= -1 && fd < INT_MAX) {
			predecessor = (pid_t)pid;
			inherited_fd = (int)fd;
			if (inherited_fd >= 0 &&
			    fcntl(inherited_fd, F_SETFD, FD_CLOEXEC) == -1)
				inherited_fd = -1;
		}
	}
	unsetenv(UPGRADE_ENV);
}

pid_t
upgrade_predecessor(int *pidfd)
{
	if (pidfd != NULL)
		*pidfd = inherited_fd;
	return predecessor;
}

/* envp - the environment with UPGRADE_ENV set to what the child needs */
static char **
child_env(int pidfd)
{
	size_t	 n = 0, j = 0;
	char	**envp;

	while (environ[n] != NULL)
		n++;
	envp = xcalloc(n + 2, sizeof *envp);
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], UPGRADE_ENV "=",
		    sizeof UPGRADE_ENV) != 0)
			envp[j++] = environ[i];
	envp[j++] = xasprintf(UPGRADE_ENV "=%ld,%d", (long)getpid(), pidfd);
	envp[j] = NULL;
	return envp;
}

/* env_free - of child_env's result only the array and our variable are
 * ours */
static void
env_free(char **envp)
{
	for (size_t i = 0; envp[i] != NULL; i++)
		if (strncmp(envp[i], UPGRADE_ENV "=", sizeof UPGRADE_ENV) == 0)
			free(envp[i]);
	free(envp);
}

/* close_from - close every descriptor from lo up, but keep; async-signal
 * safe */
static void
close_from(int lo, int keep)
{
	long	 max;

	if (keep >= lo) {
		if (keep > lo && close_range((unsigned)lo,
		    (unsigned)keep - 1, 0) != 0)
			goto loop;
		if (close_range((unsigned)keep + 1, ~0u, 0) != 0)
			goto loop;
		return;
	}
	if (close_range((unsigned)lo, ~0u, 0) == 0)
		return;
loop:
	max = sysconf(_SC_OPEN_MAX);
	for (long fd = lo; fd < (max > 0 ? max : 65536); fd++)
		if (fd != keep)
			(void)close((int)fd);
}

int
upgrade_start(int pidfd)
{
	struct sigaction	 dfl;
	sigset_t		 none;
	char			**envp;
	pid_t			 pid;
	int			 saved;

	if (exe[0] == '\0')
		return ENOENT;
	if (access(exe, X_OK) != 0)
		return errno;
	envp = child_env(pidfd);
	sigemptyset(&none);
	memset(&dfl, 0, sizeof dfl);
	dfl.sa_handler = SIG_DFL;
	sigemptyset(&dfl.sa_mask);
	fflush(NULL);
	if ((pid = fork()) == -1) {
		saved = errno;
		env_free(envp);
		return saved;
	}
	if (pid == 0) {
		/* exec keeps the signal mask and ignored signals */
		for (int s = 1; s < NSIG; s++)
			if (s != SIGKILL && s != SIGSTOP)
				(void)sigaction(s, &dfl, NULL);
		(void)sigprocmask(SIG_SETMASK, &none, NULL);
		/* Its own process group: whoever signals the old one's
		 * group (a shell's job control, a supervisor's kill of
		 * the group) must not take the successor with it. */
		(void)setpgid(0, 0);
		if (pidfd >= 0)
			(void)fcntl(pidfd, F_SETFD, 0);
		close_from(3, pidfd);
		execve(exe, args, envp);
		_exit(127);
	}
	env_free(envp);
	child = pid;
	log_info("SIGUSR2: started the new miltermux %s as pid %ld; it takes "
	    "over the listening socket, then this one drains", exe,
	    (long)pid);
	return 0;
}

pid_t
upgrade_successor(void)
{
	pid_t	 pid;
	int	 status;

	if (child == 0)
		return 0;
	pid = waitpid(child, &status, WNOHANG);
	if (pid == 0 || (pid == -1 && errno != ECHILD))
		return child;
	if (pid == -1)
		log_warnx("upgrade: the new miltermux (pid %ld) is gone; "
		    "still serving", (long)child);
	else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		log_info("upgrade: the new miltermux (pid %ld) went into the "
		    "background", (long)child);
		detached = true;
	} else if (WIFEXITED(status))
		log_warnx("upgrade failed: the new miltermux (pid %ld) exited "
		    "with status %d%s; still serving", (long)child,
		    WEXITSTATUS(status), WEXITSTATUS(status) == 127 ?
		    " (it could not be started)" : " (see its log lines)");
	else
		log_warnx("upgrade failed: the new miltermux (pid %ld) was "
		    "killed by signal %d; still serving", (long)child,
		    WTERMSIG(status));
	child = 0;
	return 0;
}

bool
upgrade_pending(void)
{
	return upgrade_successor() != 0 || detached;
}
