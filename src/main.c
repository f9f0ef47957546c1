/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * main - command line, configuration, daemon set-up and signals.
 *
 * Order of start-up: parse flags, load and validate the config (a bad
 * one never starts the daemon), lock the pidfile, register with
 * libmilter and open the listening socket (then its mode and group),
 * detach, drop privileges, start the worker pool and libmilter's
 * thread, take the signals, write the pid, then wait for signals.
 *
 * Signals: SIGHUP and SIGUSR1 reload the config; SIGTERM and SIGINT stop
 * gracefully: new MTA connections are refused, and open sessions get
 * up to shutdown_grace seconds to finish before the process exits (a
 * second stop signal ends the wait).  libmilter cannot do that itself:
 * smfi_stop() makes its pool controller and workers quit (worker.c,
 * PROTOCOL.md 6.2), so a session waiting for the MTA's next command
 * would never be served again.  libmilter is therefore only ever told
 * to stop by process exit.
 *
 * Design: libmilter starts its own signal thread, sigwaiting on
 * SIGTERM, SIGHUP and SIGINT, and that thread must not be the one to
 * get them.  So smfi_main runs on a thread of its own, every thread
 * but the main one blocks these signals, and the main thread takes
 * them with a handler that only writes their number to a pipe, which
 * the main thread's loop reads.  POSIX leaves open which of two willing
 * threads gets a process-directed signal; Linux tries the main thread
 * first, and it is always willing, busy or not, as long as no other
 * signal of its own is still undelivered (kernel/signal.c,
 * complete_signal, wants_signal).  libmilter's thread therefore only
 * sees a second signal sent in that instant, or one during start-up;
 * it then stops libmilter, and we exit at once, as miltermux did before
 * it drained.  The same pipe carries wake-ups from other threads: the
 * last session ended, or smfi_main returned.
 *
 * Concurrency: the main thread is the only writer of the published
 * config (conf_publish).  Ownership: main owns the pool, the pidfile's
 * descriptor (its lock lives as long as the process) and the initial
 * config reference.
 */
/* setgroups(2) and flock(2) are not POSIX; glibc shows them with
 * _DEFAULT_SOURCE. */
#define _DEFAULT_SOURCE
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "connpool.h"
#include "front.h"
#include "handover.h"
#include "notify.h"
#include "upgrade.h"
#include "log.h"
#include "metrics_http.h"
#include "pool.h"
#include "shadow.h"
#include "xalloc.h"

#define DEFAULT_CONFIG	SYSCONFDIR "/miltermux.json"

struct options {
	const char	*config;
	const char	*listen;
	long		 threads;	/* 0: from the config */
	bool		 foreground;
	const char	*pidfile;
	const char	*user;
	int		 verbose;
	bool		 check;
	bool		 dump;
};

static struct options	 opts = { .config = DEFAULT_CONFIG };

/* The unix listening socket, to unlink it when we stop accepting. */
static struct {
	bool	 is_unix;
	char	 path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	dev_t	 dev;
	ino_t	 ino;
} sock;

/* Signal numbers (from on_signal) and wake-ups (0) for the main thread;
 * both ends non-blocking. */
static int		 wake_fd[2] = { -1, -1 };
/* Set by the libmilter thread when smfi_main returned on its own. */
static atomic_bool	 front_done;
static atomic_int	 front_rc;
/* The pid file's descriptor, holding its lock; -1: none.  Passed on to
 * a successor (upgrade.c). */
static int		 pidfile_fd = -1;

