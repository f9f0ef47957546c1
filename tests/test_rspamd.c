/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_rspamd - rspamd's milter mode behind miltermux, through a real
 * Postfix.
 *
 * rspamd (Debian package rspamd, 3.4) runs its proxy worker in milter
 * mode, scanning by itself (self_scan), with a private configuration
 * written here: no DNS, no redis, no network module, the GTUBE-like
 * test patterns on, a small TLD list so that it starts in a second or
 * two, and a few Lua rules of the test's own that make it change the
 * envelope and add and remove headers.  Its milter side is unusual: it
 * answers the option negotiation with every SMFIP_NR_* bit set whatever
 * it is offered, and replies only at end of message.
 *
 * The first test sends the cases through Postfix -> rspamd directly,
 * proving the configuration, so that a failure of the second, Postfix
 * -> miltermux -> { rspamd, a test milter, OpenDKIM in phase 2 }, can
 * be told apart from a broken rspamd set-up.  Each test starts one
 * rspamd and runs all the cases against it.
 *
 * rspamd must be installed (./quickstart test installs it): a missing
 * rspamd fails the tests, it does not skip them.  Like test_postfix,
 * they are skipped where a private Postfix cannot run (not root).
 *
 * Concurrency: Criterion runs each test in its own process; the file
 * statics below belong to that one test.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "fixture.h"
#include "harness.h"

#ifndef RSPAMD
#define RSPAMD		"/usr/bin/rspamd"
#endif

/* The GTUBE-like patterns of rspamd's message.c: reject, add header,
 * rewrite subject.  The last two need enable_test_patterns. */
#define GTUBE_REJECT	"XJS*C4JDBQADN1.NSBN3*2IDNEN*" \
			"GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
#define GTUBE_HEADER	"YJS*C4JDBQADN1.NSBN3*2IDNEN*" \
			"GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
#define GTUBE_SUBJECT	"ZJS*C4JDBQADN1.NSBN3*2IDNEN*" \
			"GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

/* Longer than any one SMTP transaction may take here: rspamd scans in
 * milliseconds, so a session that waits for an answer that never comes
 * shows as a wait of a milter timeout (seconds) at least. */
#define MAX_TRANSACTION_S	3.0

static struct h_postfix	pf;
static bool		passed;	/* the test body reached its end */
static pid_t		rspamd_pid;
static char		*rspamd_log;
static struct env	 mux;	/* miltermux and the test milter */
static bool		 mux_up;

/* fini - stop Postfix; print its and rspamd's logs if the test failed */
static void
fini(void)
{
	(void)h_postfix_stop(&pf);
	if (!passed && pf.dir != NULL)
		h_postfix_print_logs(&pf, stderr);
	if (!passed && rspamd_log != NULL) {
		char	*log = h_read_file(rspamd_log);

		fprintf(stderr, "---- rspamd log\n%s\n", log != NULL ? log :
		    "(none)");
		free(log);
	}
	h_postfix_fini(&pf);
	/* libmilter notices SIGTERM only every few seconds. */
	if (mux_up)
		env_stop(&mux, 0.5);
	mux_up = false;
	if (rspamd_pid > 0)
		(void)h_stop(rspamd_pid, 3, NULL);
	rspamd_pid = 0;
}

/*
 * The test's own rules.  A header X-Muxtest-Envelope makes rspamd
 * change the sender, add one recipient and delete another, add a
 * header at the top and remove X-Muxtest-Envelope itself, all through
 * its milter reply; "muxtest-spammy" in the Subject scores enough for
 * the add header action, so that rspamd replaces any X-Spam headers
 * the message came with by its own.
 */
