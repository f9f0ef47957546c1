/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_declog - the decision log through a real Postfix, and the checks
 * of -n.
 *
 * A message with two recipients goes through a private Postfix into
 * miltermux with three upstreams: "a" (testmilter) refuses one
 * recipient, "b" (testmilter) adds a header, "c" (badmilter) closes its
 * connection at end of message and is passed over (on_failure
 * accept).  The log must name the queue id Postfix gave in its 250
 * reply, the client, the sender, each recipient with its verdict and
 * decider, each upstream, the merged verdict and the modifications by
 * kind; c's failure line must carry the queue id; a second SMTP session
 * without a message must get its own line.  Then the same in JSON.
 *
 * Concurrency: Criterion runs each test in its own process.
 */
#include <errno.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <jansson.h>

#include "fixture.h"
#include "harness.h"

static void
expect(struct h_smtp *s, const char *line, int want)
{
	char	*reply = NULL;
	int	 code;

	code = h_smtp_cmd(s, line, &reply);
	cr_assert_eq(code, want, "%s: got %d: %s", line, code,
	    reply != NULL ? reply : strerror(-code));
	free(reply);
}

static const char message[] =
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.net>\n"
    "Subject: decision log\n"
    "\n"
    "body\n";

/*
 * run_mail - start miltermux (top: extra top-level keys) and Postfix,
 * send one message to bob (accepted) and nobody (refused by a), then a
 * session without a message; returns the queue id from "queued as"
 */
static char *
run_mail(struct env *e, const char *top)
{
	static struct up ups[] = {
		{ "a", { "--reject-rcpt", "<nobody@example.net>", "--reply",
		    "envrcpt=550 5.1.1 No such user here", NULL }, NULL },
		{ "b", { "--addheader", "X-Seen-By-B:yes", NULL }, NULL },
		{ "c", { BADMILTER, "--mode", "close", "--stage", "eom",
		    NULL }, "\"on_failure\": \"accept\"" },
	};
	struct h_smtp	 s;
	char		*spec, *reply = NULL, *qid, *p;
	int		 code, rc;

	env_setup(e, ups, 3, top, 1);
	spec = h_xasprintf("inet:127.0.0.1:%d", e->mux_port);
	rc = h_postfix_start(&env_pf, spec, NULL);
	free(spec);
	if (rc == -EPERM || rc == -ENOENT)
		cr_skip_test("no private Postfix here: %s", strerror(-rc));
	cr_assert_eq(rc, 0, "h_postfix_start: %s", strerror(-rc));
	env_pf_started = true;

	code = h_smtp_open(&s, "127.0.0.1", env_pf.smtpd_port, &reply);
	cr_assert_eq(code, 220, "greeting: %d", code);
	free(reply);
	expect(&s, "EHLO client.example.test", 250);
	expect(&s, "MAIL FROM:<alice@example.org>", 250);
	expect(&s, "RCPT TO:<bob@example.net>", 250);
	expect(&s, "RCPT TO:<nobody@example.net>", 550);
	code = h_smtp_data(&s, message, &reply);
	cr_assert_eq(code, 250, "end of data: %d: %s", code,
	    reply != NULL ? reply : "");
	p = strstr(reply, "queued as ");
	cr_assert_not_null(p, "no queue id in \"%s\"", reply);
	p += strlen("queued as ");
	qid = strndup(p, strcspn(p, " \r\n"));
	cr_assert(qid[0] != '\0');
	free(reply);
	h_smtp_close(&s);

	/* A session that carries no message. */
	code = h_smtp_open(&s, "127.0.0.1", env_pf.smtpd_port, &reply);
	cr_assert_eq(code, 220, "greeting: %d", code);
	free(reply);
	expect(&s, "EHLO idle.example.test", 250);
	expect(&s, "QUIT", 221);
	h_smtp_close(&s);
	return qid;
}

/* line_with - a copy of the first line of log holding needle */
static char *
line_with(const char *log, const char *needle)
{
	const char	*p = strstr(log, needle), *b, *end;

	if (p == NULL)
		return NULL;
	for (b = p; b > log && b[-1] != '\n'; b--)
		;
	end = strchr(p, '\n');
	return strndup(b, end != NULL ? (size_t)(end - b) : strlen(b));
}

static void
matches(const char *s, const char *re)
{
	regex_t	 r;

	cr_assert_eq(regcomp(&r, re, REG_EXTENDED | REG_NOSUB), 0, "%s", re);
	cr_assert_eq(regexec(&r, s, 0, NULL, 0), 0, "\"%s\" does not match "
	    "/%s/", s, re);
	regfree(&r);
}

