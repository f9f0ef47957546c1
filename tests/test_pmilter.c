/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_pmilter - a milter not built on libmilter behind miltermux.
 *
 * tests/milters/pmilter.pl is written with Sendmail::PMilter (Debian
 * libsendmail-pmilter-perl), which implements the milter protocol on
 * its own: it answers the negotiation with protocol version 2, asks
 * for no protocol bits beyond the steps it has callbacks for, knows no
 * DATA command and does not answer an UNKNOWN one at all.  It runs next
 * to a libmilter testmilter, first through a real Postfix (tests/
 * harness.h, as in test_postfix.c), then driven stage by stage by the
 * raw MTA client (tests/mtaclient.h).  One more Postfix test checks the
 * chroot example of miltermux(8): smtpd chrooted to the queue directory
 * as Debian runs it, miltermux on a unix socket under that directory.
 *
 * The filter is missing only where libsendmail-pmilter-perl is not
 * installed; ./quickstart test installs it, so then the tests fail
 * rather than skip.  The Postfix tests skip where no private Postfix
 * can run (not root), as test_postfix.c does.
 *
 * Concurrency: Criterion runs each test in its own process; the file
 * statics below belong to that one test.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "fixture.h"
#include "harness.h"
#include "mtaclient.h"

#define PMILTER		PACKAGE_SRCDIR "/tests/milters/pmilter.pl"
#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
#define STOP_GRACE	0.2
#define REPLY_WAIT	10

static struct h_postfix	pf;
static bool		passed;	/* the test body reached its end */
static struct env	e;
static char		*pm_log;	/* pmilter.pl's callback log */

/* The filter's work, the same in every test. */
#define PM_REJECT_RCPT	"carol@example.net"
#define PM_RCPT_REPLY	"550 5.7.1 Carol does not take mail from pmilter"
#define PM_TEMPFAIL_FROM "mallory@example.org"
#define PM_FROM_REPLY	"451 4.7.1 Mallory must wait, says pmilter"
#define PM_ARCHIVE	"<archive@example.org>"

static const char message[] =
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.net>\n"
    "Subject: original subject\n"
    "\n"
    "original body\n";

/*
 * start_pmilter - run pmilter.pl on a unix socket in the test's temp
 * directory, and return the EXTERNAL upstream spec for it
 */
static const char *
start_pmilter(void)
{
	static char	 spec[512];
	const char	*probe[] = { "perl", "-MSendmail::PMilter", "-e", "1",
			    NULL };
	char		*sock = h_xasprintf("%s/pm.sock", h_tmpdir());
	char		*out = NULL;
	int		 status = 0;
	pid_t		 pid;

	cr_assert_eq(h_run(probe, 30, &out, &status), 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "Sendmail::PMilter is not installed (Debian "
	    "libsendmail-pmilter-perl; ./quickstart test installs it):\n%s",
	    out != NULL ? out : "");
	free(out);
	pm_log = h_xasprintf("%s/pm.log", h_tmpdir());
	(void)snprintf(spec, sizeof spec, "%sunix:%s", EXTERNAL, sock);
	{
		const char	*argv[] = { "perl", PMILTER, "-p",
				    spec + strlen(EXTERNAL), "-n", "pm",
				    "--log", pm_log,
				    "--reject-rcpt", PM_REJECT_RCPT,
				    "--rcpt-reply", PM_RCPT_REPLY,
				    "--tempfail-from", PM_TEMPFAIL_FROM,
				    "--from-reply", PM_FROM_REPLY,
				    "--subject-prefix", "[pm] ",
				    "--addrcpt", PM_ARCHIVE, NULL };
		char		*errlog = h_xasprintf("%s/pm.err",
				    h_tmpdir());

		pid = h_spawn(argv, errlog);
		free(errlog);
	}
	cr_assert(pid > 0, "cannot start pmilter.pl: %d", (int)pid);
	cr_assert_eq(h_wait_unix(sock, 20), 0, "pmilter.pl did not come up");
	free(sock);
	return spec;
}