static const char rules_lua[] =
    "-- miltermux tests: rules that need no DNS and no redis\n"
    "rspamd_config:register_symbol{\n"
    "  name = 'MUXTEST_ENVELOPE',\n"
    "  score = 0.0,\n"
    "  callback = function(task)\n"
    "    if not task:get_header('X-Muxtest-Envelope') then\n"
    "      return false\n"
    "    end\n"
    "    task:set_milter_reply({\n"
    "      change_from = '<bounces@example.org>',\n"
    "      add_rcpt = { '<audit@example.net>' },\n"
    "      del_rcpt = { '<carol@example.net>' },\n"
    "      add_headers = {\n"
    "        ['X-Rspamd-Muxtest'] = { value = 'envelope changed',"
    " order = 0 },\n"
    "      },\n"
    "      remove_headers = { ['X-Muxtest-Envelope'] = 1 },\n"
    "    })\n"
    "    return true\n"
    "  end,\n"
    "}\n"
    "rspamd_config:register_symbol{\n"
    "  name = 'MUXTEST_SPAMMY',\n"
    "  score = 7.0,\n"
    "  callback = function(task)\n"
    "    local s = task:get_header('Subject')\n"
    "    return s ~= nil and s:find('muxtest-spammy', 1, true) ~= nil\n"
    "  end,\n"
    "}\n";

/*
 * rspamd_start - one rspamd with a private configuration, its milter
 * proxy on a free 127.0.0.1 port, returned.  Everything it writes is
 * under the temp directory; it looks up nothing in DNS (a nameserver
 * that answers nothing, and no module that asks), uses no redis, and
 * listens on nothing but the proxy's port: no normal or controller
 * worker, so a system rspamd that runs on the standard ports is no
 * concern.
 */
static int
rspamd_start(void)
{
	char		*dir = h_path("rspamd"), *conf, *text, *lua, *tld;
	const char	*argv[] = { RSPAMD, "-f", "--insecure", "-c", NULL,
			    NULL };
	int		 port;

	cr_assert(access(RSPAMD, X_OK) == 0, "rspamd is not installed ("
	    RSPAMD "): install the Debian package rspamd (./quickstart test "
	    "does) to run the rspamd interop tests");
	cr_assert_eq(mkdir(dir, 0700), 0);
	port = h_free_port();
	cr_assert(port > 0);
	conf = h_xasprintf("%s/rspamd.conf", dir);
	lua = h_xasprintf("%s/rules.lua", dir);
	tld = h_xasprintf("%s/tld.dat", dir);
	rspamd_log = h_xasprintf("%s/rspamd.log", dir);
	cr_assert_eq(h_write_file(lua, rules_lua), 0);
	/* A few suffixes instead of the public list, which takes 20 s to
	 * compile. */
	cr_assert_eq(h_write_file(tld, "org\nnet\ncom\ntest\n"), 0);
	text = h_xasprintf(
	    "options {\n"
	    "  pidfile = \"%s/rspamd.pid\";\n"
	    "  filters = \"\";\n"
	    "  enable_test_patterns = true;\n"
	    "  url_tld = \"%s\";\n"
	    "  hs_cache_dir = \"%s\";\n"
	    "  tempdir = \"%s\";\n"
	    "  control_socket = \"%s/control.sock mode=0600\";\n"
	    "  dns { nameserver = [\"127.0.0.1:1\"]; timeout = 0.1s;"
	    " retransmits = 0; }\n"
	    "  task_timeout = 8s;\n"
	    "}\n"
	    "logging { type = \"file\"; filename = \"%s\"; level = \"info\"; }\n"
	    "actions {\n"
	    "  reject = 15;\n"
	    "  add_header = 6;\n"
	    "  subject = \"[SPAM] %%s\";\n"
	    "}\n"
	    "lua = \"%s\";\n"
	    "worker \"rspamd_proxy\" {\n"
	    "  bind_socket = \"127.0.0.1:%d\";\n"
	    "  milter = yes;\n"
	    "  timeout = 30s;\n"
	    "  count = 1;\n"
	    "  upstream \"local\" { default = yes; self_scan = yes; }\n"
	    "}\n", dir, tld, dir, dir, dir, rspamd_log, lua, port);
	cr_assert_eq(h_write_file(conf, text), 0);
	argv[4] = conf;
	rspamd_pid = h_spawn(argv, h_path("rspamd.out"));
	cr_assert(rspamd_pid > 0, "cannot start rspamd: %s",
	    strerror(-rspamd_pid));
	if (h_wait_port(port, 30) != 0) {
		char	*out = h_read_file(h_path("rspamd.out"));

		cr_assert_fail("rspamd did not come up on port %d:\n%s", port,
		    out != NULL ? out : "");
	}
	free(text);
	free(conf);
	free(lua);
	free(tld);
	free(dir);
	return port;
}

