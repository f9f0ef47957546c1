/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_conf - configuration loading, validation, dump and publication.
 *
 * Fixtures live in TEST_DATA_DIR (tests/data/conf_*.json).  Each error
 * case asserts the exact "FILE:LINE:COLUMN: KEY.PATH: " prefix, with
 * positions counted by hand from the fixture, and a fragment of the
 * message.  Address cases avoid the network: names resolve through
 * /etc/hosts ("localhost") or fail before any query ("no..such.host"
 * has an empty label, which the resolver refuses locally).
 */
#include <sys/socket.h>
#include <sys/un.h>

#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "codec.h"
#include "conf.h"

#ifndef TEST_DATA_DIR
#define TEST_DATA_DIR "tests/data"
#endif

/* fixture - the path of a data file; valid until the next call */
static const char *
fixture(const char *name)
{
	static char	 path[4096];

	snprintf(path, sizeof path, "%s/%s", TEST_DATA_DIR, name);
	return path;
}

static void
dump_errors(const struct conf_errors *errs)
{
	for (size_t i = 0; i < errs->n; i++)
		cr_log_error("%s", errs->v[i]);
}

/* load_ok - load a fixture that must be valid; caller releases */
static struct conf *
load_ok(const char *name)
{
	struct conf_errors	 errs = { 0 };
	struct conf		*c;
	int			 rc;

	rc = conf_load(fixture(name), &c, &errs);
	if (rc != 0)
		dump_errors(&errs);
	cr_assert_eq(rc, 0, "%s: conf_load returned %d", name, rc);
	cr_assert_eq(errs.n, 0);
	cr_assert_not_null(c);
	conf_errors_fini(&errs);
	return c;
}

/* parse_text - conf_parse on a string that must be valid */
static struct conf *
parse_text(const char *text, const char *name)
{
	struct conf_errors	 errs = { 0 };
	struct conf		*c;
	int			 rc;

	rc = conf_parse(text, strlen(text), name, &c, &errs);
	if (rc != 0)
		dump_errors(&errs);
	cr_assert_eq(rc, 0, "%s: conf_parse returned %d", name, rc);
	cr_assert_not_null(c);
	conf_errors_fini(&errs);
	return c;
}

static void
assert_timeouts(const struct conf_timeouts *t, double connect,
    double command, double content)
{
	cr_assert_float_eq(t->connect, connect, 1e-9);
	cr_assert_float_eq(t->command, command, 1e-9);
	cr_assert_float_eq(t->content, content, 1e-9);
}

static void
assert_inet(const struct conf_addr *a, const char *ip, unsigned port)
{
	const struct sockaddr_in	*sin = (const void *)&a->sa;
	char				 buf[INET_ADDRSTRLEN];

	cr_assert_eq(sin->sin_family, AF_INET);
	cr_assert_eq(a->salen, sizeof *sin);
	cr_assert_eq(ntohs(sin->sin_port), port);
	cr_assert_not_null(inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf));
	cr_assert_str_eq(buf, ip);
}

static void
assert_inet6(const struct conf_addr *a, const char *ip, unsigned port)
{
	const struct sockaddr_in6	*sin6 = (const void *)&a->sa;
	char				 buf[INET6_ADDRSTRLEN];

	cr_assert_eq(sin6->sin6_family, AF_INET6);
	cr_assert_eq(a->salen, sizeof *sin6);
	cr_assert_eq(ntohs(sin6->sin6_port), port);
	cr_assert_not_null(inet_ntop(AF_INET6, &sin6->sin6_addr, buf,
	    sizeof buf));
	cr_assert_str_eq(buf, ip);
}