/* start_env - pmilter.pl and a tagging testmilter behind miltermux */
static void
start_env(void)
{
	struct up	 ups[] = {
		{ "pm", { NULL }, NULL },
		{ "tm", { "--tag", NULL }, NULL },
	};

	ups[0].args[0] = start_pmilter();
	env_setup(&e, ups, NELEM(ups), NULL, 1);
}

/*
 * pm_saw - pmilter.pl's log once every session it had has closed (as
 * many close lines as connect lines, besides the close of the start-up
 * probe, which connected and left at once)
 */
static char *
pm_saw(void)
{
	double	 deadline = h_now() + REPLY_WAIT;
	char	*log;

	for (;;) {
		log = h_read_file(pm_log);
		cr_assert_not_null(log, "no pmilter.pl log");
		if (h_count(log, " connect ") >= 1 &&
		    h_count(log, " close\n") >= h_count(log, " connect ") + 1)
			return log;
		cr_assert(h_now() < deadline, "pmilter.pl's sessions did not "
		    "close:\n%s", log);
		free(log);
		(void)nanosleep(&(struct timespec){ 0, 20000000 }, NULL);
	}
}

/* ------------------------------------------------------------------ */
/* Through Postfix: Postfix -> miltermux -> { pmilter.pl, testmilter } */

static void
fini(void)
{
	(void)h_postfix_stop(&pf);
	if (!passed && pf.dir != NULL)
		h_postfix_print_logs(&pf, stderr);
	h_postfix_fini(&pf);
	if (!passed && e.mux_log != NULL) {
		char	*log = env_mux_log(&e);

		fprintf(stderr, "---- miltermux log\n%s", log);
		free(log);
	}
	env_stop(&e, STOP_GRACE);
}

/* start_postfix - the filters, miltermux and Postfix; an open session
 * that has said EHLO */
static void
start_postfix(struct h_smtp *s)
{
	char	*spec, *reply = NULL;
	int	 rc;

	start_env();
	spec = h_xasprintf("inet:127.0.0.1:%d", e.mux_port);
	rc = h_postfix_start(&pf, spec, NULL);
	free(spec);
	if (rc == -EPERM || rc == -ENOENT)
		cr_skip_test("no private Postfix here: %s", strerror(-rc));
	cr_assert_eq(rc, 0, "h_postfix_start: %s", strerror(-rc));
	rc = h_smtp_open(s, "127.0.0.1", pf.smtpd_port, &reply);
	cr_assert_eq(rc, 220, "greeting: %d: %s", rc,
	    reply != NULL ? reply : strerror(-rc));
	free(reply);
	/* A filter that failed would cost Postfix its command timeout;
	 * every answer here is due at once. */
	s->timeout_s = 5;
	(void)h_smtp_cmd(s, "EHLO client.example.test", NULL);
}

/* expect - a command whose reply must be want and hold text (or NULL) */
static void
expect(struct h_smtp *s, const char *line, int want, const char *text)
{
	char	*reply = NULL;
	int	 code;

	code = line != NULL ? h_smtp_cmd(s, line, &reply) :
	    h_smtp_data(s, message, &reply);
	cr_assert_eq(code, want, "%s: got %d: %s", line ? line : "DATA",
	    code, reply != NULL ? reply : strerror(-code));
	if (text != NULL)
		cr_assert(strstr(reply, text) != NULL, "%s: reply \"%s\" lacks "
		    "\"%s\"", line ? line : "DATA", reply, text);
	free(reply);
}

/* delivered - wait for the n-th delivered message and return it */
static char *
delivered(int n)
{
	int	 got = h_sink_wait_messages(&pf, n, 60.0);
	char	*msg;

	cr_assert_geq(got, n, "sink messages: %d, want %d", got, n);
	msg = h_sink_message(&pf, n - 1);
	cr_assert_not_null(msg);
	return msg;
}