static void
usage(FILE *f)
{
	fprintf(f,
"usage: miltermux [-fnhV] [-v]... [-c file] [-l spec] [-t threads]\n"
"                 [-p pidfile] [-u user[:group]] [--dump-config]\n"
"\n"
"A milter that sends every stage to all its upstream milters at once\n"
"and merges their answers.\n"
"\n"
"  -c, --config FILE      configuration file (default %s)\n"
"  -l, --listen SPEC      listen here instead of the config's \"listen\"\n"
"                         (unix:/path, inet:PORT@HOST, inet6:PORT@HOST)\n"
"  -t, --threads N        worker threads instead of the config's \"threads\"\n"
"  -f, --foreground       stay in the foreground and log to stderr\n"
"  -p, --pidfile FILE     lock FILE and write the process id to it; refuse\n"
"                         to start while another miltermux holds it\n"
"  -u, --user USER[:GROUP] drop privileges after opening the socket\n"
"  -v, --verbose          log debug lines; twice: also trace every\n"
"                         stage of every upstream\n"
"  -n, --check-config     check the configuration and what starting needs\n"
"                         (replay directory writable, listen address\n"
"                         free, upstream addresses resolvable); exit\n"
"      --dump-config      print the effective configuration as JSON\n"
"  -V, --version          print the version and exit\n"
"  -h, --help             print this help and exit\n"
"\n"
"Metrics and health: with \"metrics\": { \"listen\": \"inet:9899@127.0.0.1\" }\n"
"in the configuration, HTTP GET /metrics (Prometheus text format),\n"
"/healthz (200 serving, 503 draining or every upstream down) and /status\n"
"(JSON) are served there; off by default.\n"
"\n"
"Signals: SIGHUP and SIGUSR1 reload the configuration; SIGTERM and\n"
"SIGINT stop accepting and let open sessions finish (up to\n"
"shutdown_grace); a second one stops at once.  SIGUSR2 restarts without\n"
"refusing mail: a new miltermux is started from the same executable path\n"
"(the new binary after an upgrade), takes the socket over and the old one\n"
"drains; starting the new one by hand, then SIGTERM to the old one, does\n"
"the same (see miltermux(8), RESTARTING AND UPGRADING).\n", DEFAULT_CONFIG);
}

static void
parse_args(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config",		required_argument,	NULL, 'c' },
		{ "listen",		required_argument,	NULL, 'l' },
		{ "threads",		required_argument,	NULL, 't' },
		{ "foreground",		no_argument,		NULL, 'f' },
		{ "pidfile",		required_argument,	NULL, 'p' },
		{ "user",		required_argument,	NULL, 'u' },
		{ "verbose",		no_argument,		NULL, 'v' },
		{ "check-config",	no_argument,		NULL, 'n' },
		{ "dump-config",	no_argument,		NULL, 'D' },
		{ "version",		no_argument,		NULL, 'V' },
		{ "help",		no_argument,		NULL, 'h' },
		{ NULL,			0,			NULL, 0 }
	};
	char	*end;
	int	 ch;

	while ((ch = getopt_long(argc, argv, "c:l:t:fp:u:vnVh", longopts,
	    NULL)) != -1) {
		switch (ch) {
		case 'c':
			opts.config = optarg;
			break;
		case 'l':
			opts.listen = optarg;
			break;
		case 't':
			errno = 0;
			opts.threads = strtol(optarg, &end, 10);
			if (errno != 0 || *end != '\0' || end == optarg ||
			    opts.threads < 1 || opts.threads > 1024) {
				fprintf(stderr, "miltermux: -t: \"%s\" is not a "
				    "thread count from 1 to 1024\n", optarg);
				exit(EX_USAGE);
			}
			break;
		case 'f':
			opts.foreground = true;
			break;
		case 'p':
			opts.pidfile = optarg;
			break;
		case 'u':
			opts.user = optarg;
			break;
		case 'v':
			opts.verbose++;
			break;
		case 'n':
			opts.check = true;
			break;
		case 'D':
			opts.dump = true;
			break;
		case 'V':
			printf("miltermux %s\n", PACKAGE_VERSION);
			exit(EX_OK);
		case 'h':
			usage(stdout);
			exit(EX_OK);
		default:
			usage(stderr);
			exit(EX_USAGE);
		}
	}
	if (optind != argc) {
		fprintf(stderr, "miltermux: unexpected argument \"%s\"\n",
		    argv[optind]);
		usage(stderr);
		exit(EX_USAGE);
	}
}

/*
 * load - read the config and apply the command line's overrides.
 * Returns NULL after printing every problem; warnings are printed (or
 * logged) too, and do not stop anything.
 */
static struct conf *
load(bool to_log)
{
	struct conf_errors	 errs = { NULL, 0 };
	struct conf		*c = NULL;
	struct conf_addr	 a;
	char			 why[256];
	int			 rc;

	rc = conf_load(opts.config, &c, &errs);
	if (rc == 0 && opts.listen != NULL &&
	    conf_parse_address(opts.listen, &a, why, sizeof why) != 0) {
		errs.v = xreallocarray(errs.v, errs.n + 1, sizeof *errs.v);
		errs.v[errs.n++] = xasprintf("--listen: %s", why);
		conf_release(c);
		c = NULL;
		rc = -EINVAL;
	}
	for (size_t i = 0; i < errs.n; i++) {
		if (to_log)
			log_warnx("%s", errs.v[i]);
		else
			fprintf(stderr, "%s\n", errs.v[i]);
	}
	conf_errors_fini(&errs);
	if (rc != 0)
		return NULL;
	for (size_t i = 0; i < c->nwarnings; i++) {
		if (to_log)
			log_warnx("%s", c->warnings[i]);
		else
			fprintf(stderr, "%s\n", c->warnings[i]);
	}
	if (opts.listen != NULL) {
		free(c->listen);
		c->listen = xstrdup(opts.listen);
	}
	if (opts.threads > 0)
		c->threads = (unsigned)opts.threads;
	return c;
}