/* start_or_skip - start Postfix, or skip where none can run */
static void
start_or_skip(const char *milter_spec)
{
	int	 rc;

	rc = h_postfix_start(&pf, milter_spec, NULL);
	if (rc == -EPERM || rc == -ENOENT)
		cr_skip_test("no private Postfix here: %s", strerror(-rc));
	cr_assert_eq(rc, 0, "h_postfix_start: %s", strerror(-rc));
}

/* expect - one SMTP command and the code it must get */
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

/*
 * One message in an SMTP session of its own: MAIL, the recipients,
 * DATA.  The end of data must get want, and its reply contain text
 * (unless NULL); the whole session must take under
 * MAX_TRANSACTION_S.
 */
static void
send_one(const char *const rcpt[], const char *msg, int want,
    const char *text)
{
	struct h_smtp	 s;
	char		*reply = NULL, *line;
	double		 t0 = h_now(), took;
	int		 code;

	code = h_smtp_open(&s, "127.0.0.1", pf.smtpd_port, &reply);
	cr_assert_eq(code, 220, "greeting: %d: %s", code,
	    reply != NULL ? reply : strerror(-code));
	free(reply);
	reply = NULL;
	expect(&s, "EHLO client.example.test", 250);
	expect(&s, "MAIL FROM:<alice@example.org>", 250);
	for (size_t i = 0; rcpt[i] != NULL; i++) {
		line = h_xasprintf("RCPT TO:<%s>", rcpt[i]);
		expect(&s, line, 250);
		free(line);
	}
	code = h_smtp_data(&s, msg, &reply);
	cr_assert_eq(code, want, "end of data: got %d, want %d: %s", code,
	    want, reply != NULL ? reply : strerror(-code));
	if (text != NULL)
		cr_assert(strstr(reply, text) != NULL, "reply \"%s\" lacks "
		    "\"%s\"", reply, text);
	free(reply);
	h_smtp_close(&s);
	took = h_now() - t0;
	fprintf(stderr, "rspamd: one transaction took %.3f s\n", took);
	cr_assert_lt(took, MAX_TRANSACTION_S, "the SMTP transaction took "
	    "%.1f s: some side waited for an answer that never came", took);
}

/* delivered - wait for the n-th delivered message and return it */
static char *
delivered(int n)
{
	int	 got = h_sink_wait_messages(&pf, n, 30.0);
	char	*msg;

	cr_assert_geq(got, n, "sink messages: %d, want %d", got, n);
	msg = h_sink_message(&pf, n - 1);
	cr_assert_not_null(msg);
	return msg;
}

/*
 * probe - one SMTP session up to MAIL: miltermux has negotiated with
 * every upstream by then.  When the MTA is refused, say why; the
 * known cause is named, so that the failure is not mistaken for a new
 * bug.
 */