Test(pmilter_postfix, clean_message_carries_both_filters_work,
    .timeout = 120, .fini = fini)
{
	struct h_smtp	 s;
	char		*msg, *log;

	start_postfix(&s);
	expect(&s, "MAIL FROM:<alice@example.org>", 250, NULL);
	expect(&s, "RCPT TO:<bob@example.net>", 250, NULL);
	expect(&s, NULL, 250, NULL);
	h_smtp_close(&s);
	msg = delivered(1);
	HAS(msg, "X-Mail-Args: <alice@example.org>");
	HAS(msg, "X-Rcpt-Args: <bob@example.net>");
	/* pmilter.pl's addrcpt, addheader and chgheader, testmilter's
	 * addheader, all applied by Postfix. */
	HAS(msg, "X-Rcpt-Args: " PM_ARCHIVE);
	/* The body as the filter counted it: CRLF line ends. */
	HAS(msg, "\nX-PMilter-pm: rcpts=1 body=15\n");
	HAS(msg, "\nX-Testmilter-tm: seen\n");
	HAS(msg, "\nSubject: [pm] original subject\n");
	HASNT(msg, "Subject: original subject");
	HAS(msg, "\n\noriginal body\n");
	free(msg);
	/* What the filter was shown: every stage it asked for, and no
	 * DATA command, which protocol version 2 does not have. */
	log = pm_saw();
	HAS(log, " envfrom <alice@example.org>");
	HAS(log, " envrcpt <bob@example.net>");
	HAS(log, " header Subject: original subject\n");
	HAS(log, " eoh\n");
	HAS(log, " body 15\n");
	HAS(log, " eom\n");
	HASNT(log, " data");
	free(log);
	passed = true;
}

Test(pmilter_postfix, recipient_refused_with_the_filters_text,
    .timeout = 120, .fini = fini)
{
	struct h_smtp	 s;
	char		*msg, *log;

	start_postfix(&s);
	expect(&s, "MAIL FROM:<alice@example.org>", 250, NULL);
	expect(&s, "RCPT TO:<" PM_REJECT_RCPT ">", 550, PM_RCPT_REPLY);
	expect(&s, "RCPT TO:<bob@example.net>", 250, NULL);
	expect(&s, NULL, 250, NULL);
	h_smtp_close(&s);
	msg = delivered(1);
	HAS(msg, "X-Rcpt-Args: <bob@example.net>");
	HAS(msg, "X-Rcpt-Args: " PM_ARCHIVE);
	HASNT(msg, PM_REJECT_RCPT);
	HAS(msg, "\nX-PMilter-pm: rcpts=1 body=15\n");
	HAS(msg, "\nX-Testmilter-tm: seen\n");
	HAS(msg, "\nSubject: [pm] original subject\n");
	free(msg);
	log = pm_saw();
	HAS(log, " envrcpt <" PM_REJECT_RCPT "> -> reject\n");
	free(log);
	/* testmilter never saw the refused recipient: Postfix dropped it. */
	log = h_read_file(e.up_log[1]);
	cr_assert_not_null(log);
	HAS(log, " envrcpt <bob@example.net>");
	free(log);
	passed = true;
}

/*
 * The sender tempfailed with the filter's text; then, in the same SMTP
 * session, an unknown command (Postfix passes it on as UNKNOWN, which
 * miltermux must answer for the version 2 filter: it would never
 * answer) and a second transaction that goes through.
 */