/* reload - SIGHUP or SIGUSR1: publish the file's new contents, if valid */
static void
reload(void)
{
	struct conf	*c, *old;

	log_info("reloading %s", opts.config);
	if ((c = load(true)) == NULL) {
		log_warnx("reload refused: %s has errors; the running "
		    "configuration stays", opts.config);
		return;
	}
	old = conf_acquire();
	if ((old->metrics_listen == NULL) != (c->metrics_listen == NULL) ||
	    (c->metrics_listen != NULL &&
	    strcmp(old->metrics_listen, c->metrics_listen) != 0))
		log_warnx("reload: \"metrics\" takes effect only after a "
		    "restart");
	if (strcmp(old->listen, c->listen) != 0 ||
	    old->threads != c->threads || old->socket_mode != c->socket_mode ||
	    (old->socket_group == NULL) != (c->socket_group == NULL) ||
	    (c->socket_group != NULL &&
	    strcmp(old->socket_group, c->socket_group) != 0))
		log_warnx("reload: \"listen\", \"threads\", \"socket_mode\" "
		    "and \"socket_group\" take effect only after a restart");
	conf_release(old);
	if (c->max_sessions != 0 && front_session_cap(c) < c->max_sessions)
		log_warnx("reload: max_sessions %u does not fit the "
		    "descriptor limit with %zu upstream%s; serving at most "
		    "%u sessions at once", c->max_sessions, c->nenabled,
		    c->nenabled == 1 ? "" : "s", front_session_cap(c));
	log_set_json(c->log_json);
	/* Idle upstream connections of removed or changed upstreams go
	 * now, before anyone could take one. */
	connpool_reconfigure(c);
	conf_publish(c);
	log_info("configuration reloaded; new connections use it");
}

struct identity {
	uid_t	 uid;
	gid_t	 gid;
};

/* lookup_user - USER[:GROUP] to ids; done before detaching so that a
 * mistake is reported to whoever started us */
static struct identity
lookup_user(const char *spec)
{
	char		*user = xstrdup(spec), *group;
	struct passwd	*pw;
	struct group	*gr;
	struct identity	 id;

	if ((group = strchr(user, ':')) != NULL)
		*group++ = '\0';
	if ((pw = getpwnam(user)) == NULL) {
		log_warnx("-u: no such user \"%s\"", user);
		exit(EX_NOUSER);
	}
	id.uid = pw->pw_uid;
	id.gid = pw->pw_gid;
	if (group != NULL) {
		if ((gr = getgrnam(group)) == NULL) {
			log_warnx("-u: no such group \"%s\"", group);
			exit(EX_NOUSER);
		}
		id.gid = gr->gr_gid;
	}
	free(user);
	return id;
}

/* drop_privileges - become that user and group for good */
static void
drop_privileges(const char *spec, struct identity id)
{
	/* A successor started by SIGUSR2 runs as the user already and
	 * may not call setgroups. */
	if (id.uid != 0 && getuid() == id.uid && geteuid() == id.uid &&
	    getgid() == id.gid && getegid() == id.gid)
		return;
	if (setgroups(1, &id.gid) == -1 || setgid(id.gid) == -1 ||
	    setuid(id.uid) == -1) {
		log_warn("-u %s", spec);
		exit(EX_OSERR);
	}
	if (id.uid != 0 && setuid(0) != -1) {
		log_warnx("-u %s: privileges could not be dropped", spec);
		exit(EX_OSERR);
	}
}