static void
assert_unix(const struct conf_addr *a, const char *path)
{
	const struct sockaddr_un	*su = (const void *)&a->sa;

	cr_assert_eq(su->sun_family, AF_UNIX);
	cr_assert_str_eq(su->sun_path, path);
	cr_assert_eq(a->salen,
	    offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
}

static bool
has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/*
 * One fixture per kind of error, each holding exactly that one error.
 * Strings are arrays, not pointers: Criterion copies the case into the
 * test's own process.
 */
struct error_case {
	char	file[48];
	char	where[48];	/* ":LINE:COL: PATH: " after the file name */
	char	says[64];	/* a fragment of the message */
};

ParameterizedTestParameters(conf, reports_each_error_kind_at_its_position)
{
	static struct error_case cases[] = {
		{ "conf_err_syntax.json", ":5:3: (syntax): ",
		  "unexpected token near ']'" },
		/* jansson places it at the end of the repeated key. */
		{ "conf_err_duplicate_key.json", ":3:11: (syntax): ",
		  "duplicate object key" },
		{ "conf_err_top_array.json", ":2:3: (top level): ",
		  "must be a JSON object, not an array" },
		{ "conf_err_unknown_top.json", ":3:3: thread: ",
		  "unknown key; expected one of listen, threads," },
		{ "conf_err_unknown_timeout.json", ":2:31: timeouts.conect: ",
		  "unknown key; expected one of connect, command, content" },
		{ "conf_err_unknown_macro_stage.json", ":4:5: macros.rcpt: ",
		  "unknown key; expected one of connect, helo," },
		{ "conf_err_unknown_upstream_key.json",
		  ":4:57: upstreams[1].weight: ", "unknown key" },
		{ "conf_err_unknown_upstream_timeout.json",
		  ":4:21: upstreams[0].timeouts.body: ", "unknown key" },
		{ "conf_err_type.json", ":2:14: threads: ",
		  "must be an integer, not a string" },
		{ "conf_err_type_real_threads.json", ":2:14: threads: ",
		  "must be an integer, not a real number" },
		{ "conf_err_type_bool.json", ":3:68: upstreams[0].enabled: ",
		  "must be true or false, not a string" },
		{ "conf_err_range_threads.json", ":2:14: threads: ",
		  "1025 is out of range 1..1024" },
		{ "conf_err_range_max_sessions.json", ":2:19: max_sessions: ",
		  "0 is out of range 1..1000000" },
		{ "conf_err_type_max_sessions.json", ":3:19: max_sessions: ",
		  "must be an integer, not a string" },
		{ "conf_err_range_timeout.json", ":2:28: timeouts.connect: ",
		  "0 is out of range" },
		{ "conf_err_range_upstream_timeout.json",
		  ":4:32: upstreams[0].timeouts.content: ",
		  "3600.5 is out of range" },
		{ "conf_err_enum.json", ":5:21: upstreams[0].on_failure: ",
		  "\"maybe\" is not one of accept, tempfail, reject" },
		{ "conf_err_duplicate_name.json", ":4:15: upstreams[1].name: ",
		  "\"dkim\" is already the name of upstreams[0]" },
		{ "conf_err_bad_name.json", ":3:15: upstreams[0].name: ",
		  "\"dkim signer\" is not a valid upstream name" },
		{ "conf_err_bad_address.json", ":3:34: upstreams[0].address: ",
		  "port 99999 is out of range 1..65535" },
		{ "conf_err_unresolvable_address.json",
		  ":3:34: upstreams[0].address: ",
		  "cannot resolve \"no..such.host\"" },
		{ "conf_err_listen_address.json", ":2:13: listen: ",
		  "unknown socket type \"tcp\"" },
		{ "conf_err_no_enabled.json", ":2:16: upstreams: ",
		  "no upstream is enabled" },
		{ "conf_err_empty_upstreams.json", ":1:30: upstreams: ",
		  "is empty; at least one enabled upstream" },
		{ "conf_err_missing_upstreams.json", ":1:1: upstreams: ",
		  "required key is missing" },
		{ "conf_err_missing_address.json",
		  ":4:5: upstreams[1].address: ", "required key is missing" },
		{ "conf_err_macro_name.json", ":2:44: macros.envfrom[1]: ",
		  "\"{auth authen}\" is not a macro name" },
		{ "conf_err_macro_duplicate.json",
		  ":2:57: macros.envrcpt[2]: ",
		  "listed twice (first at macros.envrcpt[0])" },
		{ "conf_err_macro_too_many.json", ":3:13: macros.data: ",
		  "lists 51 macro names; at most 50" },
		{ "conf_err_range_phase.json", ":3:29: upstreams[0].phase: ",
		  "0 is out of range 1..100" },
		{ "conf_err_type_phase.json", ":2:79: upstreams[0].phase: ",
		  "must be an integer, not a string" },
		{ "conf_err_range_max_modifications.json",
		  ":3:41: upstreams[0].max_modifications: ",
		  "0 is out of range 1..10000000" },
		{ "conf_err_type_max_modifications.json",
		  ":2:24: max_modifications: ",
		  "must be an integer, not a string" },
		{ "conf_err_type_reuse.json", ":2:12: reuse: ",
		  "must be true or false, not a string" },
		{ "conf_err_range_reuse_idle_max.json",
		  ":3:38: upstreams[0].reuse_idle_max: ",
		  "5000 is out of range 0..4096" },
		{ "conf_err_range_reuse_idle_timeout.json",
		  ":2:25: reuse_idle_timeout: ",
		  "0 is out of range; must be more than 0 and at most 3600" },
		{ "conf_err_replay_memory.json", ":2:25: replay.memory: ",
		  "-1 is out of range 0..1073741824 bytes" },
		{ "conf_err_replay_directory.json", ":2:28: replay.directory: ",
		  "\"var/tmp\" is not an absolute path" },
		{ "conf_err_replay_unknown.json", ":2:15: replay.dir: ",
		  "unknown key; expected one of memory, directory" },
		{ "conf_err_metrics_unix.json", ":2:26: metrics.listen: ",
		  "HTTP is served on TCP only: use inet:PORT@HOST" },
		{ "conf_err_metrics_port.json", ":2:26: metrics.listen: ",
		  "port 99999 is out of range 1..65535" },
		{ "conf_err_metrics_unknown.json", ":2:49: metrics.port: ",
		  "unknown key; expected one of listen" },
		{ "conf_err_metrics_no_listen.json", ":2:14: metrics: ",
		  "has no \"listen\"" },
		{ "conf_err_metrics_type.json", ":2:14: metrics: ",
		  "must be an object, not a string" },
		{ "conf_err_cond_cidr.json",
		  ":4:46: upstreams[0].apply_if.client[1]: ",
		  "\"10.1.2.3/8\" is not a CIDR" },
		{ "conf_err_cond_domain.json",
		  ":4:37: upstreams[0].apply_if.rcpt_domain[0]: ",
		  "\"user@example.org\" is not a domain" },
		{ "conf_err_cond_empty.json", ":4:19: upstreams[0].apply_if: ",
		  "has no condition" },
		{ "conf_err_cond_key.json",
		  ":4:20: upstreams[0].skip_if.sender: ",
		  "unknown key; expected one of client, auth," },
		{ "conf_err_action.json", ":4:32: upstreams[0].actions[1]: ",
		  "\"rewrite\" is not an action" },
		{ "conf_err_verdict_from.json",
		  ":4:21: upstreams[0].verdicts.continue: ",
		  "unknown key; expected one of reject, tempfail," },
		{ "conf_err_verdict_to.json",
		  ":4:31: upstreams[0].verdicts.reject: ",
		  "\"maybe\" is not a verdict" },
		{ "conf_err_verdict_header.json",
		  ":4:46: upstreams[0].verdicts.reject.addheader: ",
		  "\"no colon here\" is not a header" },
		/* Columns count characters: two of the bytes before are é, à. */
		{ "conf_err_utf8_column.json", ":2:80: upstreams[0].on_failure: ",
		  "\"x\" is not one of" },
	};

	return cr_make_param_array(struct error_case, cases,
	    sizeof cases / sizeof cases[0]);
}

ParameterizedTest(struct error_case *tc, conf,
    reports_each_error_kind_at_its_position)
{
	struct conf_errors	 errs = { 0 };
	struct conf		*c = (void *)1;
	char			 prefix[4608];
	int			 rc;

	rc = conf_load(fixture(tc->file), &c, &errs);
	if (errs.n != 1)
		dump_errors(&errs);
	cr_assert_eq(rc, -EINVAL, "%s: rc %d", tc->file, rc);
	cr_assert_null(c);
	cr_assert_eq(errs.n, 1, "%s: %zu errors", tc->file, errs.n);
	snprintf(prefix, sizeof prefix, "%s%s", fixture(tc->file), tc->where);
	cr_assert(has_prefix(errs.v[0], prefix), "got \"%s\", want prefix "
	    "\"%s\"", errs.v[0], prefix);
	cr_assert_not_null(strstr(errs.v[0] + strlen(prefix), tc->says),
	    "got \"%s\", want \"%s\" in it", errs.v[0], tc->says);
	cr_assert_null(strchr(errs.v[0], '\n'));
	conf_errors_fini(&errs);
}

Test(conf, reports_unreadable_file_without_position)
{
	struct conf_errors	 errs = { 0 };
	struct conf		*c = (void *)1;
	char			 want[4200];

	cr_assert_eq(conf_load(fixture("conf_no_such_file.json"), &c, &errs),
	    -ENOENT);
	cr_assert_null(c);
	cr_assert_eq(errs.n, 1);
	snprintf(want, sizeof want, "%s: cannot read: No such file or "
	    "directory", fixture("conf_no_such_file.json"));
	cr_assert_str_eq(errs.v[0], want);
	conf_errors_fini(&errs);
	cr_assert_null(errs.v);
	cr_assert_eq(errs.n, 0);
}

Test(conf, reports_every_error_in_one_file_in_file_order)
{
	static const char *const want[] = {
		":3:14: threads: 0 is out of range 1..1024",
		":4:42: timeouts.command: must be a number of seconds, "
		    "not a string",
		":5:17: on_failure: \"bounce\" is not one of accept, "
		    "tempfail, reject",
		":6:3: verbose: unknown key; expected one of listen, "
		    "threads, ",
		":8:34: upstreams[0].address: \"unix:run/dkim.sock\": "
		    "socket path must be absolute",
		":9:15: upstreams[1].name: \"dkim\" is already the name of "
		    "upstreams[0]",
		":10:32: upstreams[1].timeouts.content: -1 is out of range",
	};
	struct conf_errors	 errs = { 0 };
	struct conf		*c;
	char			 prefix[4608];
	size_t			 n = sizeof want / sizeof want[0];

	cr_assert_eq(conf_load(fixture("conf_err_many.json"), &c, &errs),
	    -EINVAL);
	if (errs.n != n)
		dump_errors(&errs);
	cr_assert_null(c);
	cr_assert_eq(errs.n, n, "%zu errors, want %zu", errs.n, n);
	for (size_t i = 0; i < n; i++) {
		snprintf(prefix, sizeof prefix, "%s%s",
		    fixture("conf_err_many.json"), want[i]);
		cr_assert(has_prefix(errs.v[i], prefix), "error %zu: got "
		    "\"%s\", want prefix \"%s\"", i, errs.v[i], prefix);
	}
	conf_errors_fini(&errs);
}

Test(conf, appends_to_errors_already_collected)
{
	struct conf_errors	 errs = { 0 };
	struct conf		*c;

	cr_assert_eq(conf_load(fixture("conf_err_type.json"), &c, &errs),
	    -EINVAL);
	cr_assert_eq(conf_load(fixture("conf_err_enum.json"), &c, &errs),
	    -EINVAL);
	cr_assert_eq(errs.n, 2);
	cr_assert_not_null(strstr(errs.v[0], "conf_err_type.json:2:14: "));
	cr_assert_not_null(strstr(errs.v[1], "conf_err_enum.json:5:21: "));
	conf_errors_fini(&errs);
}

Test(conf, decodes_escaped_keys_and_quotes_odd_ones_in_paths)
{
	struct conf_errors	 errs = { 0 };
	struct conf		*c;
	char			 want[4608];

	cr_assert_eq(conf_load(fixture("conf_err_escaped_key.json"), &c,
	    &errs), -EINVAL);
	if (errs.n != 2)
		dump_errors(&errs);
	cr_assert_eq(errs.n, 2);
	/* "list\u0065n" is the key listen; its value is the problem. */
	snprintf(want, sizeof want, "%s:2:18: listen: must be a string, not "
	    "an integer", fixture("conf_err_escaped_key.json"));
	cr_assert_str_eq(errs.v[0], want);
	snprintf(want, sizeof want, "%s:3:3: [\"a.b\"]: unknown key",
	    fixture("conf_err_escaped_key.json"));
	cr_assert(has_prefix(errs.v[1], want), "got \"%s\"", errs.v[1]);
	conf_errors_fini(&errs);
}

Test(conf, reports_syntax_error_of_text_in_memory_under_its_name)
{
	static const char	 text[] = "{\n  \"threads\": 4,,\n}\n";
	struct conf_errors	 errs = { 0 };
	struct conf		*c;

	cr_assert_eq(conf_parse(text, strlen(text), "inline", &c, &errs),
	    -EINVAL);
	cr_assert_null(c);
	cr_assert_eq(errs.n, 1);
	cr_assert(has_prefix(errs.v[0], "inline:2:16: (syntax): "), "got "
	    "\"%s\"", errs.v[0]);
	conf_errors_fini(&errs);
}

Test(conf, reports_an_empty_file_as_such)
{
	struct conf_errors	 errs = { 0 };
	struct conf		*c;

	cr_assert_eq(conf_parse(" \n", 2, "empty", &c, &errs), -EINVAL);
	cr_assert_eq(errs.n, 1);
	cr_assert_str_eq(errs.v[0], "empty:1:1: (syntax): the file is empty; "
	    "expected a JSON object");
	conf_errors_fini(&errs);
}

/* jansson 2.14 takes the text after a NUL that follows a number. */
Test(conf, refuses_a_nul_byte_at_its_position)
{
	static const char	 text[] = "{\n  \"threads\": 4\0, \"bogus\": 1,\n"
	    "  \"upstreams\": [ { \"name\": \"x\", \"address\": "
	    "\"inet:1@127.0.0.1\" } ] }";
	struct conf_errors	 errs = { 0 };
	struct conf		*c;

	cr_assert_eq(conf_parse(text, sizeof text - 1, "nul", &c, &errs),
	    -EINVAL);
	cr_assert_null(c);
	cr_assert_eq(errs.n, 1);
	cr_assert_str_eq(errs.v[0], "nul:2:15: (syntax): NUL byte; a "
	    "configuration file is text");
	conf_errors_fini(&errs);
}

Test(conf, escapes_control_characters_so_each_error_is_one_line)
{
	static const char	 text[] = "{ \"on_failure\": \"a\\nb\", "
	    "\"upstreams\": [ { \"name\": \"x\", \"address\": "
	    "\"inet:1@127.0.0.1\" } ] }";
	struct conf_errors	 errs = { 0 };
	struct conf		*c;

	cr_assert_eq(conf_parse(text, strlen(text), "bad\nname", &c, &errs),
	    -EINVAL);
	cr_assert_eq(errs.n, 1);
	cr_assert_str_eq(errs.v[0], "bad?name:1:17: on_failure: \"a\\u000ab\" "
	    "is not one of accept, tempfail, reject");
	conf_errors_fini(&errs);
}

Test(conf, loads_every_value_of_a_full_config)
{
	struct conf			*c = load_ok("conf_full.json");
	const struct conf_upstream	*u = c->upstreams;

	cr_assert_str_eq(c->path, fixture("conf_full.json"));
	cr_assert_eq(atomic_load(&c->refs), 1);
	cr_assert_str_eq(c->listen, "unix:/run/miltermux/miltermux.sock");
	cr_assert_eq(c->threads, 16);
	assert_timeouts(&c->timeouts, 2.5, 10, 120);
	cr_assert_eq(c->on_failure, ONFAIL_REJECT);
	cr_assert_eq(c->max_sessions, 500);

	cr_assert_eq(c->nmacros[MACRO_CONNECT], 2);
	cr_assert_str_eq(c->macros[MACRO_CONNECT][0], "j");
	cr_assert_str_eq(c->macros[MACRO_CONNECT][1], "{daemon_name}");
	cr_assert_null(c->macros[MACRO_CONNECT][2]);
	cr_assert_eq(c->nmacros[MACRO_ENVFROM], 2);
	cr_assert_str_eq(c->macros[MACRO_ENVFROM][0], "{auth_authen}");
	cr_assert_str_eq(c->macros[MACRO_ENVFROM][1], "{auth_type}");
	cr_assert_eq(c->nmacros[MACRO_EOM], 1);
	cr_assert_str_eq(c->macros[MACRO_EOM][0], "i");
	cr_assert_eq(c->nmacros[MACRO_EOH], 0);
	cr_assert_not_null(c->macros[MACRO_EOH]);
	cr_assert_null(c->macros[MACRO_EOH][0]);

	cr_assert_eq(c->nupstreams, 4);
	cr_assert_str_eq(u[0].name, "dkim");
	cr_assert_str_eq(u[0].address, "inet:8891@127.0.0.1");
	assert_inet(&u[0].addr, "127.0.0.1", 8891);
	cr_assert(u[0].enabled);
	cr_assert_eq(u[0].on_failure, ONFAIL_ACCEPT);
	cr_assert_str_eq(u[1].name, "spam");
	assert_inet6(&u[1].addr, "::1", 8892);
	cr_assert_eq(u[1].on_failure, ONFAIL_REJECT, "inherits top level");
	cr_assert_str_eq(u[2].name, "old-av");
	assert_unix(&u[2].addr, "/run/av/av.sock");
	cr_assert_not(u[2].enabled);
	cr_assert_str_eq(u[3].name, "policy");
	assert_unix(&u[3].addr, "/run/policy.sock");
	cr_assert_eq(u[3].on_failure, ONFAIL_TEMPFAIL);
	conf_release(c);
}

Test(conf, fills_every_default_in_a_minimal_config)
{
	struct conf	*c = load_ok("conf_minimal.json");

	cr_assert_str_eq(c->listen, CONF_DEFAULT_LISTEN);
	cr_assert_eq(c->threads, CONF_DEFAULT_THREADS);
	assert_timeouts(&c->timeouts, CONF_DEFAULT_CONNECT,
	    CONF_DEFAULT_COMMAND, CONF_DEFAULT_CONTENT);
	cr_assert_eq(c->on_failure, ONFAIL_TEMPFAIL);
	cr_assert_eq(c->max_sessions, 0, "derived at start");
	for (int s = 0; s < MACRO_STAGE_COUNT; s++) {
		cr_assert_eq(c->nmacros[s], 0);
		cr_assert_not_null(c->macros[s]);
		cr_assert_null(c->macros[s][0]);
	}
	cr_assert_eq(c->nupstreams, 1);
	cr_assert_eq(c->nenabled, 1);
	cr_assert(c->upstreams[0].enabled);
	cr_assert_eq(c->upstreams[0].on_failure, ONFAIL_TEMPFAIL);
	assert_timeouts(&c->upstreams[0].timeouts, 5, 8, 60);
	conf_release(c);
}

Test(conf, upstream_timeouts_override_top_level_key_by_key)
{
	struct conf	*c = load_ok("conf_full.json");

	/* Top level: 2.5 / 10 / 120 (command written as an integer). */
	assert_timeouts(&c->upstreams[0].timeouts, 2.5, 10, 120);
	assert_timeouts(&c->upstreams[1].timeouts, 2.5, 10, 30.5);
	assert_timeouts(&c->upstreams[3].timeouts, 1, 3, 120);
	conf_release(c);
}

Test(conf, max_modifications_defaults_at_top_level_and_per_upstream)
{
	struct conf	*c = load_ok("conf_minimal.json");

	cr_assert_eq(c->max_mods, CONF_DEFAULT_MAX_MODS);
	cr_assert_eq(c->upstreams[0].max_mods, CONF_DEFAULT_MAX_MODS);
	conf_release(c);
	c = parse_text("{ \"max_modifications\": 50, \"upstreams\": [\n"
	    "  { \"name\": \"a\", \"address\": \"unix:/a.sock\" },\n"
	    "  { \"name\": \"b\", \"address\": \"unix:/b.sock\",\n"
	    "    \"max_modifications\": 10000000 } ] }", "max.json");
	cr_assert_eq(c->max_mods, 50);
	cr_assert_eq(c->upstreams[0].max_mods, 50, "inherits top level");
	cr_assert_eq(c->upstreams[1].max_mods, 10000000);
	conf_release(c);
}

Test(conf, reuse_defaults_at_top_level_and_per_upstream)
{
	struct conf	*c = load_ok("conf_minimal.json");
	char		*dump;

	cr_assert_eq(c->reuse.enabled, CONF_DEFAULT_REUSE);
	cr_assert_not(c->reuse.enabled, "off unless asked for");
	cr_assert_eq(c->reuse.idle_max, CONF_DEFAULT_IDLE_MAX);
	cr_assert_eq(c->reuse.idle_timeout, CONF_DEFAULT_IDLE_TIMEOUT);
	cr_assert_not(c->upstreams[0].reuse.enabled);
	conf_release(c);
	c = parse_text("{ \"reuse\": true, \"reuse_idle_max\": 4,\n"
	    "  \"upstreams\": [\n"
	    "  { \"name\": \"a\", \"address\": \"unix:/a.sock\" },\n"
	    "  { \"name\": \"b\", \"address\": \"unix:/b.sock\",\n"
	    "    \"reuse\": false, \"reuse_idle_max\": 0,\n"
	    "    \"reuse_idle_timeout\": 2.5 } ] }", "reuse.json");
	cr_assert(c->reuse.enabled);
	cr_assert_eq(c->reuse.idle_max, 4);
	cr_assert(c->upstreams[0].reuse.enabled, "inherits top level");
	cr_assert_eq(c->upstreams[0].reuse.idle_max, 4);
	cr_assert_eq(c->upstreams[0].reuse.idle_timeout,
	    CONF_DEFAULT_IDLE_TIMEOUT);
	cr_assert_not(c->upstreams[1].reuse.enabled);
	cr_assert_eq(c->upstreams[1].reuse.idle_max, 0);
	cr_assert_eq(c->upstreams[1].reuse.idle_timeout, 2.5);
	dump = conf_dump(c);
	cr_assert_not_null(strstr(dump, "\"reuse_idle_timeout\": 2.5"),
	    "%s", dump);
	free(dump);
	conf_release(c);
}

Test(conf, disabled_upstream_is_not_counted_in_nenabled)
{
	struct conf	*c = load_ok("conf_full.json");

	cr_assert_eq(c->nupstreams, 4);
	cr_assert_eq(c->nenabled, 3);
	conf_release(c);
}

Test(conf, disabled_upstream_need_not_resolve)
{
	struct conf	*c = load_ok("conf_disabled_unresolvable.json");

	cr_assert_eq(c->nenabled, 1);
	cr_assert_not(c->upstreams[1].enabled);
	cr_assert_str_eq(c->upstreams[1].address, "inet:8892@no..such.host");
	cr_assert_eq(c->upstreams[1].addr.salen, 0);
	conf_release(c);
}

Test(conf, shipped_config_loads_cleanly)
{
	struct conf	*c = load_ok("../../etc/miltermux.json");

	cr_assert_str_eq(c->listen, "inet:8890@127.0.0.1");
	cr_assert_eq(c->threads, 4);
	cr_assert_eq(c->max_sessions, 1000);
	cr_assert_eq(c->nupstreams, 5);
	cr_assert_eq(c->nenabled, 3);
	cr_assert_eq(c->nmacros[MACRO_ENVFROM], 1);
	/* Two more, shown disabled: a monitor and a shadow. */
	cr_assert_eq(c->upstreams[0].mode, MODE_ENFORCE);
	cr_assert_eq(c->upstreams[3].mode, MODE_MONITOR);
	cr_assert_eq(c->upstreams[4].mode, MODE_SHADOW);
	cr_assert_eq(c->upstreams[4].shadow_queue, 100);
	cr_assert_eq(c->upstreams[4].shadow_queue_bytes, 67108864);
	assert_timeouts(&c->upstreams[0].timeouts, 5, 8, 30);
	assert_inet(&c->upstreams[1].addr, "127.0.0.1", 8893);
	cr_assert_eq(c->upstreams[2].on_failure, ONFAIL_ACCEPT);
	/* The signer runs after the others (README, "Phases"). */
	cr_assert_eq(c->upstreams[0].phase, 1);
	cr_assert_eq(c->upstreams[2].phase, 2);
	cr_assert_eq(c->nphases, 2);
	cr_assert_eq(c->replay_memory, 4194304);
	cr_assert_str_eq(c->replay_dir, "/var/tmp");
	cr_assert_eq(c->max_mods, 100000);
	cr_assert_eq(c->upstreams[1].max_mods, 100);
	cr_assert_eq(c->upstreams[2].max_mods, 100000);
	/* Metrics on, on loopback only (miltermux.json(5), EXAMPLES). */
	cr_assert_str_eq(c->metrics_listen, "inet:9899@127.0.0.1");
	assert_inet(&c->metrics_addr, "127.0.0.1", 9899);
	conf_release(c);
}

static void
assert_same_conf(const struct conf *a, const struct conf *b)
{
	const struct conf_upstream	*u, *v;

	cr_assert_str_eq(a->listen, b->listen);
	cr_assert_eq(a->threads, b->threads);
	cr_assert(memcmp(&a->timeouts, &b->timeouts, sizeof a->timeouts) == 0);
	cr_assert_eq(a->on_failure, b->on_failure);
	cr_assert_eq(a->max_sessions, b->max_sessions);
	cr_assert_eq(a->max_mods, b->max_mods);
	cr_assert_eq(a->replay_memory, b->replay_memory);
	cr_assert_str_eq(a->replay_dir, b->replay_dir);
	cr_assert_eq(a->metrics_listen == NULL, b->metrics_listen == NULL);
	if (a->metrics_listen != NULL)
		cr_assert_str_eq(a->metrics_listen, b->metrics_listen);
	cr_assert_eq(a->nphases, b->nphases);
	for (int s = 0; s < MACRO_STAGE_COUNT; s++) {
		cr_assert_eq(a->nmacros[s], b->nmacros[s]);
		for (size_t i = 0; i <= a->nmacros[s]; i++)
			if (a->macros[s][i] == NULL)
				cr_assert_null(b->macros[s][i]);
			else
				cr_assert_str_eq(a->macros[s][i],
				    b->macros[s][i]);
	}
	cr_assert_eq(a->nupstreams, b->nupstreams);
	cr_assert_eq(a->nenabled, b->nenabled);
	for (size_t i = 0; i < a->nupstreams; i++) {
		u = &a->upstreams[i];
		v = &b->upstreams[i];
		cr_assert_str_eq(u->name, v->name);
		cr_assert_str_eq(u->address, v->address);
		cr_assert_eq(u->addr.salen, v->addr.salen);
		cr_assert(memcmp(&u->addr.sa, &v->addr.sa, u->addr.salen) == 0);
		cr_assert_eq(u->pool, v->pool);
		cr_assert_eq(u->nreplicas, v->nreplicas);
		for (size_t r = 0; r < u->nreplicas; r++) {
			cr_assert_str_eq(u->replicas[r].address,
			    v->replicas[r].address);
			cr_assert_str_eq(u->replicas[r].label,
			    v->replicas[r].label);
		}
		cr_assert_eq(u->enabled, v->enabled);
		cr_assert_eq(u->on_failure, v->on_failure);
		cr_assert_eq(u->phase, v->phase);
		cr_assert_eq(u->max_mods, v->max_mods);
		cr_assert(memcmp(&u->timeouts, &v->timeouts,
		    sizeof u->timeouts) == 0, "upstream %zu timeouts", i);
	}
}

/* round_trip - conf_parse(conf_dump(c)) must equal c */
static void
round_trip(struct conf *c)
{
	struct conf	*d;
	char		*text = conf_dump(c);

	cr_assert_not_null(text);
	d = parse_text(text, "dump");
	assert_same_conf(c, d);
	conf_release(d);
	free(text);
}

Test(conf, dump_then_parse_gives_an_equal_config)
{
	static const char *const files[] = {
		"conf_full.json", "conf_minimal.json",
		"conf_disabled_unresolvable.json", "../../etc/miltermux.json",
	};
	struct conf	*c;

	for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
		c = load_ok(files[i]);
		round_trip(c);
		conf_release(c);
	}
}