Test(pmilter_postfix, sender_tempfailed_then_the_session_goes_on,
    .timeout = 120, .fini = fini)
{
	struct h_smtp	 s;
	char		*msg, *log;

	start_postfix(&s);
	expect(&s, "MAIL FROM:<" PM_TEMPFAIL_FROM ">", 451, PM_FROM_REPLY);
	expect(&s, "XFROBNICATE now", 500, "command not recognized");
	expect(&s, "MAIL FROM:<alice@example.org>", 250, NULL);
	expect(&s, "RCPT TO:<bob@example.net>", 250, NULL);
	expect(&s, NULL, 250, NULL);
	h_smtp_close(&s);
	msg = delivered(1);
	HAS(msg, "X-Mail-Args: <alice@example.org>");
	HASNT(msg, PM_TEMPFAIL_FROM);
	HAS(msg, "\nX-PMilter-pm: rcpts=1 body=15\n");
	HAS(msg, "\nX-Testmilter-tm: seen\n");
	free(msg);
	log = pm_saw();
	HAS(log, " envfrom <" PM_TEMPFAIL_FROM "> -> tempfail\n");
	HAS(log, " envfrom <alice@example.org>");
	HASNT(log, "XFROBNICATE");
	free(log);
	/* The libmilter filter, version 6, was shown the unknown command. */
	log = h_read_file(e.up_log[1]);
	cr_assert_not_null(log);
	HAS(log, " unknown XFROBNICATE");
	free(log);
	passed = true;
}

/* ------------------------------------------------------------------ */
/* Stage by stage with the raw MTA client. */

static void
fini_raw(void)
{
	if (!passed && e.mux_log != NULL) {
		char	*log = env_mux_log(&e);

		fprintf(stderr, "---- miltermux log\n%s", log);
		free(log);
	}
	env_stop(&e, STOP_GRACE);
}

static void
expect_r(const char *what, int rc, struct mta_result *r, enum verdict want,
    const char *text)
{
	cr_assert_eq(rc, 0, "%s: no answer (%d)", what, rc);
	cr_assert_eq(r->verdict, want, "%s: verdict %d, want %d", what,
	    (int)r->verdict, (int)want);
	if (text != NULL) {
		cr_assert_not_null(r->text, "%s: no reply text", what);
		cr_assert(strstr(r->text, text) != NULL, "%s: text \"%s\" "
		    "lacks \"%s\"", what, r->text, text);
	}
	mta_result_fini(r);
}

/* find_mod - the modification of that kind and name, or NULL */
static const struct mod *
find_mod(const struct mta_result *r, enum mod_kind kind, const char *name)
{
	for (size_t i = 0; i < r->nmods; i++)
		if (r->mods[i].kind == kind &&
		    strcmp(r->mods[i].name, name) == 0)
			return &r->mods[i];
	return NULL;
}

/*
 * One MTA session of three transactions: one aborted after its
 * headers, one whose sender is tempfailed, one completed; an UNKNOWN
 * and the DATA command on the way, which miltermux answers for the
 * version 2 filter.  The eom answer merges both filters' work, and
 * the filter's log shows exactly the stages it negotiated.
 */