/* same_file - does path still name the file open on fd? */
static bool
same_file(const char *path, int fd)
{
	struct stat	 a, b;

	return fstat(fd, &a) == 0 && stat(path, &b) == 0 &&
	    a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/*
 * pidfile_lock - open the pidfile and lock it for the life of the
 * process, or exit.  The lock, not the file's existence or contents,
 * tells a running miltermux: a file left behind by a crash is simply
 * taken over, and two daemons never both start.  It is taken before
 * the listening socket is opened, because a new unix socket replaces
 * the one in the way (handover.c), which would cut off the running
 * daemon.  flock(2)
 * rather than fcntl(2): its lock belongs to the open file, which the
 * daemon inherits across the forks of daemonize().
 */
static int
pidfile_lock(const char *path)
{
	char	 buf[32];
	ssize_t	 n;
	int	 fd;

	for (int tries = 0; tries < 10; tries++) {
		fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC,
		    0644);
		if (fd == -1) {
			log_warn("pidfile %s", path);
			exit(EX_CANTCREAT);
		}
		if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
			if (errno != EWOULDBLOCK) {
				log_warn("pidfile %s: lock", path);
				exit(EX_CANTCREAT);
			}
			n = pread(fd, buf, sizeof buf - 1, 0);
			buf[n > 0 ? n : 0] = '\0';
			buf[strcspn(buf, "\n")] = '\0';
			log_warnx("pidfile %s is locked by a running miltermux"
			    "%s%s; not starting", path, buf[0] != '\0' ?
			    ", pid " : "", buf);
			exit(EX_TEMPFAIL);
		}
		/* A miltermux that was stopping may have removed the file
		 * between our open and our lock: hold the one the path
		 * names now. */
		if (same_file(path, fd))
			return fd;
		close(fd);
	}
	log_warnx("pidfile %s keeps being replaced; not starting", path);
	exit(EX_CANTCREAT);
}

/* pidfile_write - the daemon's own pid, once detached; fd stays open */
static void
pidfile_write(const char *path, int fd)
{
	char	 buf[32];
	int	 n;

	n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) == -1 || pwrite(fd, buf, (size_t)n, 0) != n) {
		log_warn("pidfile %s", path);
		exit(EX_IOERR);
	}
}

/*
 * pidfile_remove - at exit.  After -u the directory may not let the new
 * user remove the file; it is emptied instead, which does no harm (see
 * pidfile_lock).
 */
static void
pidfile_remove(const char *path, int fd)
{
	char	 buf[32];
	ssize_t	 n;

	if (!same_file(path, fd))
		return;
	/* A successor (upgrade.c) shares the file and wrote its pid. */
	n = pread(fd, buf, sizeof buf - 1, 0);
	buf[n > 0 ? n : 0] = '\0';
	if (n > 0 && strtol(buf, NULL, 10) != (long)getpid())
		return;
	if (unlink(path) == 0)
		return;
	if ((errno == EACCES || errno == EPERM) && ftruncate(fd, 0) == 0) {
		log_debug("pidfile %s: no permission to remove it; emptied",
		    path);
		return;
	}
	log_warn("remove pidfile %s", path);
}

/*
 * socket_setup - a unix listening socket's group and mode, right after
 * it was created (with a umask that kept it private meanwhile), and
 * its identity, so that we unlink only our own socket later
 */
static void
socket_setup(const struct conf *c)
{
	struct conf_addr	 a;
	struct stat		 st;

	if (conf_parse_address(c->listen, &a, NULL, 0) != 0 ||
	    a.sa.ss_family != AF_UNIX)
		return;
	snprintf(sock.path, sizeof sock.path, "%s",
	    ((struct sockaddr_un *)(void *)&a.sa)->sun_path);
	if (c->socket_group != NULL &&
	    chown(sock.path, (uid_t)-1, c->socket_gid) == -1) {
		log_warn("socket_group \"%s\": chown %s", c->socket_group,
		    sock.path);
		exit(EX_NOPERM);
	}
	if (c->socket_mode >= 0 &&
	    chmod(sock.path, (mode_t)c->socket_mode) == -1) {
		log_warn("socket_mode %04o: chmod %s",
		    (unsigned)c->socket_mode, sock.path);
		exit(EX_OSERR);
	}
	if (stat(sock.path, &st) == 0) {
		sock.is_unix = true;
		sock.dev = st.st_dev;
		sock.ino = st.st_ino;
	}
}

/* socket_replaced - our unix socket's path names another socket now:
 * a new instance took it over (handover.c) */
static bool
socket_replaced(void)
{
	struct stat	 st;

	return sock.is_unix && stat(sock.path, &st) == 0 &&
	    S_ISSOCK(st.st_mode) &&
	    (st.st_dev != sock.dev || st.st_ino != sock.ino);
}

