/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_sendmail - miltermux in front of a real Sendmail 8.17, compared
 * with Sendmail's own chain of the same milters.
 *
 * Each test starts real test milters (tests/milters/testmilter), a
 * miltermux in front of them, and two private Sendmail daemons: "chain"
 * with one INPUT_MAIL_FILTER per milter (Sendmail calls them one after
 * the other, as it does in production) and "mux" with miltermux as its
 * only filter.  The same SMTP sessions go to both, and the transcripts
 * must be equal: every reply (code and text; the queue id masked), then
 * every delivered message (envelope sender and recipients, headers but
 * Sendmail's own Received line, body) and every quarantined one.  Where
 * miltermux documents a different result than a sequential chain, the
 * test compares only what it promises and says why.  Each test also
 * checks the expected result itself, so that two equally broken
 * transcripts cannot pass.
 *
 * Sendmail is never installed (its packages conflict with Postfix):
 * tests/sendmail-unpack downloads and unpacks sendmail-bin and
 * sendmail-cf into tests/sendmail/ in the build tree, once, and the
 * configuration is made here from its m4 kit.  Sendmail runs as root in
 * the foreground (-bD) in a private UTS namespace (unshare -u) named
 * test.example.org, because an unqualified host name makes it sleep a
 * minute at start; it listens on a free 127.0.0.1 port and delivers
 * every message synchronously (DeliveryMode=interactive: the delivery
 * is done before the 250 reply) to a program mailer that writes the
 * envelope and the message to a file.  It logs only to syslog, so a
 * daemon that does not come up is reported with its stderr, where -bD
 * prints configuration errors.
 *
 * Every test starts its own daemons (some 0.2 s): the test milters'
 * modifications hold for every message, so a configuration is a test.
 * The program mailer sees the envelope addresses but not their ESMTP
 * arguments.
 *
 * Skipped where it cannot run: not root (unshare, Sendmail as root),
 * no m4.
 *
 * Concurrency: Criterion runs each test in its own process; the file
 * statics belong to that one test.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
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

#define HOSTNAME	"test.example.org"
#define FILTER_T	"T=C:10s;S:10s;R:10s;E:5m"

/* One private Sendmail daemon. */
struct sm {
	const char	*name;
	char		*dir;		/* its files */
	char		*queue;
	char		*out;		/* one file per delivered message */
	char		*log;		/* its stdout and stderr */
	int		 port;
	pid_t		 pid;
};

static char		*sendmail_bin, *sendmail_libs;
static struct env	 e;
static struct sm	 chain = { .name = "chain" }, mux = { .name = "mux" };
static char		*last_chain, *last_mux;	/* for the failure report */
static bool		 passed;

/* cat - print a file to stderr under a title */
static void
cat(const char *title, const char *path)
{
	char	*s = path != NULL ? h_read_file(path) : NULL;

	fprintf(stderr, "---- %s (%s)\n%s\n", title, path != NULL ? path :
	    "-", s != NULL ? s : "(none)");
	free(s);
}

/* fini - stop everything; on failure say what each side did */
static void
fini(void)
{
	if (!passed || getenv("SHOW_TRANSCRIPTS") != NULL) {
		cat("Sendmail chain's stderr", chain.log);
		cat("Sendmail mux's stderr", mux.log);
		cat("miltermux log", e.mux_log);
		fprintf(stderr, "---- chain transcript\n%s\n---- mux "
		    "transcript\n%s\n", last_chain != NULL ? last_chain : "",
		    last_mux != NULL ? last_mux : "");
	}
	if (chain.pid > 0)
		(void)h_stop(chain.pid, 2, NULL);
	if (mux.pid > 0)
		(void)h_stop(mux.pid, 2, NULL);
	env_stop(&e, 1);
}

/* unpack_or_skip - the private Sendmail, unpacked once per build tree */
static void
unpack_or_skip(void)
{
	const char	*argv[] = { "/bin/sh",
			    PACKAGE_SRCDIR "/tests/sendmail-unpack",
			    PACKAGE_BUILDDIR "/tests/sendmail", NULL };
	const char	*m4[] = { "m4", "--version", NULL };
	char		*out = NULL, *p, *nl;
	int		 rc, st = 0;

	if (geteuid() != 0)
		cr_skip_test("Sendmail runs as root, in a UTS namespace");
	rc = h_run(m4, 10, NULL, &st);
	if (rc == -ENOENT)
		cr_skip_test("m4 is not installed (apt-get install m4)");
	rc = h_run(argv, 600, &out, &st);
	cr_assert(rc == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
	    "tests/sendmail-unpack failed (rc %d, status %d):\n%s", rc, st,
	    out != NULL ? out : "");
	for (p = out; p != NULL && *p != '\0'; p = nl) {
		if ((nl = strchr(p, '\n')) != NULL)
			*nl++ = '\0';
		if (strncmp(p, "SENDMAIL=", 9) == 0)
			sendmail_bin = h_xstrdup(p + 9);
		else if (strncmp(p, "LIBS=", 5) == 0)
			sendmail_libs = h_xstrdup(p + 5);
	}
	cr_assert(sendmail_bin != NULL && sendmail_libs != NULL,
	    "tests/sendmail-unpack said:\n%s", out);
	free(out);
}

/* The program mailer: envelope as X-Env-* lines, then the message. */
static const char capture_sh[] =
    "#!/bin/sh\n"
    "d=$1; shift\n"
    "f=$1; shift\n"
    "t=$d/.tmp.$$\n"
    "{ printf 'X-Env-From: %s\\n' \"$f\"\n"
    "  for r; do printf 'X-Env-Rcpt: %s\\n' \"$r\"; done\n"
    "  cat; } > \"$t\" && mv \"$t\" \"$d/msg.$(date +%s%N).$$\"\n";

/*
 * sm_start - write the .mc with these INPUT_MAIL_FILTER lines, make the
 * .cf with m4, start the daemon and wait for its port
 */
static void
sm_start(struct sm *sm, const char *filters)
{
	char	*mc, *cf, *capture, *cmd, *mcpath, *m4cmd, *out = NULL;
	const char *argv[6];
	double	 start;
	int	 st = 0, rc;

	sm->dir = h_xasprintf("%s/sm-%s", h_tmpdir(), sm->name);
	sm->queue = h_xasprintf("%s/queue", sm->dir);
	sm->out = h_xasprintf("%s/out", sm->dir);
	sm->log = h_xasprintf("%s/stderr.log", sm->dir);
	cr_assert_eq(mkdir(sm->dir, 0755), 0);
	cr_assert_eq(mkdir(sm->queue, 0700), 0);
	cr_assert_eq(mkdir(sm->out, 0755), 0);
	capture = h_xasprintf("%s/capture", sm->dir);
	cr_assert_eq(h_write_file(capture, capture_sh), 0);
	cr_assert_eq(chmod(capture, 0755), 0);
	/* Host names from files only: no DNS in the tests. */
	cf = h_xasprintf("%s/service.switch", sm->dir);
	cr_assert_eq(h_write_file(cf, "hosts files\naliases files\n"), 0);
	free(cf);
	sm->port = h_free_port();
	cr_assert(sm->port > 0);
	mc = h_xasprintf(
	    "divert(0)dnl\n"
	    "VERSIONID(`miltermux test_sendmail')dnl\n"
	    "OSTYPE(`linux')dnl\n"
	    "define(`confSERVICE_SWITCH_FILE', `%1$s/service.switch')dnl\n"
	    "define(`confDONT_PROBE_INTERFACES', `True')dnl\n"
	    "define(`QUEUE_DIR', `%1$s/queue')dnl\n"
	    "define(`confPID_FILE', `%1$s/sendmail.pid')dnl\n"
	    "define(`STATUS_FILE', `%1$s/statistics')dnl\n"
	    "define(`ALIAS_FILE', `')dnl\n"
	    "define(`HELP_FILE', `')dnl\n"
	    "define(`confDELIVERY_MODE', `interactive')dnl\n"
	    "define(`confTO_IDENT', `0')dnl\n"
	    "define(`confAUTH_MECHANISMS', `')dnl\n"
	    /* The milter sockets are under /tmp, sticky and world-writable. */
	    "define(`confDONT_BLAME_SENDMAIL',\n"
	    "    `GroupWritableDirPathSafe,TrustStickyBit')dnl\n"
	    "FEATURE(`nocanonify')dnl\n"
	    "FEATURE(`accept_unresolvable_domains')dnl\n"
	    "FEATURE(`no_default_msa')dnl\n"
	    "DAEMON_OPTIONS(`Port=%2$d, Addr=127.0.0.1, Name=MTA')dnl\n"
	    "%3$s"
	    "MAILER(`local')dnl\n"
	    "MAILER_DEFINITIONS\n"
	    "Mcapture, P=%1$s/capture, F=lsDFMmnSu, S=EnvFromSMTP/HdrFromSMTP, "
	    "R=EnvToSMTP, A=capture %1$s/out $f $u\n"
	    "LOCAL_RULE_0\n"
	    "R$* < @ $* > $*\t$#capture $@ $2 $: $1 < @ $2 > $3\n",
	    sm->dir, sm->port, filters);
	mcpath = h_xasprintf("%s/sendmail.mc", sm->dir);
	cr_assert_eq(h_write_file(mcpath, mc), 0);
	cf = h_xasprintf("%s/sendmail.cf", sm->dir);
	/* $0 is sendmail_bin, DIR/root/usr/libexec/sendmail/sendmail */
	m4cmd = h_xasprintf("c=${0%%/libexec/sendmail/sendmail}/share/"
	    "sendmail/cf; m4 -D_CF_DIR_=$c/ $c/m4/cf.m4 '%s' > '%s'",
	    mcpath, cf);
	argv[0] = "/bin/sh";
	argv[1] = "-c";
	argv[2] = m4cmd;
	argv[3] = sendmail_bin;
	argv[4] = NULL;
	rc = h_run(argv, 30, &out, &st);
	cr_assert(rc == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
	    "m4 could not make %s: %s", cf, out != NULL ? out : "");
	free(out);
	/*
	 * An unqualified host name makes Sendmail sleep a minute at start:
	 * a private UTS namespace gets a qualified one.
	 */
	cmd = h_xasprintf("hostname " HOSTNAME " && exec env "
	    "LD_LIBRARY_PATH='%s' '%s' -bD -C '%s'", sendmail_libs,
	    sendmail_bin, cf);
	argv[0] = "unshare";
	argv[1] = "-u";
	argv[2] = "/bin/sh";
	argv[3] = "-c";
	argv[4] = cmd;
	argv[5] = NULL;
	sm->pid = h_spawn(argv, sm->log);
	cr_assert(sm->pid > 0, "cannot start unshare: %s",
	    strerror(-sm->pid));
	/*
	 * Up within 20 s; a daemon that died, or that complained on stderr
	 * and still does not listen after 3 s, is reported at once.
	 */
	start = h_now();
	while (h_wait_port(sm->port, 0.2) != 0) {
		struct stat	 sb;
		bool		 died = h_wait_exit(sm->pid, 0, &st) == 0;

		if (died)
			sm->pid = 0;
		if (died || h_now() - start > 20 || (h_now() - start > 3 &&
		    stat(sm->log, &sb) == 0 && sb.st_size > 0)) {
			out = h_read_file(sm->log);
			cr_assert_fail("Sendmail (%s) did not start listening "
			    "on 127.0.0.1:%d (%s); it logs only to syslog; "
			    "its stderr:\n%s", sm->name, sm->port, died ?
			    "it exited" : "still running", out != NULL ?
			    out : "");
		}
	}
	free(cmd);
	free(m4cmd);
	free(mcpath);
	free(cf);
	free(capture);
	free(mc);
}

/*
 * setup - the milters, miltermux in front of them, and both Sendmails:
 * chain with the milters in config order, mux with miltermux
 */
static void
setup(const struct up *ups, size_t n)
{
	char	*filters = h_xstrdup(""), *tmp, *one;

	unpack_or_skip();
	memset(&e, 0, sizeof e);
	env_start_upstreams(&e, ups, n);
	env_start_mux(&e, ups, n, NULL, 0);
	for (size_t i = 0; i < n; i++) {
		const char	*json = ups[i].json != NULL ? ups[i].json : "";
		const char	*flag = "F=T, ";

		/* Sendmail's F= for the upstream's on_failure: T, R or none */
		if (strstr(json, "\"accept\"") != NULL)
			flag = "F=, ";
		else if (strstr(json, "\"reject\"") != NULL)
			flag = "F=R, ";

		tmp = h_xasprintf("%sINPUT_MAIL_FILTER(`%s', "
		    "`S=unix:%s/%s.sock, %s" FILTER_T "')dnl\n", filters,
		    ups[i].name, h_tmpdir(), ups[i].name, flag);
		free(filters);
		filters = tmp;
	}
	sm_start(&chain, filters);
	one = h_xasprintf("INPUT_MAIL_FILTER(`miltermux', `S=%s, F=T, " FILTER_T
	    "')dnl\n", e.mux_spec);
	sm_start(&mux, one);
	free(one);
	free(filters);
}

/* append - add the strings a and b to *s */
static void
append(char **s, const char *a, const char *b)
{
	char	*tmp = h_xasprintf("%s%s%s", *s, a, b);

	free(*s);
	*s = tmp;
}

/*
 * mask - what legitimately differs between two daemons: the queue id
 * before " Message accepted", the date after "; " in the greeting
 */
static char *
mask(const char *reply, bool greeting)
{
	char	*r = h_xstrdup(reply != NULL ? reply : "(none)"), *p;

	if (greeting && (p = strstr(r, "; ")) != NULL)
		strcpy(p, "; DATE\n");
	if ((p = strstr(r, " Message accepted")) != NULL && p - r >= 14)
		memset(p - 14, 'Q', 14);
	for (p = r; (p = strstr(p, "\r\n")) != NULL; )
		memmove(p, p + 1, strlen(p + 1) + 1);
	return r;
}

/* by_name - qsort on strings */
static int
by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* list - names in dir starting with prefix, sorted; caller frees */
static size_t
list(const char *dir, const char *prefix, char ***names)
{
	DIR		*d = opendir(dir);
	struct dirent	*de;
	size_t		 n = 0;

	*names = NULL;
	cr_assert_not_null(d, "%s: %s", dir, strerror(errno));
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, prefix, strlen(prefix)) != 0)
			continue;
		*names = h_xrealloc(*names, (n + 1) * sizeof **names);
		(*names)[n++] = h_xstrdup(de->d_name);
	}
	closedir(d);
	if (n > 0)
		qsort(*names, n, sizeof **names, by_name);
	return n;
}