Test(pmilter_raw, stages_aborts_and_old_protocol, .timeout = 60,
    .fini = fini_raw)
{
	static const char *const alice[] = { "<alice@example.org>" };
	static const char *const mallory[] = { "<" PM_TEMPFAIL_FROM ">" };
	static const char *const bob[] = { "<bob@example.net>" };
	static const char *const carol[] = { "<" PM_REJECT_RCPT ">" };
	static const char body[] = "line one\r\nline two\r\n";
	struct mta		 m;
	struct mta_result	 r;
	const struct mod	*mod;
	struct buf		 b;
	char			*log, *want;

	start_env();
	cr_assert_eq(mta_open(&m, e.mux_spec, REPLY_WAIT), 0);
	cr_assert_eq(mta_negotiate(&m, MA_ALL, MP_ALL_V6), 0);
	expect_r("connect", mta_connect(&m, "client.example", "192.0.2.7",
	    &r), &r, VERDICT_CONTINUE, NULL);
	expect_r("helo", mta_helo(&m, "client.example", &r), &r,
	    VERDICT_CONTINUE, NULL);

	/* 1: aborted after its headers. */
	expect_r("mail 1", mta_mail(&m, alice, 1, &r), &r,
	    VERDICT_CONTINUE, NULL);
	expect_r("rcpt 1", mta_rcpt(&m, bob, 1, &r), &r, VERDICT_CONTINUE,
	    NULL);
	expect_r("data 1", mta_data(&m, &r), &r, VERDICT_CONTINUE, NULL);
	/* miltermux asks for no replies to headers, eoh and body: it
	 * answers for them at end of message. */
	cr_assert_eq(mta_header(&m, "Subject", "first", 5, NULL), 0);
	cr_assert_eq(mta_abort(&m), 0);

	/* An unknown command between transactions. */
	buf_init(&b);
	codec_put_str(&b, MC_UNKNOWN, "XFROBNICATE now");
	expect_r("unknown", mta_exchange(&m, &b, true, false, &r), &r,
	    VERDICT_CONTINUE, NULL);
	buf_fini(&b);

	/* 2: the sender tempfailed, with the filter's text. */
	expect_r("mail 2", mta_mail(&m, mallory, 1, &r), &r,
	    VERDICT_TEMPFAIL, PM_FROM_REPLY);

	/* 3: one recipient refused, the message through. */
	expect_r("mail 3", mta_mail(&m, alice, 1, &r), &r,
	    VERDICT_CONTINUE, NULL);
	expect_r("rcpt 3 carol", mta_rcpt(&m, carol, 1, &r), &r,
	    VERDICT_REJECT, PM_RCPT_REPLY);
	expect_r("rcpt 3 bob", mta_rcpt(&m, bob, 1, &r), &r,
	    VERDICT_CONTINUE, NULL);
	expect_r("data 3", mta_data(&m, &r), &r, VERDICT_CONTINUE, NULL);
	cr_assert_eq(mta_header(&m, "Subject", "third", 5, NULL), 0);
	cr_assert_eq(mta_eoh(&m, NULL), 0);
	cr_assert_eq(mta_body(&m, body, sizeof body - 1, NULL), 0);
	cr_assert_eq(mta_eom(&m, &r), 0, "no answer at eom");
	cr_assert_eq(r.verdict, VERDICT_CONTINUE, "eom verdict %d",
	    (int)r.verdict);
	mod = find_mod(&r, MOD_ADDHEADER, "X-PMilter-pm");
	cr_assert_not_null(mod, "pmilter.pl's header is missing");
	want = h_xasprintf("rcpts=1 body=%zu", sizeof body - 1);
	cr_assert_str_eq(mod->value, want);
	free(want);
	mod = find_mod(&r, MOD_CHGHEADER, "Subject");
	cr_assert_not_null(mod, "pmilter.pl's Subject change is missing");
	cr_assert_eq(mod->index, 1);
	cr_assert_str_eq(mod->value, "[pm] third");
	cr_assert_not_null(find_mod(&r, MOD_ADDRCPT, PM_ARCHIVE));
	cr_assert_not_null(find_mod(&r, MOD_ADDHEADER, "X-Testmilter-tm"));
	mta_result_fini(&r);
	cr_assert_eq(mta_quit(&m), 0);
	mta_close(&m);

	/* One session (one PMilter process) saw, in order: */
	log = pm_saw();
	{
		static const char *const seq[] = {
			" connect client.example\n", " helo client.example\n",
			" envfrom <alice@example.org>\n",
			" envrcpt <bob@example.net>\n",
			" header Subject: first\n", " abort\n",
			" envfrom <" PM_TEMPFAIL_FROM "> -> tempfail\n",
			" envfrom <alice@example.org>\n",
			" envrcpt <" PM_REJECT_RCPT "> -> reject\n",
			" envrcpt <bob@example.net>\n",
			" header Subject: third\n", " eoh\n", " body 20\n",
			" eom\n", " close\n",
		};
		const char	*p = log;

		for (size_t i = 0; i < NELEM(seq); i++) {
			const char	*q = strstr(p, seq[i]);

			cr_assert_not_null(q, "\"%s\" missing, or out of "
			    "order, in:\n%s", seq[i], log);
			p = q + strlen(seq[i]);
		}
	}
	HASNT(log, " data");
	free(log);
	passed = true;
}

/* ------------------------------------------------------------------ */
/* The chroot of miltermux(8), MTA INTEGRATION, as written there. */