Test(conf, dump_writes_reals_in_shortest_exact_form)
{
	struct conf	*c;
	char		*text;

	c = parse_text("{ \"timeouts\": { \"connect\": 0.1, \"command\": "
	    "0.30000000000000004 }, \"upstreams\": [ { \"name\": \"a\", "
	    "\"address\": \"inet:1@127.0.0.1\" } ] }", "reals");
	/* 17 digits are needed here, so every real gets them. */
	text = conf_dump(c);
	cr_assert_not_null(strstr(text, "\"command\": 0.30000000000000004"),
	    "%s", text);
	round_trip(c);
	free(text);
	conf_release(c);

	c = parse_text("{ \"timeouts\": { \"connect\": 0.1 }, \"upstreams\": "
	    "[ { \"name\": \"a\", \"address\": \"inet:1@127.0.0.1\" } ] }",
	    "short");
	text = conf_dump(c);
	cr_assert_not_null(strstr(text, "\"connect\": 0.1,"), "%s", text);
	round_trip(c);
	free(text);
	conf_release(c);
}

Test(conf, dump_fills_in_every_default)
{
	struct conf	*c = load_ok("conf_minimal.json");
	char		*text = conf_dump(c);

	cr_assert_eq(text[0], '{');
	cr_assert_not_null(strstr(text, "  \"listen\": \"inet:8890@127.0.0.1\""),
	    "%s", text);
	cr_assert_not_null(strstr(text, "\"threads\": 4"));
	cr_assert_not_null(strstr(text, "\"connect\": 5"));
	cr_assert_not_null(strstr(text, "\"command\": 8"));
	cr_assert_not_null(strstr(text, "\"content\": 60"));
	cr_assert_not_null(strstr(text, "\"on_failure\": \"tempfail\""));
	cr_assert_not_null(strstr(text, "\"eom\": []"));
	cr_assert_not_null(strstr(text, "\"enabled\": true"));
	/* The upstream's own effective timeouts are written out too. */
	cr_assert_not_null(strstr(strstr(text, "\"name\": \"only\""),
	    "\"timeouts\": {"));
	free(text);
	conf_release(c);
}