/* strip_received - the message without Sendmail's own Received lines */
static char *
strip_received(const char *msg)
{
	char		*r = h_xmalloc(strlen(msg) + 1), *w = r;
	const char	*p = msg, *nl;
	bool		 skip = false, body = false;

	while (*p != '\0') {
		nl = strchr(p, '\n');
		nl = nl != NULL ? nl + 1 : p + strlen(p);
		if (!body) {
			if (*p == '\n')
				body = true;
			else if (*p != ' ' && *p != '\t')
				skip = strncmp(p, "Received:", 9) == 0;
		}
		if (body || !skip) {
			memcpy(w, p, (size_t)(nl - p));
			w += nl - p;
		}
		p = nl;
	}
	*w = '\0';
	return r;
}

/*
 * collect - the deliveries and quarantined messages since the last call,
 * appended to *t, then removed
 */
static void
collect(struct sm *sm, char **t)
{
	char	**names, *path, *msg, *clean;
	size_t	 n;

	n = list(sm->out, "msg.", &names);
	for (size_t i = 0; i < n; i++) {
		path = h_xasprintf("%s/%s", sm->out, names[i]);
		msg = h_read_file(path);
		cr_assert_not_null(msg, "%s", path);
		clean = strip_received(msg);
		append(t, "== delivered\n", clean);
		(void)unlink(path);
		free(clean);
		free(msg);
		free(path);
		free(names[i]);
	}
	free(names);
	/* A quarantined message stays in the queue as hf (its q line). */
	n = list(sm->queue, "hf", &names);
	for (size_t i = 0; i < n; i++) {
		char	*line, *nl;

		path = h_xasprintf("%s/%s", sm->queue, names[i]);
		msg = h_read_file(path);
		cr_assert_not_null(msg, "%s", path);
		for (line = msg; line != NULL && *line != '\0'; line = nl) {
			if ((nl = strchr(line, '\n')) != NULL)
				*nl++ = '\0';
			if (*line == 'q') {
				append(t, "== quarantined: ", line + 1);
				append(t, "\n", "");
			}
		}
		(void)unlink(path);
		free(msg);
		free(path);
		free(names[i]);
	}
	free(names);
}