/* rewrite - replace from with to in the file path, which must hold it;
 * backdated as the harness does, so Postfix does not wait for it */
static void
rewrite(const char *path, const char *from, const char *to)
{
	char	*s = h_read_file(path), *p, *out;
	struct timespec	 ts[2];

	cr_assert_not_null(s, "cannot read %s", path);
	p = strstr(s, from);
	cr_assert_not_null(p, "\"%s\" not in %s", from, path);
	*p = '\0';
	out = h_xasprintf("%s%s%s", s, to, p + strlen(from));
	cr_assert_eq(h_write_file(path, out), 0);
	(void)clock_gettime(CLOCK_REALTIME, &ts[0]);
	ts[0].tv_sec -= 60;
	ts[1] = ts[0];
	cr_assert_eq(utimensat(AT_FDCWD, path, ts, 0), 0);
	free(out);
	free(s);
}

/*
 * smtpd_root - the root directory of the smtpd that logged the k-th
 * (from 1) line holding needle, once it has; NULL if none did in time
 */
static char *
smtpd_root(const char *needle, int k)
{
	double	 deadline = h_now() + REPLY_WAIT;
	char	*log, *hit, *line, *link, buf[4096];
	ssize_t	 n;
	long	 pid = -1;

	do {
		log = h_postfix_log(&pf);
		hit = log;
		for (int i = 0; i < k && hit != NULL; i++)
			if ((hit = strstr(hit, needle)) != NULL && i + 1 < k)
				hit += strlen(needle);
		if (hit != NULL) {
			*hit = '\0';
			line = strrchr(log, '\n');
			line = strstr(line != NULL ? line : log,
			    "postfix/smtpd[");
			if (line != NULL)
				pid = strtol(line + strlen("postfix/smtpd["),
				    NULL, 10);
		}
		free(log);
		if (hit != NULL)
			break;
		(void)nanosleep(&(struct timespec){ 0, 20000000 }, NULL);
	} while (h_now() < deadline);
	if (pid <= 0)
		return NULL;
	link = h_xasprintf("/proc/%ld/root", pid);
	n = readlink(link, buf, sizeof buf - 1);
	free(link);
	if (n < 0)
		return NULL;
	buf[n] = '\0';
	return h_xstrdup(buf);
}

/*
 * smtpd chrooted to the queue directory, as Debian runs it, reaches
 * miltermux on the unix socket under that directory, named relative to
 * it in main.cf, with the socket_mode and socket_group of the example;
 * smtpd runs as the postfix user, so the group is what lets it in.
 */