static void
probe(struct env *e)
{
	struct h_smtp	 s;
	char		*reply = NULL, *log, *line, *end;
	double		 t0 = h_now(), took;
	int		 code;

	code = h_smtp_open(&s, "127.0.0.1", pf.smtpd_port, &reply);
	cr_assert_eq(code, 220, "greeting: %d: %s", code,
	    reply != NULL ? reply : strerror(-code));
	free(reply);
	reply = NULL;
	code = h_smtp_cmd(&s, "EHLO client.example.test", &reply);
	if (code == 250) {
		/* Postfix answers a milter's reject at connect at MAIL. */
		free(reply);
		reply = NULL;
		code = h_smtp_cmd(&s, "MAIL FROM:<alice@example.org>",
		    &reply);
	}
	h_smtp_close(&s);
	took = h_now() - t0;
	if (code == 250) {
		/* A session that ends before the message, too, must not
		 * wait for rspamd, which then says nothing at all. */
		cr_assert_lt(took, MAX_TRANSACTION_S, "a session without a "
		    "message took %.1f s: some side waited for an answer "
		    "that never came", took);
		free(reply);
		return;
	}
	log = env_wait_log(e, "conn-1: upstream rspamd:");
	if ((line = strstr(log, "conn-1: upstream rspamd: negotiate")) !=
	    NULL) {
		if ((end = strchr(line, '\n')) != NULL)
			*end = '\0';
		cr_assert_fail("miltermux refused rspamd at option negotiation:"
		    "\n  %s\nrspamd 3.4 answers the negotiation with every "
		    "SMFIP_NR_* bit set, whatever it is offered; a miltermux "
		    "that does not offer the NR bits to its upstreams cannot "
		    "use it.  This test needs branch 'negotiate' (offer "
		    "SMFIP_NR_* upstream): it is expected to fail on a tree "
		    "without it, and a regression on one with it.", line);
	}
	cr_assert_fail("MAIL through miltermux got %d: %s\nmiltermux log:"
	    "\n%s", code, reply != NULL ? reply : strerror(-code), log);
}

/* start_opendkim - a signer for example.org; its milter spec (as in
 * test_postfix.c, where a missing OpenDKIM skips instead) */
static char *
start_opendkim(void)
{
	char		*dir = h_path("dkim"), *conf, *spec, *sock, *out = NULL;
	const char	*gen[] = { "opendkim-genkey", "-b", "1024", "-d",
			    "example.org", "-s", "test", "-D", NULL, NULL };
	const char	*run[] = { "opendkim", "-f", "-x", NULL, NULL };
	int		 status;

	cr_assert(access("/usr/sbin/opendkim", X_OK) == 0 &&
	    access("/usr/bin/python3", X_OK) == 0, "opendkim or python3 is "
	    "not installed (./quickstart test installs them)");
	cr_assert_eq(mkdir(dir, 0700), 0);
	gen[8] = dir;
	cr_assert_eq(h_run(gen, 60, &out, &status), 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "opendkim-genkey: %s", out);
	free(out);
	sock = h_xasprintf("%s/dkim.sock", dir);
	conf = h_xasprintf("%s/opendkim.conf", dir);
	spec = h_xasprintf(
	    "Mode s\nDomain example.org\nSelector test\n"
	    "KeyFile %s/test.private\nSocket local:%s\n"
	    "Canonicalization relaxed/relaxed\nInternalHosts 127.0.0.1\n"
	    "Background no\nRequireSafeKeys false\nSyslog no\n", dir, sock);
	cr_assert_eq(h_write_file(conf, spec), 0);
	run[3] = conf;
	cr_assert(h_spawn(run, h_path("opendkim.log")) > 0);
	cr_assert_eq(h_wait_unix(sock, 20), 0, "opendkim did not come up");
	free(spec);
	free(conf);
	free(dir);
	return h_xasprintf("unix:%s", sock);
}