/*
 * session - one SMTP session on sm: the greeting, then each line of
 * script with its reply; "DATA" sends the next of msgs.  Then what was
 * delivered or quarantined.  Returns the transcript; caller frees.
 */
static char *
session(struct sm *sm, const char *const script[], const char *const msgs[])
{
	struct h_smtp	 s;
	char		*t = h_xstrdup(""), *reply = NULL, *m;
	size_t		 k = 0;
	int		 rc;

	rc = h_smtp_open(&s, "127.0.0.1", sm->port, &reply);
	cr_assert(rc > 0, "Sendmail %s: no greeting: %s", sm->name,
	    strerror(-rc));
	m = mask(reply, true);
	append(&t, "greeting ", m);
	free(m);
	free(reply);
	for (size_t i = 0; script[i] != NULL; i++) {
		reply = NULL;
		if (strcmp(script[i], "DATA") == 0) {
			cr_assert_not_null(msgs[k], "script needs a message");
			rc = h_smtp_data(&s, msgs[k++], &reply);
		} else
			rc = h_smtp_cmd(&s, script[i], &reply);
		cr_assert(rc > 0, "Sendmail %s: %s: %s", sm->name, script[i],
		    strerror(-rc));
		m = mask(reply, false);
		append(&t, "> ", script[i]);
		append(&t, "\n< ", m);
		free(m);
		free(reply);
		/* Sendmail closes after a 421. */
		if (rc == 421)
			break;
	}
	h_smtp_close(&s);
	collect(sm, &t);
	return t;
}