/* socket_unlink - stop new connections to a unix socket at once */
static void
socket_unlink(void)
{
	struct stat	 st;
	char		 eb[128];

	if (!sock.is_unix || stat(sock.path, &st) != 0 ||
	    st.st_dev != sock.dev || st.st_ino != sock.ino)
		return;
	if (unlink(sock.path) == 0)
		return;
	if (strerror_r(errno, eb, sizeof eb) != 0)
		snprintf(eb, sizeof eb, "error %d", errno);
	log_info("cannot remove %s (%s); new connections are refused "
	    "instead", sock.path, eb);
}

static void
daemonize(void)
{
	pid_t	 pid;
	int	 fd;

	if ((pid = fork()) == -1) {
		log_warn("fork");
		exit(EX_OSERR);
	}
	if (pid != 0)
		_exit(EX_OK);
	if (setsid() == -1) {
		log_warn("setsid");
		exit(EX_OSERR);
	}
	if ((pid = fork()) == -1) {
		log_warn("fork");
		exit(EX_OSERR);
	}
	if (pid != 0)
		_exit(EX_OK);
	if (chdir("/") == -1)
		log_warn("chdir /");
	if ((fd = open("/dev/null", O_RDWR)) != -1) {
		dup2(fd, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
		if (fd > STDERR_FILENO)
			close(fd);
	}
}

static double
mono(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* on_signal - the main thread's handler: pass the signal on to its loop */
static void
on_signal(int sig)
{
	unsigned char	 b = (unsigned char)sig;
	int		 saved = errno;

	(void)!write(wake_fd[1], &b, 1);
	errno = saved;
}

/* wake_main - from another thread: have the main thread look again */
static void
wake_main(void)
{
	unsigned char	 b = 0;

	(void)!write(wake_fd[1], &b, 1);
}

/*
 * signals_init - the wake-up pipe and the handlers; the signals stay
 * blocked (pending ones wait) until signals_take()
 */
static void
signals_init(sigset_t *set)
{
	struct sigaction	 sa;
	int			 stop[] = { SIGTERM, SIGHUP, SIGINT, SIGUSR1,
				     SIGUSR2, SIGCHLD };

	sigemptyset(set);
	for (size_t i = 0; i < sizeof stop / sizeof stop[0]; i++)
		sigaddset(set, stop[i]);
	sigaddset(set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, set, NULL);
	sigdelset(set, SIGPIPE);
	if (pipe(wake_fd) == -1 ||
	    fcntl(wake_fd[0], F_SETFL, O_NONBLOCK) == -1 ||
	    fcntl(wake_fd[1], F_SETFL, O_NONBLOCK) == -1 ||
	    fcntl(wake_fd[0], F_SETFD, FD_CLOEXEC) == -1 ||
	    fcntl(wake_fd[1], F_SETFD, FD_CLOEXEC) == -1) {
		log_warn("pipe");
		exit(EX_OSERR);
	}
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	/* NODEFER: even during the handler the main thread stays willing. */
	sa.sa_flags = SA_RESTART | SA_NODEFER;
	for (size_t i = 0; i < sizeof stop / sizeof stop[0]; i++)
		sigaction(stop[i], &sa, NULL);
}

/* signals_take - the main thread alone takes them from now on */
static void
signals_take(const sigset_t *set)
{
	pthread_sigmask(SIG_UNBLOCK, set, NULL);
}

/*
 * next_event - wait up to timeout seconds (forever if < 0): a signal's
 * number, 0 for a wake-up, -1 when the time is up
 */
static int
next_event(double timeout)
{
	struct pollfd	 p = { .fd = wake_fd[0], .events = POLLIN };
	unsigned char	 b;
	double		 end = mono() + timeout, left;

	for (;;) {
		if (read(wake_fd[0], &b, 1) == 1)
			return b;
		left = end - mono();
		if (timeout >= 0 && left <= 0)
			return -1;
		(void)poll(&p, 1, timeout < 0 ? -1 : (int)(left * 1000) + 1);
	}
}

/*
 * raise_nofile - the soft descriptor limit up to the hard one: each
 * session holds a socket per upstream besides the MTA's, and the soft
 * limit is often 1024.  Returns the limit now in force (0: unknown).
 */
static unsigned long
raise_nofile(void)
{
	struct rlimit	 rl;
	rlim_t		 was;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
		log_warn("getrlimit(RLIMIT_NOFILE)");
		return 0;
	}
	was = rl.rlim_cur;
	if (rl.rlim_cur != rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
			log_warn("cannot raise the descriptor limit from %llu "
			    "to %llu", (unsigned long long)was,
			    (unsigned long long)rl.rlim_max);
			rl.rlim_cur = was;
		}
	}
	if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > ULONG_MAX)
		return ULONG_MAX;
	return (unsigned long)rl.rlim_cur;
}

