/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * fixture - test milters and miltermux for the integration tests.
 *
 * Concurrency: one test process, main thread.  Ownership: see fixture.h.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fixture.h"
#include "harness.h"

/* external - a milter the test runs itself */
static bool
external(const struct up *u)
{
	return u->args[0] != NULL &&
	    strncmp(u->args[0], EXTERNAL, strlen(EXTERNAL)) == 0;
}

void
env_start_upstreams(struct env *e, const struct up *ups, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const char	*argv[MAX_ARGS + 8];
		char		*sock = h_xasprintf("%s/%s.sock", h_tmpdir(),
				    ups[i].name);
		char		*spec = h_xasprintf("unix:%s", sock);
		bool		 bad = ups[i].args[0] != NULL &&
				    strcmp(ups[i].args[0], BADMILTER) == 0;
		bool		 rnd = ups[i].args[0] != NULL &&
				    strcmp(ups[i].args[0], RANDMILTER) == 0;
		size_t		 k = 0;
		pid_t		 pid;

		e->up_log[i] = h_xasprintf("%s/%s.log", h_tmpdir(),
		    ups[i].name);
		argv[k++] = bad ? BIN("tests/milters/badmilter") :
		    rnd ? BIN("tests/milters/randmilter") :
		    BIN("tests/milters/testmilter");
		argv[k++] = "-p";
		argv[k++] = spec;
		if (!bad) {
			argv[k++] = "-n";
			argv[k++] = ups[i].name;
		}
		argv[k++] = "--log";
		argv[k++] = e->up_log[i];
		for (size_t a = bad || rnd ? 1 : 0; ups[i].args[a] != NULL;
		    a++)
			argv[k++] = ups[i].args[a];
		argv[k] = NULL;
		if (strcmp(ups[i].name, "down") != 0 && !external(&ups[i])) {
			pid = h_spawn(argv, NULL);
			cr_assert(pid > 0, "cannot start upstream %s",
			    ups[i].name);
			e->up_pid[i] = pid;
			cr_assert_eq(h_wait_unix(sock, 10), 0,
			    "upstream %s did not come up", ups[i].name);
		}
		free(sock);
		free(spec);
	}
	e->n = n;
}

const char	*env_mux_pidfile;
struct h_postfix	 env_pf;
bool			 env_pf_started, env_pf_passed;

void
env_pf_fini(void)
{
	if (env_pf_started) {
		(void)h_postfix_stop(&env_pf);
		if (!env_pf_passed && env_pf.dir != NULL)
			h_postfix_print_logs(&env_pf, stderr);
		h_postfix_fini(&env_pf);
	}
}

void
env_start_mux(struct env *e, const struct up *ups, size_t n,
    const char *top, int inet)
{
	char		*cfg, *list = h_xstrdup(""), *tmp;
	const char	*argv[8];

	for (size_t i = 0; i < n; i++) {
		char	*addr = external(&ups[i]) ?
			    h_xstrdup(ups[i].args[0] + strlen(EXTERNAL)) :
			    h_xasprintf("unix:%s/%s.sock", h_tmpdir(),
			    ups[i].name);

		tmp = h_xasprintf("%s%s{ \"name\": \"%s\", \"address\": "
		    "\"%s\"%s%s }", list, i > 0 ? ",\n" : "", ups[i].name,
		    addr, ups[i].json != NULL ? ", " : "",
		    ups[i].json != NULL ? ups[i].json : "");
		free(addr);
		free(list);
		list = tmp;
	}
	if (inet) {
		e->mux_port = h_free_port();
		cr_assert(e->mux_port > 0);
		e->mux_sock = NULL;
		e->mux_spec = h_xasprintf("inet:%d@127.0.0.1", e->mux_port);
	} else {
		e->mux_sock = h_xasprintf("%s/mux.sock", h_tmpdir());
		e->mux_spec = h_xasprintf("unix:%s", e->mux_sock);
	}
	e->mux_log = h_xasprintf("%s/miltermux.log", h_tmpdir());
	e->conf = h_xasprintf("%s/miltermux.json", h_tmpdir());
	cfg = h_xasprintf("{\n\"listen\": \"%s\",\n\"threads\": 2,\n"
	    "%s%s\"upstreams\": [\n%s\n] }\n", e->mux_spec,
	    top != NULL ? top : "", top != NULL ? ",\n" : "", list);
	cr_assert_eq(h_write_file(e->conf, cfg), 0);
	argv[0] = BIN("miltermux");
	argv[1] = "-f";
	argv[2] = "-v";
	argv[3] = "-c";
	argv[4] = e->conf;
	argv[5] = NULL;
	if (env_mux_pidfile != NULL) {
		argv[5] = "-p";
		argv[6] = env_mux_pidfile;
		argv[7] = NULL;
	}
	e->mux = h_spawn(argv, e->mux_log);
	cr_assert(e->mux > 0);
	cr_assert_eq(inet ? h_wait_port(e->mux_port, 10) :
	    h_wait_unix(e->mux_sock, 10), 0,
	    "miltermux did not come up:\n%s", env_mux_log(e));
	free(cfg);
	free(list);
}