/*
 * same - run one session on both daemons; the transcripts must be
 * equal.  Returns the transcript (caller frees) for the test's own
 * checks of the expected result.
 */
static char *
same(const char *const script[], const char *const msgs[])
{
	free(last_chain);
	free(last_mux);
	last_chain = session(&chain, script, msgs);
	last_mux = session(&mux, script, msgs);
	cr_assert_str_eq(last_chain, last_mux, "Sendmail's chain and "
	    "miltermux differ:\n---- chain\n%s---- mux\n%s", last_chain,
	    last_mux);
	return h_xstrdup(last_chain);
}

static const char message[] =
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.net>\n"
    "Subject: original subject\n"
    "Date: Thu, 1 Jan 2026 00:00:00 +0000\n"
    "Message-Id: <case@example.org>\n"
    "X-Dup: one\n"
    "X-Dup: two\n"
    "\n"
    "original body\n"
    ".a line that starts with a dot\n";

static const char *const one_message[] = { message, NULL };

/* The plain session: one sender, one recipient, one message. */
static const char *const plain[] = {
	"EHLO client.example.test",
	"MAIL FROM:<alice@example.org>",
	"RCPT TO:<bob@example.net>",
	"DATA",
	NULL
};

Test(sendmail, no_changes_delivers_the_same_message, .timeout = 90,
    .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { NULL }, NULL },
		{ "b", { NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HAS(t, "< 250 2.0.0 QQQQQQQQQQQQQQ Message accepted for delivery");
	HAS(t, "X-Env-From: alice@example.org\nX-Env-Rcpt: bob@example.net\n"
	    "From: Alice <alice@example.org>\n");
	HAS(t, "\n\noriginal body\n.a line that starts with a dot\n");
	free(t);
	passed = true;
}

Test(sendmail, reject_at_connect, .timeout = 90, .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { NULL }, NULL },
		{ "b", { "--verdict", "connect=reject", NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HASNT(t, "== delivered");
	HASNT(t, "< 250 2.1.0");
	free(t);
	passed = true;
}

Test(sendmail, tempfail_at_connect, .timeout = 90, .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--verdict", "connect=tempfail", NULL }, NULL },
		{ "b", { NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HASNT(t, "== delivered");
	HASNT(t, "< 250 2.1.0");
	free(t);
	passed = true;
}

Test(sendmail, reject_at_helo_with_text, .timeout = 90, .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { NULL }, NULL },
		{ "b", { "--verdict", "helo=reject", "--reply",
		    "helo=550 5.7.1 we do not talk to you", NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HAS(t, "550 5.7.1 we do not talk to you");
	HASNT(t, "== delivered");
	free(t);
	passed = true;
}

Test(sendmail, reject_at_envfrom_multiline_then_next_sender_passes,
    .timeout = 90, .fini = fini)
{
	static const char *const script[] = {
		"EHLO client.example.test",
		"MAIL FROM:<spammer@example.com>",
		"RCPT TO:<bob@example.net>",
		"RSET",
		"MAIL FROM:<alice@example.org>",
		"RCPT TO:<bob@example.net>",
		"DATA",
		NULL
	};
	struct up	 ups[] = {
		{ "a", { "--tag", NULL }, NULL },
		{ "b", { "--only-from", "spammer@example.com", "--verdict",
		    "envfrom=reject", "--reply", "envfrom=550 5.7.1 first "
		    "line\\nsecond line", NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(script, one_message);
	HAS(t, "< 550-5.7.1 <spammer@example.com>... first line\n"
	    "550 5.7.1 second line\n");
	HAS(t, "X-Env-From: alice@example.org\n");
	HAS(t, "\nX-Testmilter-a: seen\n");
	free(t);
	passed = true;
}

Test(sendmail, tempfail_at_envfrom_default_text, .timeout = 90,
    .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--verdict", "envfrom=tempfail", NULL }, NULL },
		{ "b", { NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HAS(t, "> MAIL FROM:<alice@example.org>\n< 4");
	HASNT(t, "== delivered");
	free(t);
	passed = true;
}

Test(sendmail, one_recipient_refused_the_other_delivered, .timeout = 90,
    .fini = fini)
{
	static const char *const script[] = {
		"EHLO client.example.test",
		"MAIL FROM:<alice@example.org>",
		"RCPT TO:<bob@example.net>",
		"RCPT TO:<nobody@example.net>",
		"RCPT TO:<later@example.net>",
		"DATA",
		NULL
	};
	struct up	 ups[] = {
		{ "a", { "--reject-rcpt", "nobody@example.net", "--reply",
		    "envrcpt=550 5.1.1 no such user here", NULL }, NULL },
		{ "b", { "--tempfail-rcpt", "later@example.net", NULL },
		    NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(script, one_message);
	HAS(t, "< 550 5.1.1 <nobody@example.net>... no such user here\n");
	HAS(t, "> RCPT TO:<later@example.net>\n< 4");
	HAS(t, "X-Env-Rcpt: bob@example.net\nFrom:");
	free(t);
	passed = true;
}

/* reject_at - a test where upstream b rejects at stage with a text */
static void
reject_at(const char *stage, const char *text)
{
	char		*verdict = h_xasprintf("%s=reject", stage);
	char		*reply = h_xasprintf("%s=%s", stage, text);
	struct up	 ups[] = {
		{ "a", { "--tag", NULL }, NULL },
		{ "b", { "--verdict", verdict, "--reply", reply, NULL },
		    NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HAS(t, text);
	HASNT(t, "== delivered");
	free(t);
	free(verdict);
	free(reply);
}

Test(sendmail, reject_at_data, .timeout = 90, .fini = fini)
{
	reject_at("data", "550 5.7.1 no data today");
	passed = true;
}

Test(sendmail, reject_at_header, .timeout = 90, .fini = fini)
{
	reject_at("header", "554 5.7.1 bad header");
	passed = true;
}

Test(sendmail, reject_at_end_of_headers, .timeout = 90, .fini = fini)
{
	reject_at("eoh", "554 5.7.1 bad headers");
	passed = true;
}

Test(sendmail, reject_at_body, .timeout = 90, .fini = fini)
{
	reject_at("body", "554 5.7.1 bad body");
	passed = true;
}

Test(sendmail, reject_at_end_of_message_discards_the_changes,
    .timeout = 90, .fini = fini)
{
	reject_at("eom", "554 5.7.1 content refused");
	passed = true;
}

Test(sendmail, tempfail_at_end_of_message_default_text, .timeout = 90,
    .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--tag", NULL }, NULL },
		{ "b", { "--verdict", "eom=tempfail", NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HAS(t, "> DATA\n< 4");
	HASNT(t, "== delivered");
	free(t);
	passed = true;
}

Test(sendmail, discard_at_end_of_message_accepts_and_drops,
    .timeout = 90, .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--tag", NULL }, NULL },
		{ "b", { "--verdict", "eom=discard", NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HAS(t, "> DATA\n< 250 ");
	HASNT(t, "== delivered");
	free(t);
	passed = true;
}

Test(sendmail, accept_early_keeps_the_others_changes, .timeout = 90,
    .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--verdict", "envfrom=accept", "--tag", NULL },
		    NULL },
		{ "b", { "--tag", "--addheader", "X-Scanned:yes", NULL },
		    NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	/* a accepted at MAIL FROM: it never reached eom, so no tag. */
	HASNT(t, "X-Testmilter-a");
	HAS(t, "\nX-Testmilter-b: seen\nX-Scanned: yes\n");
	free(t);
	passed = true;
}

Test(sendmail, header_changes_from_two_milters, .timeout = 90,
    .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--chgheader", "1:Subject:[tagged] original subject",
		    "--chgheader", "2:X-Dup:", "--addheader",
		    "X-Folded:first\\n\\tsecond", NULL }, NULL },
		{ "b", { "--insheader", "0:X-First:at the top",
		    "--chgheader", "1:X-Dup:changed one", "--addheader",
		    "X-Last:at the end", NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HAS(t, "\nSubject: [tagged] original subject\n");
	HAS(t, "\nX-Dup: changed one\n");
	HASNT(t, "X-Dup: two");
	HAS(t, "X-Folded: first\n\tsecond\n");
	HAS(t, "X-Last: at the end\n\noriginal body\n");
	free(t);
	passed = true;
}

Test(sendmail, recipients_added_and_removed, .timeout = 90, .fini = fini)
{
	static const char *const script[] = {
		"EHLO client.example.test",
		"MAIL FROM:<alice@example.org>",
		"RCPT TO:<bob@example.net>",
		"RCPT TO:<carol@example.net>",
		"DATA",
		NULL
	};
	struct up	 ups[] = {
		{ "a", { "--delrcpt", "<carol@example.net>", NULL }, NULL },
		{ "b", { "--addrcpt", "<archive@example.org>", NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(script, one_message);
	HAS(t, "X-Env-Rcpt: archive@example.org\n");
	HAS(t, "X-Env-Rcpt: bob@example.net\n");
	HASNT(t, "X-Env-Rcpt: carol");
	free(t);
	passed = true;
}

Test(sendmail, sender_changed, .timeout = 90, .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--tag", NULL }, NULL },
		{ "b", { "--chgfrom", "<bounces@example.org>", NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HAS(t, "X-Env-From: bounces@example.org\n");
	free(t);
	passed = true;
}

Test(sendmail, body_replaced, .timeout = 90, .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--replbody", "new body\\nsecond line\\n", NULL },
		    NULL },
		{ "b", { "--tag", NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HAS(t, "\n\nnew body\nsecond line\n");
	HASNT(t, "original body");
	free(t);
	passed = true;
}

Test(sendmail, quarantine_keeps_the_message_in_the_queue, .timeout = 90,
    .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--tag", NULL }, NULL },
		{ "b", { "--quarantine", "looks odd", NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HAS(t, "== quarantined: looks odd\n");
	HASNT(t, "== delivered");
	free(t);
	passed = true;
}

/*
 * Two milters insert at the same index.  Sendmail's chain applies them
 * one after the other, so the second milter's header lands above the
 * first's; miltermux documents that inserts at one place keep config
 * order (README, "inserts at one place keep config order").  So the
 * transcripts differ only in the order of those two lines: the SMTP
 * replies and the envelope are compared, and the headers as a set.
 */
Test(sendmail, inserts_at_one_place_keep_config_order, .timeout = 90,
    .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--insheader", "0:X-A:from a", NULL }, NULL },
		{ "b", { "--insheader", "0:X-B:from b", NULL }, NULL },
	};
	char		*c, *m, *p;

	setup(ups, 2);
	c = session(&chain, plain, one_message);
	m = session(&mux, plain, one_message);
	last_chain = h_xstrdup(c);
	last_mux = h_xstrdup(m);
	HAS(c, "X-Env-Rcpt: bob@example.net\nX-B: from b\nX-A: from a\n"
	    "From: Alice");
	HAS(m, "X-Env-Rcpt: bob@example.net\nX-A: from a\nX-B: from b\n"
	    "From: Alice");
	/* Swapped back, the mux transcript is the chain's. */
	p = strstr(m, "X-A: from a\nX-B: from b\n");
	memcpy(p, "X-B: from b\nX-A: from a\n", 24);
	cr_assert_str_eq(c, m);
	free(c);
	free(m);
	passed = true;
}

Test(sendmail, unknown_command_rejected_with_text, .timeout = 90,
    .fini = fini)
{
	static const char *const script[] = {
		"EHLO client.example.test",
		"XYZZY magic",
		"MAIL FROM:<alice@example.org>",
		"RCPT TO:<bob@example.net>",
		"DATA",
		NULL
	};
	struct up	 ups[] = {
		{ "a", { "--tag", NULL }, NULL },
		{ "b", { "--verdict", "unknown=reject", "--reply",
		    "unknown=554 5.5.1 no magic here", NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(script, one_message);
	HAS(t, "> XYZZY magic\n< 554 5.5.1 no magic here\n");
	HAS(t, "\nX-Testmilter-a: seen\n");
	free(t);
	passed = true;
}

Test(sendmail, discard_at_envfrom_drops_the_message, .timeout = 90,
    .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--tag", NULL }, NULL },
		{ "b", { "--verdict", "envfrom=discard", NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HAS(t, "> DATA\n< 250 ");
	HASNT(t, "== delivered");
	free(t);
	passed = true;
}

Test(sendmail, discard_at_envrcpt_drops_the_message, .timeout = 90,
    .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--tag", NULL }, NULL },
		{ "b", { "--verdict", "envrcpt=discard", NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HAS(t, "> DATA\n< 250 ");
	HASNT(t, "== delivered");
	free(t);
	passed = true;
}

Test(sendmail, reject_at_envrcpt_default_text_tempfail_at_eom_with_text,
    .timeout = 90, .fini = fini)
{
	static const char *const script[] = {
		"EHLO client.example.test",
		"MAIL FROM:<alice@example.org>",
		"RCPT TO:<nobody@example.net>",
		"RCPT TO:<bob@example.net>",
		"DATA",
		NULL
	};
	struct up	 ups[] = {
		{ "a", { "--reject-rcpt", "nobody@example.net", NULL }, NULL },
		{ "b", { "--verdict", "eom=tempfail", "--reply",
		    "eom=452 4.3.1 queue full, come back later", NULL },
		    NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(script, one_message);
	HAS(t, "> RCPT TO:<nobody@example.net>\n< 5");
	HAS(t, "> DATA\n< 452 4.3.1 queue full, come back later\n");
	HASNT(t, "== delivered");
	free(t);
	passed = true;
}

/* A body of many of libmilter's 64 KiB chunks, with changes around it. */
Test(sendmail, large_body_with_header_changes, .timeout = 90,
    .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--addheader", "X-Big:yes", NULL }, NULL },
		{ "b", { "--chgheader", "1:Subject:big one", "--delay",
		    "body=5", NULL }, NULL },
	};
	const char	*msgs[2] = { NULL, NULL };
	char		*big, *p, *t, *body;
	size_t		 lines = 5000;

	big = h_xmalloc(sizeof message + lines * 64);
	p = big + sprintf(big, "%s", message);
	for (size_t i = 0; i < lines; i++)
		p += sprintf(p, "line %05zu of a large body, padded to some "
		    "length: ..........\n", i);
	msgs[0] = big;
	setup(ups, 2);
	t = same(plain, msgs);
	HAS(t, "\nSubject: big one\n");
	HAS(t, "\nX-Big: yes\n");
	body = strstr(big, "\n\n");
	cr_assert_not_null(body);
	HAS(t, body);
	free(t);
	free(big);
	passed = true;
}

Test(sendmail, recipient_with_esmtp_args_and_sender_with_args,
    .timeout = 90, .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--addrcpt-par", "<dsn@example.org> NOTIFY=NEVER",
		    NULL }, NULL },
		{ "b", { "--chgfrom", "<srs@example.org> BODY=8BITMIME",
		    NULL }, NULL },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HAS(t, "X-Env-From: srs@example.org\n");
	HAS(t, "X-Env-Rcpt: dsn@example.org\n");
	free(t);
	passed = true;
}

/*
 * An upstream that is down: Sendmail's F=T and miltermux's on_failure
 * tempfail both answer a temporary failure; F= (none) and on_failure
 * accept both go on without it.
 */
Test(sendmail, upstream_down_tempfails, .timeout = 90, .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--tag", NULL }, NULL },
		{ "down", { NULL }, "\"on_failure\": \"tempfail\"" },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HASNT(t, "< 250 2.1.0");
	HAS(t, "> MAIL FROM:<alice@example.org>\n< 4");
	HASNT(t, "== delivered");
	free(t);
	passed = true;
}

Test(sendmail, upstream_down_is_skipped_on_accept, .timeout = 90,
    .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--tag", NULL }, NULL },
		{ "down", { NULL }, "\"on_failure\": \"accept\"" },
	};
	char		*t;

	setup(ups, 2);
	t = same(plain, one_message);
	HAS(t, "\nX-Testmilter-a: seen\n");
	free(t);
	passed = true;
}

/* swap - in s, replace the first a by b (same length) */
static void
swap(char *s, const char *a, const char *b)
{
	char	*p = strstr(s, a);

	cr_assert_not_null(p, "\"%s\" not in:\n%s", a, s);
	cr_assert_eq(strlen(a), strlen(b));
	memcpy(p, b, strlen(b));
}

/*
 * Two milters reject at once.  Sendmail's chain asks them in turn, so
 * the first listed gives the text; miltermux asks both at once and
 * answers with the first reject that arrives (README, "answered as soon
 * as it arrives, without waiting for the others").  Here a takes a second,
 * so the texts differ and nothing else does.
 */
Test(sendmail, two_rejects_the_first_to_arrive_gives_the_text,
    .timeout = 90, .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--delay", "envfrom=1000", "--verdict",
		    "envfrom=reject", "--reply",
		    "envfrom=550 5.7.1 slow policy AAA", NULL }, NULL },
		{ "b", { "--verdict", "envfrom=reject", "--reply",
		    "envfrom=550 5.7.1 fast policy BBB", NULL }, NULL },
	};
	char		*c, *m;

	setup(ups, 2);
	c = session(&chain, plain, one_message);
	m = session(&mux, plain, one_message);
	last_chain = h_xstrdup(c);
	last_mux = h_xstrdup(m);
	HAS(c, "... slow policy AAA\n");
	HAS(m, "... fast policy BBB\n");
	swap(m, "fast policy BBB", "slow policy AAA");
	cr_assert_str_eq(c, m);
	free(c);
	free(m);
	passed = true;
}

/*
 * Two milters change the same header.  Sendmail's chain applies both,
 * so the last listed wins; miltermux documents that the first listed
 * wins (README, "one header changed by two upstreams: the one listed
 * first wins").  Everything else is the same.
 */
Test(sendmail, one_header_changed_twice_the_first_listed_wins,
    .timeout = 90, .fini = fini)
{
	struct up	 ups[] = {
		{ "a", { "--chgheader", "1:Subject:changed by a", NULL },
		    NULL },
		{ "b", { "--chgheader", "1:Subject:changed by b", NULL },
		    NULL },
	};
	char		*c, *m;

	setup(ups, 2);
	c = session(&chain, plain, one_message);
	m = session(&mux, plain, one_message);
	last_chain = h_xstrdup(c);
	last_mux = h_xstrdup(m);
	HAS(c, "\nSubject: changed by b\n");
	HAS(m, "\nSubject: changed by a\n");
	swap(m, "Subject: changed by a", "Subject: changed by b");
	cr_assert_str_eq(c, m);
	free(c);
	free(m);
	passed = true;
}