/* open_fds - descriptors open now (0: unknown) */
static unsigned long
open_fds(void)
{
	DIR		*d = opendir("/proc/self/fd");
	struct dirent	*e;
	unsigned long	 n = 0;

	if (d == NULL) {
		for (int fd = 0; fd < 4096; fd++)
			if (fcntl(fd, F_GETFD) != -1)
				n++;
		return n;
	}
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n > 0 ? n - 1 : 0;	/* not the directory's own */
}

/* front_main - libmilter's thread: serve the MTA until the process ends */
static void *
front_main(void *arg)
{
	(void)arg;
	atomic_store(&front_rc, front_run());
	atomic_store(&front_done, true);
	wake_main();
	return NULL;
}

static const char *
sig_name(int sig)
{
	switch (sig) {
	case SIGTERM:	return "SIGTERM";
	case SIGHUP:	return "SIGHUP";
	case SIGINT:	return "SIGINT";
	case SIGUSR2:	return "SIGUSR2";
	default:	return "a signal";
	}
}

static bool
is_stop(int sig)
{
	return sig == SIGTERM || sig == SIGINT;
}

static bool
is_reload(int sig)
{
	return sig == SIGHUP || sig == SIGUSR1;
}

/*
 * handover - after a stop signal, when a new miltermux listens on our
 * inet address too, or has replaced our unix socket (handover.c): it
 * takes every new connection, so this
 * one serves, not refuses, whatever was already queued here, and exits
 * once nothing is queued, nothing accepted is still to begin and no
 * session is open, or after the grace.  False when there is no such
 * successor: then drain as usual.
 */
static bool
handover(int sig, double grace)
{
	struct sockaddr_storage	 ss;
	double			 deadline, now;
	unsigned		 n;
	bool			 pending;
	int			 fd = front_listen_fd(), s;

	if (fd < 0 || !front_listen_addr(&ss) ||
	    !(ss.ss_family == AF_UNIX ? socket_replaced() :
	    handover_successor(&ss)))
		return false;
	n = front_active();
	log_info("received %s: a new miltermux listens on the same address "
	    "and takes new connections; serving what was queued here, "
	    "waiting up to %g s for %u open session%s", sig_name(sig), grace,
	    n, n == 1 ? "" : "s");
	deadline = mono() + grace;
	for (;;) {
		n = front_active();
		pending = handover_pending(fd);
		now = mono();
		if (n == 0 && !pending)
			break;
		if (atomic_load(&front_done) || now >= deadline)
			break;
		s = next_event(deadline - now < 0.05 ? deadline - now : 0.05);
		if (is_stop(s)) {
			log_info("received %s again: stopping at once",
			    sig_name(s));
			break;
		}
		if (is_reload(s))
			log_info("reload ignored: stopping");
	}
	if (n > 0)
		log_warnx("%u session%s still open; closing %s", n,
		    n == 1 ? "" : "s", n == 1 ? "it" : "them");
	else
		log_info("all sessions ended; the new miltermux serves on");
	return true;
}

/* When the stop's grace ends (monotonic seconds); 0 before a stop. */
static double	 grace_end;

/*
 * drain - after a stop signal: stop listening and wait up to
 * shutdown_grace seconds for the open sessions to end.  A session ends
 * when the MTA closes it, so this also waits for idle SMTP clients; the
 * grace bounds it.
 *
 * The listener is closed at once (handover_close: what was queued in
 * it is accepted first), so that new connections are refused by the
 * kernel: an MTA then applies its default action for an unreachable
 * milter, and a load balancer in front of several instances retries
 * them on another one (miltermux(8), SCALING OUT).  Connections
 * accepted before are served, not refused.  Only when the listener
 * cannot be closed does it stay open, and new sessions are refused at
 * their first command.
 */