Test(conf, publish_acquire_release_share_one_snapshot)
{
	struct conf	*a = load_ok("conf_minimal.json");
	struct conf	*b = load_ok("conf_full.json");
	struct conf	*p, *q;

	conf_publish(a);			/* takes our reference */
	p = conf_acquire();
	cr_assert_eq(p, a);
	cr_assert_eq(atomic_load(&a->refs), 2);
	conf_publish(b);			/* drops the published one */
	cr_assert_eq(atomic_load(&a->refs), 1, "pinned by p only");
	q = conf_acquire();
	cr_assert_eq(q, b);
	cr_assert_eq(atomic_load(&b->refs), 2);
	conf_release(p);			/* frees a */
	conf_release(q);
	cr_assert_eq(atomic_load(&b->refs), 1);
	conf_release(NULL);			/* no-op */
}

Test(conf, names_on_failure_values)
{
	cr_assert_str_eq(conf_on_failure_name(ONFAIL_ACCEPT), "accept");
	cr_assert_str_eq(conf_on_failure_name(ONFAIL_TEMPFAIL), "tempfail");
	cr_assert_str_eq(conf_on_failure_name(ONFAIL_REJECT), "reject");
	cr_assert_str_eq(conf_on_failure_name(ONFAIL_COUNT), "?");
}