/* dkim_verifies - the delivered message's signatures all verify */
static void
dkim_verifies(const char *msg, const char *what)
{
	char		*path = h_path("delivered.eml"), *out = NULL;
	char		*key = h_path("dkim/test.txt");
	const char	*argv[] = { "/usr/bin/python3",
			    PACKAGE_SRCDIR "/tests/dkim_verify.py", NULL, NULL,
			    NULL };
	int		 status;

	HAS(msg, "\nDKIM-Signature:");
	/* The dump's first line is smtp-sink's, not the message's. */
	cr_assert_eq(h_write_file(path, strstr(msg, "\n") + 1), 0);
	argv[2] = path;
	argv[3] = key;
	cr_assert_eq(h_run(argv, 60, &out, &status), 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "%s: the DKIM signature does not verify: %s\n%s", what, out, msg);
	free(out);
	free(path);
	free(key);
}

static const char *const to_bob[] = { "bob@example.net", NULL };
static const char *const to_bob_carol[] = { "bob@example.net",
	"carol@example.net", NULL };

static const char msg_gtube[] =
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.net>\n"
    "Subject: test pattern\n"
    "Message-ID: <gtube@example.org>\n"
    "\n"
    "This is the GTUBE:\n" GTUBE_REJECT "\n";

static const char msg_add_header[] =
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.net>\n"
    "Subject: add header pattern\n"
    "Date: Fri, 04 Dec 2026 12:00:00 +0000\n"
    "Message-ID: <add-header@example.org>\n"
    "X-Spam: forged one\n"
    "X-Spam: forged two\n"
    "\n"
    "This carries rspamd's add header test pattern:\n"
    GTUBE_HEADER "\n";

static const char msg_subject[] =
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.net>\n"
    "Subject: quarterly report\n"
    "Date: Fri, 04 Dec 2026 12:00:00 +0000\n"
    "Message-ID: <rewrite-subject@example.org>\n"
    "\n"
    "This carries rspamd's rewrite subject test pattern:\n"
    GTUBE_SUBJECT "\n";

static const char msg_spammy[] =
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.net>\n"
    "Subject: muxtest-spammy offer\n"
    "Date: Fri, 04 Dec 2026 12:00:00 +0000\n"
    "Message-ID: <spammy@example.org>\n"
    "X-Spam: forged\n"
    "\n"
    "A message that the test's own rule scores as spam.\n";

static const char msg_envelope[] =
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.net>, Carol <carol@example.net>\n"
    "Subject: envelope\n"
    "Date: Fri, 04 Dec 2026 12:00:00 +0000\n"
    "Message-ID: <envelope@example.org>\n"
    "X-Muxtest-Envelope: please\n"
    "\n"
    "rspamd changes the envelope of this one.\n";

static const char msg_clean[] =
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.net>\n"
    "Subject: lunch\n"
    "Date: Fri, 04 Dec 2026 12:00:00 +0000\n"
    "Message-ID: <clean@example.org>\n"
    "\n"
    "Lunch at noon?\n";

/*
 * All the cases, one SMTP session each; signed says whether OpenDKIM
 * is in phase 2 (and the test milter "tag" in phase 1).
 */