Test(declog, text_line_has_queue_id_client_sender_and_verdicts,
    .timeout = 150, .fini = env_pf_fini)
{
	struct env	 e;
	char		*qid, *log, *want, *line;

	qid = run_mail(&e, NULL);
	want = h_xasprintf("%s: message (", qid);
	log = env_wait_log(&e, "session without a message");
	free(log);
	log = env_wait_log(&e, want);
	line = line_with(log, want);
	cr_assert_not_null(line, "no line with \"%s\" in:\n%s", want, log);
	/* In the foreground, a timestamp first. */
	matches(line, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z ");
	/* The session id: TAG.conn-1. */
	matches(line, ": message \\([0-9a-z]+\\.conn-1\\): upstreams ");
	matches(line, " a=continue/[0-9]+ms b=continue/[0-9]+ms "
	    "c=failed/[0-9]+ms;");
	HAS(line, "; merged continue; 1 modification applied "
	    "(addheader=1); from <alice@example.org>; ");
	HAS(line, "rcpts <bob@example.net>=continue, "
	    "<nobody@example.net>=reject by a;");
	/* Postfix names the client "localhost" or "unknown" as its
	 * resolver says; the address is what it connected from. */
	matches(line, "; client [a-z.]+\\[127\\.0\\.0\\.1\\]$");
	free(line);

	/* c's failure, with the queue id it happened under. */
	want = h_xasprintf("%s: ", qid);
	line = line_with(log, "upstream c: eom: ");
	cr_assert_not_null(line, "no failure line in:\n%s", log);
	HAS(line, want);
	HAS(line, "applying on_failure=accept");
	matches(line, "^[0-9-]+T[0-9:.]+Z [^ ]+: [0-9a-z]+\\.conn-1: "
	    "upstream c: eom: ");
	free(line);

	line = line_with(log, "session without a message");
	matches(line, "[0-9a-z]+\\.conn-2: session without a message: "
	    "client [a-z.]+\\[127\\.0\\.0\\.1\\]; helo idle\\.example\\.test$");
	free(line);
	/* The first session carried one: no such line for it. */
	HASNT(log, "conn-1: session without a message");
	free(log);
	free(want);
	free(qid);
	env_stop(&e, 1.0);
	env_pf_passed = true;
}

/* find_event - the first JSON line whose "event" is event (and whose
 * "queue_id" is qid, if given); every line must be a JSON object */
static json_t *
find_event(const char *log, const char *event, const char *qid)
{
	json_t		*found = NULL;
	const char	*p = log;

	while (*p != '\0') {
		const char	*end = strchr(p, '\n');
		size_t		 n = end != NULL ? (size_t)(end - p) : strlen(p);
		json_error_t	 err;
		json_t		*o = json_loadb(p, n, 0, &err);

		cr_assert_not_null(o, "not JSON (%s): %.*s", err.text, (int)n,
		    p);
		cr_assert(json_is_string(json_object_get(o, "ts")) &&
		    json_is_string(json_object_get(o, "level")) &&
		    json_is_string(json_object_get(o, "msg")),
		    "no ts/level/msg: %.*s", (int)n, p);
		if (found == NULL && json_is_string(json_object_get(o,
		    "event")) && strcmp(json_string_value(json_object_get(o,
		    "event")), event) == 0 && (qid == NULL ||
		    (json_is_string(json_object_get(o, "queue_id")) &&
		    strcmp(json_string_value(json_object_get(o, "queue_id")),
		    qid) == 0)))
			found = json_incref(o);
		json_decref(o);
		p = end != NULL ? end + 1 : p + n;
	}
	return found;
}

static const char *
str(json_t *o, const char *key)
{
	json_t	*v = json_object_get(o, key);

	cr_assert(json_is_string(v), "\"%s\" is not a string", key);
	return json_string_value(v);
}

Test(declog, json_records_have_the_same_facts, .timeout = 150,
    .fini = env_pf_fini)
{
	struct env	 e;
	char		*qid, *log;
	json_t		*m, *r, *u, *f, *sess;

	qid = run_mail(&e, "\"log_format\": \"json\"");
	free(env_wait_log(&e, "session without a message"));
	log = env_wait_log(&e, "upstream c: eom");
	m = find_event(log, "message", qid);
	cr_assert_not_null(m, "no message record for %s in:\n%s", qid, log);
	cr_assert_str_eq(str(m, "client_addr"), "127.0.0.1");
	cr_assert(str(m, "client_name")[0] != '\0');
	cr_assert_str_eq(str(m, "helo"), "client.example.test");
	cr_assert_str_eq(str(m, "sender"), "<alice@example.org>");
	cr_assert_str_eq(str(m, "merged"), "continue");
	cr_assert(json_is_null(json_object_get(m, "decider")));
	cr_assert_str_eq(str(m, "level"), "info");
	HAS(str(m, "msg"), "rcpts <bob@example.net>=continue");
	HAS(str(m, "session"), ".conn-1");
	r = json_object_get(m, "recipients");
	cr_assert_eq(json_array_size(r), 2);
	cr_assert_str_eq(str(json_array_get(r, 0), "address"),
	    "<bob@example.net>");
	cr_assert_str_eq(str(json_array_get(r, 0), "verdict"), "continue");
	cr_assert(json_is_null(json_object_get(json_array_get(r, 0),
	    "decider")));
	cr_assert_str_eq(str(json_array_get(r, 1), "address"),
	    "<nobody@example.net>");
	cr_assert_str_eq(str(json_array_get(r, 1), "verdict"), "reject");
	cr_assert_str_eq(str(json_array_get(r, 1), "decider"), "a");
	u = json_object_get(m, "upstreams");
	cr_assert_eq(json_array_size(u), 3);
	cr_assert_str_eq(str(json_array_get(u, 0), "name"), "a");
	cr_assert_str_eq(str(json_array_get(u, 0), "verdict"), "continue");
	cr_assert(json_is_number(json_object_get(json_array_get(u, 0),
	    "ms")));
	cr_assert_str_eq(str(json_array_get(u, 1), "verdict"), "continue");
	cr_assert_str_eq(str(json_array_get(u, 2), "name"), "c");
	cr_assert_str_eq(str(json_array_get(u, 2), "verdict"), "failed");
	cr_assert_eq(json_integer_value(json_object_get(m,
	    "modifications_applied")), 1);
	cr_assert_eq(json_integer_value(json_object_get(json_object_get(m,
	    "modifications"), "addheader")), 1);
	cr_assert_eq(json_object_size(json_object_get(m, "modifications")),
	    1);

	f = find_event(log, "upstream_failure", qid);
	cr_assert_not_null(f, "no failure record for %s in:\n%s", qid, log);
	cr_assert_str_eq(str(f, "upstream"), "c");
	cr_assert_str_eq(str(f, "stage"), "eom");
	cr_assert_str_eq(str(f, "on_failure"), "accept");
	cr_assert_str_eq(str(f, "level"), "warning");

	sess = find_event(log, "session", NULL);
	cr_assert_not_null(sess, "no session record in:\n%s", log);
	cr_assert_str_eq(str(sess, "client_addr"), "127.0.0.1");
	cr_assert_str_eq(str(sess, "helo"), "idle.example.test");
	HAS(str(sess, "session"), ".conn-2");
	json_decref(m);
	json_decref(f);
	json_decref(sess);
	free(log);
	free(qid);
	env_stop(&e, 1.0);
	env_pf_passed = true;
}

/* instance - the tag of the last start logged in log */
static char *
instance(const char *log)
{
	const char	*p, *last = NULL;
	static const char key[] = "; session ids ";

	for (p = log; (p = strstr(p, key)) != NULL; p++)
		last = p + strlen(key);
	cr_assert_not_null(last, "no start-up line in:\n%s", log);
	return strndup(last, strcspn(last, "."));
}

Test(declog, session_ids_differ_across_restarts, .timeout = 60)
{
	static struct up ups[] = { { "a", { NULL }, NULL } };
	struct env	 e;
	char		*log, *one, *two;

	env_setup(&e, ups, 1, NULL, 0);
	log = env_wait_log(&e, "; session ids ");
	one = instance(log);
	free(log);
	env_stop(&e, 1.0);
	cr_assert_eq(unlink(e.mux_log), 0);
	/* A restart within the same second, as a supervisor's. */
	env_setup(&e, ups, 1, NULL, 0);
	log = env_wait_log(&e, "; session ids ");
	two = instance(log);
	free(log);
	env_stop(&e, 1.0);
	cr_assert(strlen(one) >= 6, "tag \"%s\"", one);
	cr_assert_str_neq(one, two);
	free(one);
	free(two);
}

/* check - run miltermux -n on text; its exit status and output */
static int
check(const char *text, char **out)
{
	char		*conf = h_xasprintf("%s/check.json", h_tmpdir());
	const char	*argv[] = { BIN("miltermux"), "-n", "-c", conf, NULL };
	int		 status = 0;

	cr_assert_eq(h_write_file(conf, text), 0);
	cr_assert_eq(h_run(argv, 30.0, out, &status), 0);
	free(conf);
	cr_assert(WIFEXITED(status));
	return WEXITSTATUS(status);
}

Test(declog, check_finds_unusable_replay_directory_and_listen_address,
    .timeout = 60)
{
	char	*text, *out = NULL, *want, *file;
	int	 rc;

	file = h_xasprintf("%s/plain-file", h_tmpdir());
	cr_assert_eq(h_write_file(file, "x"), 0);
	text = h_xasprintf(
	    "{\n"
	    "  \"listen\": \"unix:%s/missing/mux.sock\",\n"
	    "  \"replay\": {\n"
	    "    \"directory\": \"%s\"\n"
	    "  },\n"
	    "  \"upstreams\": [ { \"name\": \"a\", "
	    "\"address\": \"inet:1@127.0.0.1\" } ]\n"
	    "}\n", h_tmpdir(), file);
	rc = check(text, &out);
	cr_assert_eq(rc, 78, "exit %d: %s", rc, out);
	want = h_xasprintf("%s/check.json:2:13: listen: the socket's "
	    "directory \"%s/missing\": No such file or directory", h_tmpdir(),
	    h_tmpdir());
	HAS(out, want);
	free(want);
	want = h_xasprintf("%s/check.json:4:18: replay.directory: \"%s\" is "
	    "not a directory", h_tmpdir(), file);
	HAS(out, want);
	free(want);
	HASNT(out, "config OK");
	free(out);
	free(text);

	/* A path taken by something that is not a socket cannot be
	 * listened on. */
	text = h_xasprintf(
	    "{ \"listen\": \"unix:%s\",\n"
	    "  \"replay\": { \"directory\": \"%s\" },\n"
	    "  \"upstreams\": [ { \"name\": \"a\", "
	    "\"address\": \"inet:1@127.0.0.1\" } ] }\n", file, h_tmpdir());
	rc = check(text, &out);
	cr_assert_eq(rc, 78, "exit %d: %s", rc, out);
	want = h_xasprintf("%s/check.json:1:13: listen: \"%s\" exists and is "
	    "not a socket", h_tmpdir(), file);
	HAS(out, want);
	free(want);
	free(out);
	free(text);

	/* The same file with both fixed passes. */
	text = h_xasprintf(
	    "{ \"listen\": \"unix:%s/mux.sock\",\n"
	    "  \"replay\": { \"directory\": \"%s\" },\n"
	    "  \"upstreams\": [ { \"name\": \"a\", "
	    "\"address\": \"inet:1@127.0.0.1\" } ] }\n", h_tmpdir(),
	    h_tmpdir());
	rc = check(text, &out);
	cr_assert_eq(rc, 0, "exit %d: %s", rc, out);
	HAS(out, "config OK");
	free(out);
	free(text);
	free(file);
}

Test(declog, comment_is_allowed_in_every_object_as_a_string,
    .timeout = 60)
{
	static const char fmt[] =
	    "{\n"
	    "  \"comment\": \"the top\",\n"
	    "  \"listen\": \"unix:%s/mux.sock\",\n"
	    "  \"log_format\": \"json\",\n"
	    "  \"timeouts\": { \"comment\": \"t\", \"command\": 5 },\n"
	    "  \"macros\": { \"comment\": \"m\", \"connect\": [ \"j\" ] },\n"
	    "  \"replay\": { \"comment\": \"r\", \"directory\": \"%s\" },\n"
	    "  \"upstreams\": [ { \"comment\": %s, \"name\": \"a\",\n"
	    "    \"address\": \"inet:1@127.0.0.1\",\n"
	    "    \"timeouts\": { \"comment\": \"ut\" } } ]\n"
	    "}\n";
	char	*text, *out = NULL;
	int	 rc;

	text = h_xasprintf(fmt, h_tmpdir(), h_tmpdir(), "\"u\"");
	rc = check(text, &out);
	cr_assert_eq(rc, 0, "exit %d: %s", rc, out);
	HAS(out, "config OK");
	free(out);
	free(text);

	text = h_xasprintf(fmt, h_tmpdir(), h_tmpdir(), "7");
	rc = check(text, &out);
	cr_assert_eq(rc, 78, "exit %d: %s", rc, out);
	HAS(out, "check.json:8:31: upstreams[0].comment: must be a string");
	free(out);
	free(text);

	text = h_xasprintf("{ \"log_format\": \"xml\", \"upstreams\": [ { "
	    "\"name\": \"a\", \"address\": \"inet:1@127.0.0.1\" } ] }\n");
	rc = check(text, &out);
	cr_assert_eq(rc, 78, "exit %d: %s", rc, out);
	HAS(out, "check.json:1:17: log_format: \"xml\" is not a log format; "
	    "expected text or json");
	free(out);
	free(text);
}