/*
 * conf_parse_address.
 */

struct addr_case {
	char		spec[40];
	int		family;
	char		host[24];	/* address or unix path */
	unsigned	port;
};

ParameterizedTestParameters(conf, parses_socket_addresses)
{
	static struct addr_case cases[] = {
		{ "unix:/run/x/x.sock", AF_UNIX, "/run/x/x.sock", 0 },
		{ "local:/run/x/x.sock", AF_UNIX, "/run/x/x.sock", 0 },
		{ "/run/x/x.sock", AF_UNIX, "/run/x/x.sock", 0 },
		{ "inet:8891@127.0.0.1", AF_INET, "127.0.0.1", 8891 },
		{ "inet:25@localhost", AF_INET, "127.0.0.1", 25 },
		{ "inet:65535@[127.0.0.1]", AF_INET, "127.0.0.1", 65535 },
		{ "inet:8890", AF_INET, "0.0.0.0", 8890 },
		{ "inet6:8892@[::1]", AF_INET6, "::1", 8892 },
		{ "inet6:8892@::1", AF_INET6, "::1", 8892 },
		{ "inet6:1@[2001:db8::25]", AF_INET6, "2001:db8::25", 1 },
		{ "inet6:8890", AF_INET6, "::", 8890 },
	};

	return cr_make_param_array(struct addr_case, cases,
	    sizeof cases / sizeof cases[0]);
}

