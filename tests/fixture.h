/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * fixture - the integration tests' set-up: test milters (real libmilter
 * filters from tests/milters/) and a real miltermux in front of them,
 * in the test's private temp directory.
 *
 * Concurrency: one test process, main thread.  Ownership: the strings
 * in struct env live until the test process exits.
 */
#ifndef FIXTURE_H
#define FIXTURE_H

#include <sys/types.h>

#define BIN(p)		PACKAGE_BUILDDIR "/" p
#define MAX_UP		8
#define MAX_ARGS	64

/*
 * One upstream: its name, testmilter flags, extra JSON config keys.
 * When args[0] is BADMILTER, the upstream is tests/milters/badmilter
 * instead, with the flags that follow (its --log is up_log[i]); when
 * it is RANDMILTER, tests/milters/randmilter, given -n NAME too.  An
 * args[0] of EXTERNAL "SPEC" names a milter the test runs itself at
 * SPEC: then nothing is started for it.
 */
#define BADMILTER	"@badmilter"
#define RANDMILTER	"@randmilter"
#define EXTERNAL	"external:"

struct up {
	const char	*name;		/* "down": configured, not started */
	const char	*args[MAX_ARGS];
	const char	*json;
};

struct env {
	char	*mux_sock;	/* unix socket path, or NULL for inet */
	char	*mux_spec;	/* libmilter spec miltermux listens on */
	int	 mux_port;	/* inet port, or 0 */
	char	*mux_log;
	char	*conf;
	pid_t	 mux;
	char	*up_log[MAX_UP];
	pid_t	 up_pid[MAX_UP];	/* 0: not started */
	size_t	 n;
};

/* Start the upstreams, then miltermux on a unix socket (inet: false)
 * or on a free 127.0.0.1 port (inet: true).  top: extra top-level JSON
 * keys or NULL.  Asserts on failure. */
void	env_setup(struct env *, const struct up *, size_t n, const char *top,
	    int inet);
void	env_start_upstreams(struct env *, const struct up *, size_t n);
void	env_start_mux(struct env *, const struct up *, size_t n,
	    const char *top, int inet);
/* When set, env_start_mux runs miltermux with "-p" and this pid file. */
extern const char	*env_mux_pidfile;
/*
 * A private Postfix a test file starts (h_postfix_start into env_pf, then
 * env_pf_started = true); env_pf_fini, the Test's .fini, stops it and
 * prints its logs unless the test set env_pf_passed at its end.
 */
extern struct h_postfix	env_pf;
extern bool		env_pf_started, env_pf_passed;
void	env_pf_fini(void);
/*
 * Stop miltermux and the upstreams now: SIGTERM, then SIGKILL after
 * grace_s.  libmilter notices SIGTERM only every few seconds, so a test
 * that has checked everything saves the teardown's grace period.
 */
void	env_stop(struct env *, double grace_s);
/*
 * env_setup with the metrics listener on a free loopback port, which is
 * returned once it listens; top: more top-level keys, or NULL.
 */
int	env_setup_metrics(struct env *, const struct up *, size_t n,
	    const char *top, int inet);
/* GET path from 127.0.0.1:port with curl: the body (caller frees); the
 * HTTP status in *code, or, with code NULL, asserted to be 200. */
char	*env_http_get(int port, const char *path, int *code);
/* The value of the sample named exactly name (with its labels) in a
 * /metrics body; -1 when absent. */
double	 env_metric(const char *body, const char *name);
/* /metrics once name has value want (a session's close is counted
 * after the MTA saw its last answer), within 5 s; caller frees. */
char	*env_scrape_until(int port, const char *name, double want);
#define COUNT(body, name, want) cr_assert_eq(env_metric((body), (name)), \
	(double)(want), "%s: got %g, want %g in:\n%s", (name),		\
	env_metric((body), (name)), (double)(want), (body))

/* miltermux's log so far; caller owns.  wait: until it holds needle. */
char	*env_mux_log(struct env *);
char	*env_wait_log(struct env *, const char *needle);

#define HAS(hay, needle) cr_assert(strstr((hay), (needle)) != NULL,	\
	"expected \"%s\" in:\n%s", (needle), (hay))
#define HASNT(hay, needle) cr_assert(strstr((hay), (needle)) == NULL,	\
	"did not expect \"%s\" in:\n%s", (needle), (hay))

#endif /* FIXTURE_H */