void
env_setup(struct env *e, const struct up *ups, size_t n, const char *top,
    int inet)
{
	memset(e, 0, sizeof *e);
	env_start_upstreams(e, ups, n);
	env_start_mux(e, ups, n, top, inet);
}

/* env_stop - all SIGTERMed at once, then each given what is left */
void
env_stop(struct env *e, double grace_s)
{
	double	 deadline = h_now() + grace_s, left;

	if (e->mux > 0)
		(void)h_kill(e->mux, SIGTERM);
	for (size_t i = 0; i < e->n; i++)
		if (e->up_pid[i] > 0)
			(void)h_kill(e->up_pid[i], SIGTERM);
	if (e->mux > 0) {
		left = deadline - h_now();
		(void)h_stop(e->mux, left > 0 ? left : 0, NULL);
	}
	e->mux = 0;
	for (size_t i = 0; i < e->n; i++) {
		left = deadline - h_now();
		if (e->up_pid[i] > 0)
			(void)h_stop(e->up_pid[i], left > 0 ? left : 0, NULL);
		e->up_pid[i] = 0;
	}
}

char *
env_mux_log(struct env *e)
{
	char	*log = h_read_file(e->mux_log);

	return log != NULL ? log : h_xstrdup("");
}

char *
env_wait_log(struct env *e, const char *needle)
{
	h_wait_file_contains(e->mux_log, needle, 10);
	return env_mux_log(e);
}

int
env_setup_metrics(struct env *e, const struct up *ups, size_t n,
    const char *top, int inet)
{
	int	 port = h_free_port();
	char	*all;

	cr_assert(port > 0);
	all = h_xasprintf("\"metrics\": { \"listen\": \"inet:%d@127.0.0.1\" }"
	    "%s%s", port, top != NULL ? ", " : "", top != NULL ? top : "");
	env_setup(e, ups, n, all, inet);
	free(all);
	cr_assert_eq(h_wait_port(port, 10), 0, "no metrics listener:\n%s",
	    env_mux_log(e));
	return port;
}

char *
env_http_get(int port, const char *path, int *code)
{
	char		*url = h_xasprintf("http://127.0.0.1:%d%s", port, path);
	const char	*argv[] = { "curl", "-sS", "-m", "5", "-o", "-", "-w",
			    "\n%{http_code}", url, NULL };
	char		*out = NULL, *nl;
	int		 st = 0, c;

	cr_assert_eq(h_run(argv, 10, &out, &st), 0, "curl did not run");
	cr_assert(out != NULL);
	nl = strrchr(out, '\n');
	cr_assert(nl != NULL, "curl: %s", out);
	c = atoi(nl + 1);
	*nl = '\0';
	free(url);
	if (code != NULL)
		*code = c;
	else
		cr_assert_eq(c, 200, "GET %s: %d: %s", path, c, out);
	return out;
}

double
env_metric(const char *body, const char *name)
{
	size_t		 len = strlen(name);
	const char	*p = body;

	while ((p = strstr(p, name)) != NULL) {
		if ((p == body || p[-1] == '\n') && p[len] == ' ')
			return strtod(p + len + 1, NULL);
		p += len;
	}
	return -1;
}

char *
env_scrape_until(int port, const char *name, double want)
{
	char	*body = NULL;

	for (int i = 0; i < 100; i++) {
		free(body);
		body = env_http_get(port, "/metrics", NULL);
		if (env_metric(body, name) == want)
			break;
		nanosleep(&(struct timespec){ 0, 50 * 1000 * 1000 }, NULL);
	}
	return body;
}