ParameterizedTest(struct addr_case *tc, conf, parses_socket_addresses)
{
	struct conf_addr	 a;
	char			 eb[256] = "";
	int			 rc;

	rc = conf_parse_address(tc->spec, &a, eb, sizeof eb);
	cr_assert_eq(rc, 0, "%s: %s", tc->spec, eb);
	if (tc->family == AF_UNIX)
		assert_unix(&a, tc->host);
	else if (tc->family == AF_INET)
		assert_inet(&a, tc->host, tc->port);
	else
		assert_inet6(&a, tc->host, tc->port);
}

struct bad_addr_case {
	char	spec[40];
	char	says[48];
};

ParameterizedTestParameters(conf, refuses_bad_socket_addresses)
{
	static struct bad_addr_case cases[] = {
		{ "inet:99999@127.0.0.1", "port 99999 is out of range" },
		{ "inet:0@127.0.0.1", "port 0 is out of range" },
		{ "inet:123456@127.0.0.1", "out of range" },
		{ "inet:127.0.0.1", "missing \"@\"" },
		{ "inet:@127.0.0.1", "missing port" },
		{ "inet:8891@", "missing host" },
		{ "inet:nosuchservice@127.0.0.1", "not a port number or service" },
		{ "inet:25@[127.0.0.1", "unbalanced" },
		{ "inet6:25@[127.0.0.1]", "not an IPv6 address" },
		{ "inet6:25@127.0.0.1", "is an IPv4 address; use inet:" },
		{ "inet:25@::1", "is an IPv6 address; use inet6:" },
		{ "inet:25@no..such.host", "cannot resolve" },
		{ "unix:run/x.sock", "must be absolute" },
		{ "local:", "must be absolute" },
		{ "tcp:25@127.0.0.1", "unknown socket type \"tcp\"" },
		{ "localhost", "expected unix:/PATH" },
		{ "", "expected unix:/PATH" },
	};

	return cr_make_param_array(struct bad_addr_case, cases,
	    sizeof cases / sizeof cases[0]);
}

ParameterizedTest(struct bad_addr_case *tc, conf, refuses_bad_socket_addresses)
{
	struct conf_addr	 a;
	char			 eb[256] = "";

	cr_assert_eq(conf_parse_address(tc->spec, &a, eb, sizeof eb), -EINVAL,
	    "%s accepted", tc->spec);
	cr_assert_not_null(strstr(eb, tc->says), "%s: got \"%s\", want \"%s\"",
	    tc->spec, eb, tc->says);
}

Test(conf, unix_path_must_fit_in_sun_path)
{
	struct sockaddr_un	 su;
	struct conf_addr	 a;
	char			 spec[sizeof su.sun_path + 16], eb[256];
	size_t			 max = sizeof su.sun_path - 1;

	/* The longest path that fits, with its NUL. */
	memcpy(spec, "unix:/", 6);
	memset(spec + 6, 'a', max - 1);
	spec[5 + max] = '\0';
	cr_assert_eq(conf_parse_address(spec, &a, eb, sizeof eb), 0, "%s", eb);
	assert_unix(&a, spec + 5);

	/* One byte more does not. */
	spec[5 + max] = 'a';
	spec[6 + max] = '\0';
	cr_assert_eq(conf_parse_address(spec, &a, eb, sizeof eb), -EINVAL);
	cr_assert_not_null(strstr(eb, "bytes long"), "%s", eb);
}

Test(conf, resolves_service_names_for_ports)
{
	struct conf_addr	 a;
	char			 eb[256];

	if (access("/etc/services", R_OK) != 0)
		cr_skip_test("no /etc/services (Debian package: netbase)");
	cr_assert_eq(conf_parse_address("inet:smtp@127.0.0.1", &a, eb,
	    sizeof eb), 0, "%s", eb);
	assert_inet(&a, "127.0.0.1", 25);
}

Test(conf, address_errors_survive_a_null_errbuf)
{
	struct conf_addr	 a;

	cr_assert_eq(conf_parse_address("tcp:1@x", &a, NULL, 0), -EINVAL);
}

Test(conf, metrics_off_by_default_and_inet6_accepted)
{
	struct conf	*c = parse_text("{ \"upstreams\": [ { \"name\": \"a\", "
	    "\"address\": \"inet:8891@127.0.0.1\" } ] }", "min");

	cr_assert_null(c->metrics_listen);
	conf_release(c);
	c = parse_text("{ \"metrics\": { \"listen\": \"inet6:9899@[::1]\" }, "
	    "\"upstreams\": [ { \"name\": \"a\", "
	    "\"address\": \"inet:8891@127.0.0.1\" } ] }", "v6");
	cr_assert_str_eq(c->metrics_listen, "inet6:9899@[::1]");
	cr_assert_eq(c->metrics_addr.sa.ss_family, AF_INET6);
	round_trip(c);
	conf_release(c);
}