Test(pmilter_postfix, chrooted_smtpd_uses_the_socket_under_the_queue_dir,
    .timeout = 120, .fini = fini)
{
	struct up	 ups[] = {
		{ "pm", { NULL }, NULL },
		{ "tm", { "--tag", NULL }, NULL },
	};
	struct group	*gr;
	gid_t		 postfix_gid;
	struct h_smtp	 s;
	const char	*argv[6];
	char		*dir, *sock, *cfg, *path, *reply = NULL, *root, *msg;
	int		 rc, code = 0, rejects = 0;
	bool		 chrooted = false;

	/* Kept at once: the harness's own getgrnam() calls reuse gr. */
	if ((gr = getgrnam("postfix")) == NULL)
		cr_skip_test("no group postfix here");
	postfix_gid = gr->gr_gid;
	ups[0].args[0] = start_pmilter();
	memset(&e, 0, sizeof e);
	env_start_upstreams(&e, ups, NELEM(ups));
	rc = h_postfix_start(&pf, NULL, NULL);
	if (rc == -EPERM || rc == -ENOENT)
		cr_skip_test("no private Postfix here: %s", strerror(-rc));
	cr_assert_eq(rc, 0, "h_postfix_start: %s", strerror(-rc));

	/* install -d -o ... -g postfix -m 0750 QUEUE/miltermux */
	dir = h_xasprintf("%s/miltermux", pf.queue_dir);
	cr_assert_eq(mkdir(dir, 0750), 0);
	cr_assert_eq(chown(dir, (uid_t)-1, postfix_gid), 0);
	cr_assert_eq(chmod(dir, 0750), 0);
	sock = h_xasprintf("%s/miltermux.sock", dir);
	e.conf = h_xasprintf("%s/miltermux-chroot.json", h_tmpdir());
	e.mux_log = h_xasprintf("%s/miltermux.log", h_tmpdir());
	e.mux_sock = sock;
	cfg = h_xasprintf("{\n"
	    "\"listen\": \"unix:%s\",\n"
	    "\"socket_mode\": \"0660\",\n"
	    "\"socket_group\": \"postfix\",\n"
	    "\"upstreams\": [\n"
	    "  { \"name\": \"pm\", \"address\": \"%s\" },\n"
	    "  { \"name\": \"tm\", \"address\": \"unix:%s/tm.sock\" }\n"
	    "] }\n", sock, ups[0].args[0] + strlen(EXTERNAL), h_tmpdir());
	cr_assert_eq(h_write_file(e.conf, cfg), 0);
	free(cfg);
	argv[0] = BIN("miltermux");
	argv[1] = "-f";
	argv[2] = "-v";
	argv[3] = "-c";
	argv[4] = e.conf;
	argv[5] = NULL;
	e.mux = h_spawn(argv, e.mux_log);
	cr_assert(e.mux > 0);
	cr_assert_eq(h_wait_unix(sock, 10), 0, "miltermux did not come up");

	/* main.cf and master.cf as on Debian, then a reload. */
	path = h_xasprintf("%s/main.cf", pf.config_dir);
	rewrite(path, "smtpd_milters = \n",
	    "smtpd_milters = unix:miltermux/miltermux.sock\n");
	free(path);
	path = h_xasprintf("%s/master.cf", pf.config_dir);
	rewrite(path, " inet n - n - - smtpd\n", " inet n - y - - smtpd\n");
	free(path);
	cr_assert_eq(kill(pf.master_pid, SIGHUP), 0);

	/*
	 * Until a chrooted smtpd answers through miltermux: smtpd processes
	 * of the generation before the reload, not chrooted and without
	 * the milter, may still take a connection or two.
	 */
	for (int tries = 0; tries < 50; tries++) {
		rc = h_smtp_open(&s, "127.0.0.1", pf.smtpd_port, &reply);
		free(reply);
		reply = NULL;
		if (rc == 220) {
			(void)h_smtp_cmd(&s, "EHLO client.example.test", NULL);
			code = h_smtp_cmd(&s, "MAIL FROM:<" PM_TEMPFAIL_FROM ">",
			    &reply);
			if (code == 451) {
				cr_assert(strstr(reply, PM_FROM_REPLY) != NULL,
				    "reply \"%s\"", reply);
				root = smtpd_root("milter-reject: MAIL from",
				    ++rejects);
				cr_assert_not_null(root, "smtpd's root "
				    "directory is unknown");
				chrooted = strcmp(root, pf.queue_dir) == 0;
				free(root);
			}
			free(reply);
			reply = NULL;
			if (chrooted)
				break;
		}
		h_smtp_close(&s);
		(void)nanosleep(&(struct timespec){ 0, 100000000 }, NULL);
	}
	cr_assert(chrooted, "no chrooted smtpd reached the milter (%d "
	    "through the milter, last reply %d)", rejects, code);
	expect(&s, "MAIL FROM:<alice@example.org>", 250, NULL);
	expect(&s, "RCPT TO:<bob@example.net>", 250, NULL);
	expect(&s, NULL, 250, NULL);
	h_smtp_close(&s);
	msg = delivered(1);
	HAS(msg, "\nX-PMilter-pm: rcpts=1 body=15\n");
	HAS(msg, "\nX-Testmilter-tm: seen\n");
	HAS(msg, "\nSubject: [pm] original subject\n");
	free(msg);
	free(dir);
	passed = true;
}