static void
drain(int sig)
{
	struct conf	*c = conf_acquire();
	double		 grace = c->shutdown_grace, deadline, left;
	unsigned	 n;
	bool		 closed, pending;
	int		 s, fd = front_listen_fd(), rc;

	conf_release(c);
	if (upgrade_pending()) {
		/* Our successor told systemd it is the main process now. */
		notify_disown();
	} else
		(void)notify_send("STOPPING=1");
	grace_end = mono() + grace;
	if (handover(sig, grace))
		return;
	socket_unlink();
	closed = (rc = handover_close(fd, 0.5)) == 0;
	if (!closed && fd >= 0)
		log_warnc(rc, "cannot close the listening socket: new "
		    "sessions are refused at their first command instead");
	front_drain(wake_main, !closed);
	n = front_active();
	log_info("received %s: not accepting new connections; waiting up "
	    "to %g s for %u open session%s", sig_name(sig), grace, n,
	    n == 1 ? "" : "s");
	deadline = mono() + grace;
	/* Woken when the last session ends or libmilter's thread does;
	 * every 50 ms while an accepted connection may still begin. */
	while (!atomic_load(&front_done)) {
		n = front_active();
		pending = closed && handover_pending(fd);
		if (n == 0 && !pending)
			break;
		if ((left = deadline - mono()) <= 0)
			break;
		s = next_event(pending && left > 0.05 ? 0.05 : left);
		if (is_stop(s)) {
			log_info("received %s again: stopping at once",
			    sig_name(s));
			break;
		}
		if (is_reload(s))
			log_info("reload ignored: stopping");
	}
	if (n > 0)
		log_warnx("%u session%s still open; closing %s", n,
		    n == 1 ? "" : "s", n == 1 ? "it" : "them");
	else
		log_info("all sessions ended");
}

/* upgrade - SIGUSR2: start a successor from the executable's path */
static void
upgrade(void)
{
	pid_t	 pid;
	int	 rc;

	if ((pid = upgrade_successor()) != 0) {
		log_warnx("SIGUSR2 ignored: the new miltermux (pid %ld) is "
		    "still starting", (long)pid);
		return;
	}
	if ((rc = upgrade_start(opts.pidfile != NULL ? pidfile_fd : -1)) != 0)
		log_warnc(rc, "SIGUSR2: cannot start a new miltermux; still "
		    "serving");
}

/* serve - the main thread's loop: signals, until told to stop */
static void
serve(void)
{
	int	 sig;

	for (;;) {
		/* Woken once a second to age out idle upstream
		 * connections (connpool.h). */
		sig = next_event(1.0);
		connpool_sweep();
		if (is_reload(sig))
			reload();
		else if (sig == SIGUSR2)
			upgrade();
		else if (sig == SIGCHLD)
			(void)upgrade_successor();
		else if (is_stop(sig)) {
			drain(sig);
			return;
		}
		if (atomic_load(&front_done)) {
			/* libmilter's own signal thread got a stop signal
			 * (see the top of this file) or its listener failed:
			 * its workers are gone, nothing can be drained. */
			log_warnx("libmilter stopped");
			return;
		}
	}
}