Test(conf, log_format_and_comments)
{
	struct conf	*c;
	char		*dump, *again;

	c = parse_text("{ \"comment\": \"x\", \"log_format\": \"json\", "
	    "\"replay\": { \"comment\": \"r\" }, \"upstreams\": [ { "
	    "\"comment\": \"u\", \"name\": \"a\", \"address\": "
	    "\"inet:1@127.0.0.1\", \"timeouts\": { \"comment\": \"t\" } } ] }",
	    "lf");
	cr_assert(c->log_json);
	dump = conf_dump(c);
	cr_assert_not_null(strstr(dump, "\"log_format\": \"json\""), "%s",
	    dump);
	conf_release(c);
	/* The dump reads back the same. */
	c = parse_text(dump, "dump");
	cr_assert(c->log_json);
	again = conf_dump(c);
	cr_assert_str_eq(dump, again);
	free(again);
	free(dump);
	conf_release(c);
	c = parse_text("{ \"upstreams\": [ { \"name\": \"a\", \"address\": "
	    "\"inet:1@127.0.0.1\" } ] }", "default");
	cr_assert(!c->log_json);
	conf_release(c);
}

Test(conf, conditions_actions_and_verdicts_parse_and_dump)
{
	static const char text[] = "{ \"upstreams\": [ { \"name\": \"a\", "
	    "\"address\": \"inet:8891@127.0.0.1\", "
	    "\"apply_if\": { \"client\": [\"10.0.0.0/8\", \"::1/128\"], "
	    "\"auth\": true, \"sender_domain\": [\"Example.ORG\"], "
	    "\"macro\": { \"{daemon_name}\": \"ORIGINATING\" }, "
	    "\"size_over\": 1048576 }, "
	    "\"skip_if\": { \"rcpt_domain\": [\".example.net\"] }, "
	    "\"actions\": [\"addheader\", \"addrcpt\"], "
	    "\"verdicts\": { \"reject\": \"tempfail\", \"tempfail\": "
	    "{ \"addheader\": \"X-Spam-Verdict: tempfail\" } } },"
	    "{ \"name\": \"b\", \"address\": \"inet:8892@127.0.0.1\" } ] }";
	struct conf			*c = parse_text(text, "cond"), *d;
	const struct conf_upstream	*u = &c->upstreams[0];
	char				*dump, *dump2;

	cr_assert(u->apply_if.set && u->skip_if.set);
	cr_assert_eq(u->apply_if.nnets, 2);
	cr_assert_eq(u->apply_if.auth, 1);
	cr_assert_str_eq(u->apply_if.senders[0], "example.org");
	cr_assert_eq(u->apply_if.size_over, 1048576);
	cr_assert_str_eq(u->apply_if.macros[0].name, "{daemon_name}");
	cr_assert(u->cond_session && u->cond_rcpt);
	cr_assert_eq(u->actions, (1u << MOD_ADDHEADER) | (1u << MOD_ADDRCPT) |
	    (1u << MOD_ADDRCPT_PAR));
	cr_assert_eq(u->verdicts[VERDICT_REJECT].to, VERDICT_TEMPFAIL);
	cr_assert_eq(u->verdicts[VERDICT_TEMPFAIL].to, VERDICT_CONTINUE);
	cr_assert_str_eq(u->verdicts[VERDICT_TEMPFAIL].hname,
	    "X-Spam-Verdict");
	cr_assert_str_eq(u->verdicts[VERDICT_TEMPFAIL].hvalue, "tempfail");
	/* The other upstream: no condition, every action. */
	cr_assert_not(c->upstreams[1].apply_if.set);
	cr_assert_not(c->upstreams[1].cond_session);
	cr_assert_eq(c->upstreams[1].actions, CONF_ACTIONS_ALL);
	dump = conf_dump(c);
	cr_assert_not_null(strstr(dump, "\"apply_if\""), "%s", dump);
	cr_assert_not_null(strstr(dump, "\"X-Spam-Verdict: tempfail\""));
	cr_assert_not_null(strstr(dump, "\"::1/128\""));
	d = parse_text(dump, "dump");
	dump2 = conf_dump(d);
	cr_assert_str_eq(dump, dump2);
	free(dump);
	free(dump2);
	conf_release(c);
	conf_release(d);
}

/*
 * Replica pools: an array "address" gives one replica per element, each
 * resolved and labelled NAME[ADDRESS]; a string gives one replica known
 * by the name alone.  The dump writes the array back.
 */
Test(conf, an_address_array_is_a_pool_of_replicas)
{
	struct conf	*c;
	char		*text;

	c = parse_text("{ \"upstreams\": [\n"
	    "  { \"name\": \"spamd\", \"address\": [\"inet:8891@127.0.0.1\", "
	    "\"unix:/run/spamd.sock\"] },\n"
	    "  { \"name\": \"av\", \"address\": \"inet:8893@127.0.0.1\" } ] }",
	    "pool");
	cr_assert(c->upstreams[0].pool);
	cr_assert_eq(c->upstreams[0].nreplicas, 2);
	cr_assert_str_eq(c->upstreams[0].replicas[0].label,
	    "spamd[inet:8891@127.0.0.1]");
	cr_assert_str_eq(c->upstreams[0].replicas[1].label,
	    "spamd[unix:/run/spamd.sock]");
	assert_inet(&c->upstreams[0].replicas[0].addr, "127.0.0.1", 8891);
	assert_unix(&c->upstreams[0].replicas[1].addr, "/run/spamd.sock");
	/* The first replica stands for the upstream where one is asked. */
	cr_assert_str_eq(c->upstreams[0].address, "inet:8891@127.0.0.1");
	assert_inet(&c->upstreams[0].addr, "127.0.0.1", 8891);
	cr_assert(!c->upstreams[1].pool);
	cr_assert_eq(c->upstreams[1].nreplicas, 1);
	cr_assert_str_eq(c->upstreams[1].replicas[0].label, "av");
	text = conf_dump(c);
	cr_assert_not_null(strstr(text, "\"address\": [\n"
	    "        \"inet:8891@127.0.0.1\",\n"
	    "        \"unix:/run/spamd.sock\"\n      ],"), "%s", text);
	cr_assert_not_null(strstr(text,
	    "\"address\": \"inet:8893@127.0.0.1\","), "%s", text);
	round_trip(c);
	free(text);
	conf_release(c);

	/* A disabled pool's replicas need not resolve (as one address). */
	c = parse_text("{ \"upstreams\": [ { \"name\": \"a\", \"address\": "
	    "\"inet:1@127.0.0.1\" }, { \"name\": \"b\", \"enabled\": false, "
	    "\"address\": [\"inet:2@127.0.0.1\", \"inet:3@no..such.host\"] } "
	    "] }", "disabled");
	cr_assert_eq(c->upstreams[1].nreplicas, 2);
	conf_release(c);
}

