/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * main - command line, configuration, daemon set-up and signals.
 *
 * Order of start-up: parse flags, load and validate the config (a bad
 * one never starts the daemon), register with libmilter and open the
 * listening socket, detach, write the pidfile, drop privileges, start
 * the worker pool and the signal thread, then hand over to smfi_main.
 *
 * Signals: libmilter's own thread turns SIGTERM, SIGHUP and SIGINT into
 * a stop; SIGUSR1 reloads the config in our sigwait thread.  All are
 * blocked before any thread starts, so only those two threads see them.
 *
 * Concurrency: the reload thread is the only writer of the published
 * config (conf_publish).  Ownership: main owns the pool and the initial
 * config reference.
 */
/* setgroups(2) is not POSIX; glibc shows it with _DEFAULT_SOURCE. */
#define _DEFAULT_SOURCE
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <unistd.h>

#include "conf.h"
#include "front.h"
#include "log.h"
#include "pool.h"
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
"  -p, --pidfile FILE     write the process id to FILE\n"
"  -u, --user USER[:GROUP] drop privileges after opening the socket\n"
"  -v, --verbose          log debug lines; twice: also trace every\n"
"                         stage of every upstream\n"
"  -n, --check-config     check the configuration and exit\n"
"      --dump-config      print the effective configuration as JSON\n"
"  -V, --version          print the version and exit\n"
"  -h, --help             print this help and exit\n"
"\n"
"Signals: SIGUSR1 reloads the configuration; SIGTERM, SIGHUP and SIGINT\n"
"stop the daemon.\n", DEFAULT_CONFIG);
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
 * Returns NULL after printing every problem.
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
	if (opts.listen != NULL) {
		free(c->listen);
		c->listen = xstrdup(opts.listen);
	}
	if (opts.threads > 0)
		c->threads = (unsigned)opts.threads;
	return c;
}

/* sig_main - the signal thread: SIGUSR1 reloads the configuration */
static void *
sig_main(void *arg)
{
	sigset_t	*set = arg;
	struct conf	*c, *old;
	int		 sig;

	for (;;) {
		if (sigwait(set, &sig) != 0)
			continue;
		if (sig != SIGUSR1)
			continue;
		log_info("reloading %s", opts.config);
		if ((c = load(true)) == NULL) {
			log_warnx("reload refused: %s has errors; the running "
			    "configuration stays", opts.config);
			continue;
		}
		old = conf_acquire();
		if (strcmp(old->listen, c->listen) != 0 ||
		    old->threads != c->threads)
			log_warnx("reload: \"listen\" and \"threads\" take "
			    "effect only after a restart");
		conf_release(old);
		conf_publish(c);
		log_info("configuration reloaded; new connections use it");
	}
	return NULL;
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

/* open_pidfile - create it exclusively after removing a stale one;
 * before detaching, so that a failure is seen */
static int
open_pidfile(const char *path)
{
	int	 fd;

	(void)unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd == -1) {
		log_warn("pidfile %s", path);
		exit(EX_CANTCREAT);
	}
	return fd;
}

/* write_pidfile - the daemon's own pid, once detached */
static void
write_pidfile(const char *path, int fd)
{
	char	 buf[32];
	int	 n;

	n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
	if (write(fd, buf, (size_t)n) != n || close(fd) == -1) {
		log_warn("pidfile %s", path);
		exit(EX_IOERR);
	}
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

int
main(int argc, char **argv)
{
	struct conf	*c;
	struct pool	*pool = NULL;
	pthread_t	 sigthread;
	sigset_t	 set;
	struct identity	 id = { 0, 0 };
	char		*dump;
	int		 rc, pidfd = -1;

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
		printf("config OK\n");
		conf_release(c);
		return EX_OK;
	}
	log_init("miltermux", opts.foreground);
	log_set_verbose(opts.verbose);
	if (opts.verbose >= 2)
		log_set_trace(~0u);
	conf_publish(c);
	c = conf_acquire();

	if (front_init(c->listen) != 0) {
		log_warnx("libmilter refused the registration or listen "
		    "socket \"%s\"", c->listen);
		return EX_SOFTWARE;
	}
	if (front_open_socket() != 0) {
		log_warnx("cannot listen on \"%s\"", c->listen);
		return EX_UNAVAILABLE;
	}
	if (opts.user != NULL)
		id = lookup_user(opts.user);
	if (opts.pidfile != NULL)
		pidfd = open_pidfile(opts.pidfile);
	if (!opts.foreground)
		daemonize();
	if (opts.pidfile != NULL)
		write_pidfile(opts.pidfile, pidfd);
	if (opts.user != NULL)
		drop_privileges(opts.user, id);

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	if ((rc = pool_new(c->threads, &pool)) != 0) {
		log_warnc(rc, "cannot start %u worker threads", c->threads);
		return EX_OSERR;
	}
	front_set_pool(pool);
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	if ((rc = pthread_create(&sigthread, NULL, sig_main, &set)) != 0) {
		log_warnc(rc, "cannot start the signal thread");
		return EX_OSERR;
	}
	pthread_detach(sigthread);
	log_info("miltermux %s listening on %s with %u threads and %zu "
	    "upstreams", PACKAGE_VERSION, c->listen, c->threads, c->nenabled);
	conf_release(c);

	rc = front_run();
	log_info("miltermux stopping");
	if (opts.pidfile != NULL && unlink(opts.pidfile) == -1)
		log_warn("remove pidfile %s", opts.pidfile);
	/* In-flight sessions are abandoned by smfi_main; the loops may
	 * still hold their upstreams, so the pool is left to exit(). */
	(void)pool;
	return rc == 0 ? EX_OK : EX_SOFTWARE;
}