static void
run_cases(bool signed_)
{
	char	*m;
	int	 n = 0;

	/* GTUBE: rejected, with rspamd's own text. */
	send_one(to_bob, msg_gtube, 554, "Gtube pattern");

	/* The add header pattern: rspamd's X-Spam replaces the ones the
	 * message came with. */
	send_one(to_bob, msg_add_header, 250, NULL);
	m = delivered(++n);
	HAS(m, "Message-ID: <add-header@example.org>");
	cr_assert_eq(h_count(m, "\nX-Spam:"), 1, "one X-Spam header:\n%s", m);
	HAS(m, "\nX-Spam: Yes\n");
	HASNT(m, "forged");
	if (signed_) {
		HAS(m, "\nX-Testmilter-tag: seen\n");
		dkim_verifies(m, "add header");
	}
	free(m);

	/* The rewrite subject pattern. */
	send_one(to_bob, msg_subject, 250, NULL);
	m = delivered(++n);
	HAS(m, "Message-ID: <rewrite-subject@example.org>");
	HAS(m, "\nSubject: [SPAM] quarterly report\n");
	cr_assert_eq(h_count(m, "\nSubject:"), 1, "one Subject:\n%s", m);
	if (signed_) {
		HAS(m, "\nX-Testmilter-tag: seen\n");
		dkim_verifies(m, "rewrite subject");
	}
	free(m);

	/* A score past add_header from a rule: the same through the
	 * normal scan rather than a test pattern. */
	send_one(to_bob, msg_spammy, 250, NULL);
	m = delivered(++n);
	HAS(m, "Message-ID: <spammy@example.org>");
	cr_assert_eq(h_count(m, "\nX-Spam:"), 1, "one X-Spam header:\n%s", m);
	HAS(m, "\nX-Spam: Yes\n");
	HASNT(m, "forged");
	if (signed_)
		dkim_verifies(m, "add header by score");
	free(m);

	/* Envelope and header changes from rspamd's milter reply. */
	send_one(to_bob_carol, msg_envelope, 250, NULL);
	m = delivered(++n);
	HAS(m, "Message-ID: <envelope@example.org>");
	HAS(m, "X-Mail-Args: <bounces@example.org>");
	HAS(m, "X-Rcpt-Args: <bob@example.net>");
	HAS(m, "X-Rcpt-Args: <audit@example.net>");
	HASNT(m, "X-Rcpt-Args: <carol@example.net>");
	HAS(m, "\nX-Rspamd-Muxtest: envelope changed\n");
	HASNT(m, "X-Muxtest-Envelope");
	if (signed_)
		dkim_verifies(m, "envelope");
	free(m);

	/* A clean message passes as it was. */
	send_one(to_bob, msg_clean, 250, NULL);
	m = delivered(++n);
	HAS(m, "Message-ID: <clean@example.org>");
	HAS(m, "\nSubject: lunch\n");
	HASNT(m, "X-Spam");
	HAS(m, "\n\nLunch at noon?\n");
	if (signed_) {
		HAS(m, "\nX-Testmilter-tag: seen\n");
		dkim_verifies(m, "clean");
	}
	free(m);
}

/* Postfix -> rspamd: the configuration does what the cases expect. */
Test(rspamd, direct_from_postfix, .timeout = 90, .fini = fini)
{
	int	 port = rspamd_start();
	char	*spec = h_xasprintf("inet:127.0.0.1:%d", port);

	start_or_skip(spec);
	free(spec);
	run_cases(false);
	passed = true;
}

/*
 * Postfix -> miltermux -> { rspamd, testmilter "tag" } in phase 1 and
 * OpenDKIM in phase 2.  rspamd sets every SMFIP_NR_* bit in its
 * negotiation answer and replies at end of message only.
 */
Test(rspamd, behind_miltermux_with_opendkim_in_phase_2, .timeout = 90,
    .fini = fini)
{
	int		 port = rspamd_start();
	char		*dkim = start_opendkim();
	char		*at_rspamd = h_xasprintf(EXTERNAL "inet:%d@127.0.0.1",
			    port);
	char		*at_dkim = h_xasprintf(EXTERNAL "%s", dkim);
	char		*spec, *log;
	struct up	 ups[] = {
		{ "rspamd", { at_rspamd, NULL }, NULL },
		{ "tag", { "--tag", NULL }, NULL },
		{ "dkim", { at_dkim, NULL }, "\"phase\": 2" },
	};

	mux_up = true;
	env_setup(&mux, ups, 3, "\"timeouts\": { \"connect\": 5, "
	    "\"command\": 5, \"content\": 10 }", 1);
	spec = h_xasprintf("inet:127.0.0.1:%d", mux.mux_port);
	start_or_skip(spec);
	free(spec);
	probe(&mux);
	run_cases(true);
	log = env_mux_log(&mux);
	HASNT(log, "no answer in time");
	HASNT(log, "upstream rspamd:");
	free(log);
	passed = true;
}