Test(conf, refuses_bad_address_arrays_at_their_element)
{
	static const char	 text[] =
	    "{ \"upstreams\": [\n"
	    "  { \"name\": \"a\", \"address\": [] },\n"
	    "  { \"name\": \"b\", \"address\": [\"inet:1@127.0.0.1\", 5] },\n"
	    "  { \"name\": \"c\", \"address\": [\"inet:1@127.0.0.1\",\n"
	    "      \"inet:x@127.0.0.1\"] },\n"
	    "  { \"name\": \"d\", \"address\": [\"inet:1@127.0.0.1\", "
	    "\"unix:/a\", \"inet:0001@127.0.0.1\"] },\n"
	    "  { \"name\": \"e\", \"address\": {} } ] }";
	struct conf_errors	 errs = { 0 };
	struct conf		*c;

	cr_assert_eq(conf_parse(text, strlen(text), "pools", &c, &errs),
	    -EINVAL);
	cr_assert_null(c);
	cr_assert_eq(errs.n, 5);
	cr_assert_str_eq(errs.v[0], "pools:2:29: upstreams[0].address: is "
	    "an empty array: give at least one address");
	cr_assert_str_eq(errs.v[1], "pools:3:50: upstreams[1].address[1]: "
	    "must be a string, not an integer");
	cr_assert(has_prefix(errs.v[2], "pools:5:7: upstreams[2].address[1]: "
	    "\"inet:x@127.0.0.1\": "), "%s", errs.v[2]);
	cr_assert_str_eq(errs.v[3], "pools:6:61: upstreams[3].address[2]: "
	    "\"inet:0001@127.0.0.1\" is the same socket as "
	    "upstreams[3].address[0]");
	cr_assert_str_eq(errs.v[4], "pools:7:29: upstreams[4].address: "
	    "must be a string or an array of strings, not an object");
	conf_errors_fini(&errs);
}

/*
 * "mode" and the shadow queue's bounds: defaults, values, dump, and each
 * error at the position of its value.
 */
Test(conf, mode_and_shadow_queue_parsed_defaulted_and_dumped)
{
	struct conf	*c, *d;
	char		*dump;

	c = parse_text("{ \"upstreams\": [\n"
	    "  { \"name\": \"a\", \"address\": \"unix:/a.sock\" },\n"
	    "  { \"name\": \"m\", \"address\": \"unix:/m.sock\", "
	    "\"mode\": \"monitor\" },\n"
	    "  { \"name\": \"s\", \"address\": \"unix:/s.sock\", "
	    "\"mode\": \"shadow\" },\n"
	    "  { \"name\": \"t\", \"address\": \"unix:/t.sock\", "
	    "\"mode\": \"shadow\", \"shadow_queue\": 7,\n"
	    "    \"shadow_queue_bytes\": 65536 } ] }", "modes.json");
	cr_assert_eq(c->upstreams[0].mode, MODE_ENFORCE);
	cr_assert_eq(c->upstreams[1].mode, MODE_MONITOR);
	cr_assert_eq(c->upstreams[2].mode, MODE_SHADOW);
	cr_assert_eq(c->upstreams[2].shadow_queue, CONF_DEFAULT_SHADOW_QUEUE);
	cr_assert_eq(c->upstreams[2].shadow_queue_bytes,
	    CONF_DEFAULT_SHADOW_BYTES);
	cr_assert_eq(c->upstreams[3].shadow_queue, 7);
	cr_assert_eq(c->upstreams[3].shadow_queue_bytes, 65536);
	cr_assert_str_eq(conf_mode_name(MODE_MONITOR), "monitor");
	dump = conf_dump(c);
	cr_assert(strstr(dump, "\"mode\": \"enforce\"") != NULL, "%s", dump);
	cr_assert(strstr(dump, "\"shadow_queue\": 7") != NULL, "%s", dump);
	d = parse_text(dump, "dump");
	cr_assert_eq(d->upstreams[1].mode, MODE_MONITOR);
	cr_assert_eq(d->upstreams[3].shadow_queue, 7);
	cr_assert_eq(d->upstreams[3].shadow_queue_bytes, 65536);
	free(dump);
	conf_release(d);
	conf_release(c);
}

struct mode_case {
	char	value[64];	/* the keys after the address */
	char	where[48];	/* ":2:COL: PATH: " */
	char	says[80];
};

ParameterizedTestParameters(conf, mode_errors_at_their_value)
{
	/* Line 2 is '  { "name": "a", "address": "unix:/a.sock", ' (44
	 * columns) then the value: the first key's value starts at 45
	 * plus the key's length plus 4. */
	static struct mode_case cases[] = {
		{ "\"mode\": \"spy\"", ":2:53: upstreams[0].mode: ",
		  "\"spy\" is not one of enforce, monitor, shadow" },
		{ "\"mode\": 1", ":2:53: upstreams[0].mode: ",
		  "must be a string" },
		{ "\"shadow_queue\": 5", ":2:61: upstreams[0].shadow_queue: ",
		  "applies only to an upstream with \"mode\": \"shadow\"" },
		{ "\"shadow_queue\": 0, \"mode\": \"shadow\"",
		  ":2:61: upstreams[0].shadow_queue: ",
		  "0 is out of range 1..1000000 messages" },
		{ "\"shadow_queue\": \"9\", \"mode\": \"shadow\"",
		  ":2:61: upstreams[0].shadow_queue: ", "must be an integer" },
		{ "\"shadow_queue_bytes\": 100, \"mode\": \"shadow\"",
		  ":2:67: upstreams[0].shadow_queue_bytes: ",
		  "100 is out of range 65536..4294967296 bytes" },
		{ "\"shadow_queue_bytes\": 70000, \"mode\": \"monitor\"",
		  ":2:67: upstreams[0].shadow_queue_bytes: ",
		  "applies only to an upstream with \"mode\": \"shadow\"" },
	};

	return cr_make_param_array(struct mode_case, cases,
	    sizeof cases / sizeof cases[0]);
}

ParameterizedTest(struct mode_case *tc, conf, mode_errors_at_their_value)
{
	struct conf_errors	 errs = { 0 };
	struct conf		*c = NULL;
	char			 text[256], prefix[96];
	int			 rc;

	snprintf(text, sizeof text, "{ \"upstreams\": [\n"
	    "  { \"name\": \"a\", \"address\": \"unix:/a.sock\", %s } ] }",
	    tc->value);
	rc = conf_parse(text, strlen(text), "m.json", &c, &errs);
	cr_assert_eq(rc, -EINVAL);
	cr_assert_null(c);
	cr_assert_eq(errs.n, 1, "%zu errors; first: %s", errs.n,
	    errs.n > 0 ? errs.v[0] : "");
	snprintf(prefix, sizeof prefix, "m.json%s", tc->where);
	cr_assert(has_prefix(errs.v[0], prefix), "got \"%s\", want prefix "
	    "\"%s\"", errs.v[0], prefix);
	cr_assert(strstr(errs.v[0], tc->says) != NULL, "\"%s\" lacks \"%s\"",
	    errs.v[0], tc->says);
	conf_errors_fini(&errs);
}