int
main(int argc, char **argv)
{
	struct conf	*c;
	struct pool	*pool = NULL;
	pthread_t	 front_thread;
	sigset_t	 set;
	struct identity	 id = { 0, 0 };
	char		*dump;
	mode_t		 mask = 0;
	unsigned long	 nofile;
	unsigned	 cap;
	pid_t		 pred;
	int		 rc, pidfd = -1;

	upgrade_init(argc, argv);
	parse_args(argc, argv);
	if ((c = load(false)) == NULL)
		return EX_CONFIG;
	if (opts.dump) {
		dump = conf_dump(c);
		printf("%s\n", dump);
		free(dump);
		conf_release(c);
		return EX_OK;
	}
	if (opts.check) {
		struct conf_errors	 errs = { NULL, 0 };
		struct conf_errors	 warns = { NULL, 0 };

		rc = conf_check_start(c, opts.listen != NULL, &errs, &warns);
		for (size_t i = 0; i < warns.n; i++)
			fprintf(stderr, "%s\n", warns.v[i]);
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.v[i]);
		conf_errors_fini(&errs);
		conf_errors_fini(&warns);
		conf_release(c);
		if (rc != 0)
			return EX_CONFIG;
		printf("config OK\n");
		return EX_OK;
	}
	log_init("miltermux", opts.foreground);
	log_set_timestamps(true);
	log_set_json(c->log_json);
	log_set_verbose(opts.verbose);
	if (opts.verbose >= 2)
		log_set_trace(~0u);
	nofile = raise_nofile();
	conf_publish(c);
	c = conf_acquire();

	/*
	 * From here on, a stop signal waits until the main thread takes
	 * them (pending signals do not survive daemonize's forks, but then
	 * nobody knows the new pid yet).  Blocked before any thread
	 * starts, so that all the others inherit the mask.
	 */
	signals_init(&set);

	/* A successor inherits the pid file with its lock. */
	pred = upgrade_predecessor(&pidfd);
	if (opts.pidfile != NULL && !(pidfd >= 0 &&
	    same_file(opts.pidfile, pidfd))) {
		if (pidfd >= 0)
			close(pidfd);
		pidfd = pidfile_lock(opts.pidfile);
	} else if (opts.pidfile == NULL && pidfd >= 0) {
		close(pidfd);
		pidfd = -1;
	}
	pidfile_fd = pidfd;
	if (front_init(c->listen) != 0) {
		log_warnx("libmilter refused the registration or listen "
		    "socket \"%s\"", c->listen);
		return EX_SOFTWARE;
	}
	/* Private until it has its configured group and mode, which it
	 * gets before it is renamed into place (handover.c); socket_setup()
	 * checks that they took. */
	handover_unix_perms(c->socket_group != NULL ? (long)c->socket_gid : -1,
	    c->socket_mode);
	if (c->socket_mode >= 0)
		mask = umask(0177);
	rc = front_open_socket();
	if (c->socket_mode >= 0)
		umask(mask);
	if (rc != 0) {
		log_warnx("cannot listen on \"%s\"", c->listen);
		return EX_UNAVAILABLE;
	}
	socket_setup(c);
	if ((rc = metrics_http_open(c)) != 0) {
		log_warnc(rc, "cannot listen for metrics on \"%s\"",
		    c->metrics_listen);
		return EX_UNAVAILABLE;
	}
	if (opts.user != NULL)
		id = lookup_user(opts.user);
	if (!opts.foreground)
		daemonize();
	if (opts.user != NULL)
		drop_privileges(opts.user, id);

	if ((rc = pool_new(c->threads, &pool)) != 0) {
		log_warnc(rc, "cannot start %u worker threads", c->threads);
		return EX_OSERR;
	}
	front_set_pool(pool);
	front_set_fd_budget(nofile, open_fds());
	cap = front_session_cap(c);
	if (c->max_sessions != 0 && cap < c->max_sessions)
		log_warnx("max_sessions %u does not fit the descriptor limit "
		    "%lu with %zu upstream%s; serving at most %u sessions at "
		    "once", c->max_sessions, nofile, c->nenabled,
		    c->nenabled == 1 ? "" : "s", cap);
	if ((rc = pthread_create(&front_thread, NULL, front_main, NULL)) != 0) {
		log_warnc(rc, "cannot start libmilter's thread");
		return EX_OSERR;
	}
	if ((rc = metrics_http_start()) != 0) {
		log_warnc(rc, "cannot serve metrics on \"%s\"",
		    c->metrics_listen);
		return EX_OSERR;
	}
	if (c->metrics_listen != NULL)
		log_info("serving metrics, health and status over HTTP on %s",
		    c->metrics_listen);
	signals_take(&set);
	/*
	 * The pid goes into the file only now, through the descriptor
	 * opened before privileges were dropped: whoever reads it may
	 * signal us at once, and a stop signal pending from before
	 * signals_take would go to libmilter's own signal thread, which
	 * stops libmilter without a drain (see the top of this file).
	 */
	if (opts.pidfile != NULL)
		pidfile_write(opts.pidfile, pidfd);
	log_info("miltermux %s listening on %s with %u threads and %zu "
	    "upstreams, at most %u sessions at once (descriptor limit %lu); "
	    "session ids %s.conn-N", PACKAGE_VERSION, c->listen, c->threads,
	    c->nenabled, cap, nofile, front_instance());
	conf_release(c);
	/* systemd (Type=notify) follows the main process by this. */
	(void)notify_send("MAINPID=%ld\nREADY=1", (long)getpid());
	if (pred > 0) {
		if (kill(pred, SIGTERM) != 0)
			log_warn("cannot tell miltermux pid %ld to drain",
			    (long)pred);
		else
			log_info("took over from miltermux pid %ld, which "
			    "drains now", (long)pred);
	}

	serve();
	/* What shadow upstreams still have queued, within the same grace. */
	shadow_drain(grace_end > mono() ? grace_end - mono() : 0);
	metrics_http_stop();
	log_info("miltermux stopping");
	if (opts.pidfile != NULL)
		pidfile_remove(opts.pidfile, pidfd);
	/*
	 * Sessions still open are cut off by the exit; libmilter's threads
	 * and the loops, which may still hold upstreams, go with it.
	 * _exit, not exit: libmilter's atexit handler destroys a mutex
	 * that its still running threads use.
	 */
	(void)pool;
	(void)front_thread;
	rc = atomic_load(&front_done) ? atomic_load(&front_rc) : 0;
	fflush(NULL);
	_exit(rc == 0 ? EX_OK : EX_SOFTWARE);
}
