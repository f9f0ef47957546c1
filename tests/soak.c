/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * soak - many messages through a real miltermux while its upstreams are
 * killed and restarted at random; every answer must be one the
 * upstreams' verdicts and on_failure allow, nothing may hang, and
 * miltermux's descriptors, threads and memory must stay flat.
 *
 * Set-up, in a private temp directory (harness.c): three testmilters,
 * "a" (on_failure accept, adds X-Soak-A), "t" (on_failure tempfail,
 * rejects the recipient <bad@example.net> with its own text) and "r"
 * (on_failure reject, adds X-Soak-R), behind one miltermux.  SESSIONS
 * client threads (tests/mtaclient.c) each run sessions of one to eight
 * messages, until MESSAGES messages were started.  Meanwhile the main
 * thread kills one upstream at random (SIGKILL) every KILL_MS on
 * average, restarts it after up to 300 ms, and samples miltermux's
 * /proc entries.
 *
 * Judging the answers: an upstream fails for the rest of an MTA
 * connection once its socket broke, so what a message may get depends
 * on each upstream's state over [session opened, message answered]:
 * alive throughout (no kill in the window and up at its start), surely
 * failed (down during the whole negotiation, or killed after the
 * negotiation and before the message's MAIL was sent), or either (a
 * kill raced with the session).  A message passes the check when its
 * answer is the one expected in at least one combination of the
 * undecided upstreams: r failed -> reject; else t failed -> tempfail;
 * else it passes, with X-Soak-R, with X-Soak-A exactly when a is alive,
 * and <bad@example.net> refused with t's text.  The connect and helo of
 * a session are judged the same way (r failed -> reject, t -> tempfail).
 * Every answer is checked after the run, against the full kill log.
 *
 * Exit status 0 when every answer was right, no reply was late, and
 * miltermux ended with the descriptors and threads it started with;
 * 1 otherwise; 64 on a bad command line.
 *
 * Concurrency: the harness is called from the main thread only; client
 * threads use their own struct mta and write their own slots of the
 * record arrays.  Ownership: everything lives until exit.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <sys/wait.h>
#include <time.h>

#include "harness.h"
#include "mtaclient.h"
#include "procstat.h"

#define BIN(p)		PACKAGE_BUILDDIR "/" p
#define NUP		3
#define MAX_EVENTS	100000
#define REPLY_TIMEOUT	30.0	/* longer than any miltermux timeout */
#define BAD_RCPT	"<bad@example.net>"
#define BAD_TEXT	"550 5.1.1 No such user here"
#define IDLE_WORKERS	3	/* libmilter's, see test_mtagone.c */
#define FD_SLACK	2
#define RSS_SLACK_KB	(16 * 1024)
#define MAX_RCPT	4
#define MAX_MSGS	8	/* per session */

enum up_id {
	UP_A = 0,
	UP_T,
	UP_R
};

static const char *const up_name[NUP] = { "a", "t", "r" };

/* One instance of an upstream: the times bound what was certain. */
struct instance {
	double	 spawned;	/* before h_spawn */
	double	 ready;		/* its socket accepted a connection */
	double	 killed;	/* before kill(2); 0 while it lives */
	double	 reaped;	/* after it was reaped */
};

struct upstream_log {
	struct instance	 inst[MAX_EVENTS];
	size_t		 n;
	pid_t		 pid;
	char		*sock;
};

enum kind {
	REC_SESSION = 0,	/* connect and helo */
	REC_MESSAGE
};

/* What one message (or a session's start) got; checked afterwards. */
struct record {
	enum kind	 kind;
	double		 opened;	/* session: before connect(2) */
	double		 negotiated;	/* session: negotiation answered */
	double		 sent;		/* message: before MAIL */
	double		 answered;	/* final answer read */
	enum verdict	 final;		/* CONTINUE: passed */
	enum stage	 stage;		/* where the final answer came */
	bool		 hdr_a, hdr_r, other_mods;
	bool		 bad_sent;
	enum verdict	 bad;		/* the bad recipient's answer */
	bool		 bad_text_ok;
	bool		 error;		/* no answer, or a protocol error */
	int		 err;
};

static struct {
	unsigned	 messages;
	unsigned	 sessions;
	unsigned	 kill_ms;
	unsigned	 seed;
	bool		 verbose;
} opt = { 50000, 200, 3000, 1, false };

static struct upstream_log	 ups[NUP];
static struct record		*recs;
static atomic_size_t		 nrecs;
static size_t			 maxrecs;
static atomic_uint		 started;	/* messages begun */
static atomic_uint		 nsessions;
static char			*mux_spec;

static double
now(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t
splitmix(uint64_t *s)
{
	uint64_t	 z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void
pause_ms(double ms)
{
	struct timespec	 ts;

	ts.tv_sec = (time_t)(ms / 1000);
	ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1000) * 1e6);
	nanosleep(&ts, NULL);
}

static struct record *
new_record(enum kind k)
{
	size_t		 i = atomic_fetch_add(&nrecs, 1);
	struct record	*r;

	if (i >= maxrecs) {
		fprintf(stderr, "soak: record table full\n");
		exit(1);
	}
	r = &recs[i];
	memset(r, 0, sizeof *r);
	r->kind = k;
	r->final = VERDICT_CONTINUE;
	return r;
}

/* ------------------------------------------------------------------ */
/* Upstreams.                                                          */

static void
start_upstream(enum up_id u)
{
	const char	*argv[16];
	char		*spec = h_xasprintf("unix:%s", ups[u].sock);
	struct instance	*in;
	size_t		 k = 0;

	argv[k++] = BIN("tests/milters/testmilter");
	argv[k++] = "-p";
	argv[k++] = spec;
	argv[k++] = "-n";
	argv[k++] = up_name[u];
	switch (u) {
	case UP_A:
		argv[k++] = "--addheader";
		argv[k++] = "X-Soak-A:1";
		break;
	case UP_T:
		argv[k++] = "--reject-rcpt";
		argv[k++] = BAD_RCPT;
		argv[k++] = "--reply";
		argv[k++] = "envrcpt=" BAD_TEXT;
		break;
	case UP_R:
		argv[k++] = "--addheader";
		argv[k++] = "X-Soak-R:1";
		break;
	}
	argv[k] = NULL;
	if (ups[u].n >= MAX_EVENTS) {
		fprintf(stderr, "soak: too many restarts\n");
		exit(1);
	}
	in = &ups[u].inst[ups[u].n];
	in->spawned = now();
	ups[u].pid = h_spawn(argv, NULL);
	if (ups[u].pid <= 0 || h_wait_unix(ups[u].sock, 10) != 0) {
		fprintf(stderr, "soak: upstream %s does not start\n",
		    up_name[u]);
		exit(1);
	}
	in->ready = now();
	ups[u].n++;
	free(spec);
}

static void
kill_upstream(enum up_id u)
{
	struct instance	*in = &ups[u].inst[ups[u].n - 1];

	in->killed = now();
	h_kill(ups[u].pid, SIGKILL);
	if (h_wait_exit(ups[u].pid, 10, NULL) != 0) {
		fprintf(stderr, "soak: upstream %s does not die\n",
		    up_name[u]);
		exit(1);
	}
	in->reaped = now();
	ups[u].pid = 0;
}

/* ------------------------------------------------------------------ */
/* Clients.                                                            */

/* failed - note an error (rc) at stage st and end the record */
static bool
failed(struct record *r, int rc, enum stage st)
{
	if (rc == 0)
		return false;
	r->error = true;
	r->err = rc;
	r->stage = st;
	r->answered = now();
	return true;
}

/* ends - does this verdict end the message (or session)? */
static bool
ends(struct record *r, const struct mta_result *res, enum stage st)
{
	if (res->verdict == VERDICT_CONTINUE || res->verdict == VERDICT_NONE)
		return false;
	r->final = res->verdict;
	r->stage = st;
	r->answered = now();
	return true;
}

/* message - one transaction; false when the session must end */
static bool
message(struct mta *m, uint64_t *rng, double opened, double negotiated,
    unsigned n)
{
	static const char	 line[] = "The quick brown fox jumps over the "
				    "lazy dog, again and again.\r\n";
	struct record		*r = new_record(REC_MESSAGE);
	struct mta_result	 res;
	const char		*from[1] = { "<sender@example.org>" };
	const char		*qid[2] = { "i", NULL };
	char			 qbuf[32], addr[64], subj[64];
	unsigned		 ngood = 1 + (unsigned)(splitmix(rng) % 3);
	unsigned		 bad_at = (unsigned)(splitmix(rng) % 8);
	unsigned		 accepted = 0, nlines;
	enum verdict		 refused = VERDICT_NONE;
	struct buf		 body = BUF_INIT;
	int			 rc;

	r->opened = opened;
	r->negotiated = negotiated;
	snprintf(qbuf, sizeof qbuf, "Q%08X", n);
	qid[1] = qbuf;
	r->sent = now();
	if ((rc = mta_macros(m, MC_MAIL, qid, 1)) != 0 ||
	    (rc = mta_mail(m, from, 1, &res)) != 0)
		return !failed(r, rc, STAGE_ENVFROM);
	if (ends(r, &res, STAGE_ENVFROM)) {
		mta_result_fini(&res);
		return true;
	}
	/* One to three good recipients; when bad_at falls among them
	 * (three messages in eight on average), the bad one there. */
	for (unsigned i = 0, g = 0; i < ngood + (bad_at <= ngood); i++) {
		const char	*argv[1] = { addr };
		bool		 bad = i == bad_at;

		if (bad)
			snprintf(addr, sizeof addr, "%s", BAD_RCPT);
		else
			snprintf(addr, sizeof addr, "<user%u@example.net>",
			    g++);
		if ((rc = mta_rcpt(m, argv, 1, &res)) != 0)
			return !failed(r, rc, STAGE_ENVRCPT);
		if (bad) {
			r->bad_sent = true;
			r->bad = res.verdict;
			r->bad_text_ok = res.text != NULL &&
			    strcmp(res.text, BAD_TEXT) == 0;
		} else if (res.verdict == VERDICT_CONTINUE)
			accepted++;
		else if (res.verdict == VERDICT_REJECT ||
		    res.verdict == VERDICT_TEMPFAIL) {
			if (refused != VERDICT_REJECT)
				refused = res.verdict;
		} else {
			/* Nothing here may accept or discard. */
			ends(r, &res, STAGE_ENVRCPT);
			mta_result_fini(&res);
			(void)mta_abort(m);
			return true;
		}
		mta_result_fini(&res);
	}
	if (accepted == 0) {
		/* Every good recipient refused: the MTA gives up. */
		r->final = refused;
		r->stage = STAGE_ENVRCPT;
		r->answered = now();
		return mta_abort(m) == 0;
	}
	if ((rc = mta_data(m, &res)) != 0)
		return !failed(r, rc, STAGE_DATA);
	if (ends(r, &res, STAGE_DATA))
		goto aborted;
	snprintf(subj, sizeof subj, "soak message %u", n);
	{
		const char	*hn[4] = { "From", "To", "Subject",
				    "Message-ID" };
		const char	*hv[4] = { "<sender@example.org>",
				    "<user0@example.net>", subj,
				    "<soak@example.org>" };

		for (int h = 0; h < 4; h++) {
			rc = mta_header(m, hn[h], hv[h], strlen(hv[h]), &res);
			if (rc != 0)
				return !failed(r, rc, STAGE_HEADER);
			if (ends(r, &res, STAGE_HEADER))
				goto aborted;
		}
	}
	if ((rc = mta_eoh(m, &res)) != 0)
		return !failed(r, rc, STAGE_EOH);
	if (ends(r, &res, STAGE_EOH))
		goto aborted;
	nlines = 1 + (unsigned)(splitmix(rng) % 1500);
	for (unsigned i = 0; i < nlines; i++)
		buf_add(&body, line, sizeof line - 1);
	for (size_t off = 0; off < buf_avail(&body); off += PROTO_MAX_DATA) {
		size_t	 len = buf_avail(&body) - off;

		len = len > PROTO_MAX_DATA ? PROTO_MAX_DATA : len;
		if ((rc = mta_body(m, buf_head(&body) + off, len, &res)) != 0) {
			buf_fini(&body);
			return !failed(r, rc, STAGE_BODY);
		}
		if (ends(r, &res, STAGE_BODY)) {
			buf_fini(&body);
			goto aborted;
		}
	}
	buf_fini(&body);
	if ((rc = mta_eom(m, &res)) != 0)
		return !failed(r, rc, STAGE_EOM);
	r->answered = now();
	r->final = res.verdict;
	r->stage = STAGE_EOM;
	for (size_t i = 0; i < res.nmods; i++) {
		const struct mod *md = &res.mods[i];

		if (md->kind == MOD_ADDHEADER && strcmp(md->name,
		    "X-Soak-A") == 0)
			r->hdr_a = true;
		else if (md->kind == MOD_ADDHEADER && strcmp(md->name,
		    "X-Soak-R") == 0)
			r->hdr_r = true;
		else
			r->other_mods = true;
	}
	mta_result_fini(&res);
	return true;

aborted:
	mta_result_fini(&res);
	return mta_abort(m) == 0;
}

/* session - connect, helo, a few messages, quit */
static void
session(uint64_t *rng)
{
	struct record		*r = new_record(REC_SESSION);
	struct mta_result	 res;
	struct mta		 m;
	unsigned		 nmsg;
	unsigned		 n;
	int			 rc;

	nmsg = 1 + (unsigned)(splitmix(rng) % MAX_MSGS);
	atomic_fetch_add(&nsessions, 1);
	r->opened = now();
	if ((rc = mta_open(&m, mux_spec, REPLY_TIMEOUT)) != 0 ||
	    (rc = mta_negotiate(&m, MA_ALL, MP_ALL_V6)) != 0) {
		failed(r, rc, STAGE_CONNECT);
		mta_close(&m);
		return;
	}
	r->negotiated = now();
	if ((rc = mta_connect(&m, "client.example", "192.0.2.9", &res)) != 0) {
		failed(r, rc, STAGE_CONNECT);
		goto out;
	}
	if (ends(r, &res, STAGE_CONNECT))
		goto out;
	mta_result_fini(&res);
	if ((rc = mta_helo(&m, "client.example", &res)) != 0) {
		failed(r, rc, STAGE_HELO);
		goto out;
	}
	if (ends(r, &res, STAGE_HELO))
		goto out;
	r->answered = now();
	for (unsigned i = 0; i < nmsg; i++) {
		n = atomic_fetch_add(&started, 1);
		if (n >= opt.messages)
			break;
		if (!message(&m, rng, r->opened, r->negotiated, n))
			break;
	}
	(void)mta_quit(&m);
out:
	mta_result_fini(&res);
	mta_close(&m);
}

static void *
client(void *arg)
{
	uint64_t	 rng = (uint64_t)opt.seed << 32 | (uintptr_t)arg;

	while (atomic_load(&started) < opt.messages)
		session(&rng);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Judging.                                                            */

enum state {
	ALIVE = 0,
	FAILED,
	EITHER
};

/* state_of - what upstream u surely was for a record */
static enum state
state_of(enum up_id u, const struct record *r)
{
	const struct upstream_log *l = &ups[u];

	for (size_t i = 0; i < l->n; i++) {
		const struct instance *in = &l->inst[i];

		/* Up before the session began, and not killed until after
		 * the answer. */
		if (in->ready <= r->opened &&
		    (in->killed == 0 || in->killed > r->answered))
			return ALIVE;
		/* Down during the whole negotiation: the connect to it
		 * failed, for the whole session. */
		if (in->reaped > 0 && in->reaped <= r->opened &&
		    (i + 1 >= l->n || l->inst[i + 1].spawned >=
		    r->negotiated))
			return FAILED;
		/* Killed after the negotiation, before MAIL: the
		 * connection's socket to it is dead. */
		if (r->kind == REC_MESSAGE && in->killed > 0 &&
		    in->killed >= r->negotiated && in->reaped <= r->sent &&
		    in->spawned < r->negotiated)
			return FAILED;
	}
	return EITHER;
}

/* fits - is the record's answer the one expected with these failures? */
static bool
fits(const struct record *r, const bool f[NUP])
{
	if (f[UP_R])
		return r->final == VERDICT_REJECT;
	if (f[UP_T])
		return r->final == VERDICT_TEMPFAIL;
	if (r->kind == REC_SESSION)
		return r->final == VERDICT_CONTINUE;
	return r->final == VERDICT_CONTINUE && r->stage == STAGE_EOM &&
	    r->hdr_r && r->hdr_a == !f[UP_A] && !r->other_mods &&
	    (!r->bad_sent || (r->bad == VERDICT_REJECT && r->bad_text_ok));
}

static bool
judge(const struct record *r, enum state st[NUP])
{
	bool	 f[NUP];

	for (int u = 0; u < NUP; u++)
		st[u] = state_of((enum up_id)u, r);
	for (unsigned combo = 0; combo < (1u << NUP); combo++) {
		bool	 possible = true;

		for (int u = 0; u < NUP; u++) {
			f[u] = (combo >> u & 1) != 0;
			if ((st[u] == ALIVE && f[u]) ||
			    (st[u] == FAILED && !f[u]))
				possible = false;
		}
		if (possible && fits(r, f))
			return true;
	}
	return false;
}

/* judge_loose - did a kill race with the record (some upstream either)? */
static bool
judge_loose(const struct record *r)
{
	for (int u = 0; u < NUP; u++)
		if (state_of((enum up_id)u, r) == EITHER)
			return true;
	return false;
}

static const char *
state_name(enum state s)
{
	return s == ALIVE ? "alive" : s == FAILED ? "failed" : "either";
}

/* ------------------------------------------------------------------ */

struct sample {
	long	 fds_min, fds_max;
	long	 thr_min, thr_max;
	long	 rss_min, rss_max;
	long	 rss_q[4];		/* max in each quarter of the run */
};

static void
sample(pid_t mux, struct sample *s, double frac)
{
	long	 fds = ps_fds(mux), thr = ps_threads(mux), rss = ps_rss_kb(mux);
	int	 q;

	if (fds < 0 || thr < 0 || rss < 0)
		return;
	if (s->fds_min == 0 || fds < s->fds_min)
		s->fds_min = fds;
	if (fds > s->fds_max)
		s->fds_max = fds;
	if (s->thr_min == 0 || thr < s->thr_min)
		s->thr_min = thr;
	if (thr > s->thr_max)
		s->thr_max = thr;
	if (s->rss_min == 0 || rss < s->rss_min)
		s->rss_min = rss;
	if (rss > s->rss_max)
		s->rss_max = rss;
	q = frac < 0 ? 0 : frac >= 1 ? 3 : (int)(frac * 4);
	if (rss > s->rss_q[q])
		s->rss_q[q] = rss;
}

/* settle - wait until miltermux is back within fds and threads */
static bool
settle(pid_t mux, long fds, long thr, double timeout_s, long *gotfds,
    long *gotthr)
{
	double	 deadline = now() + timeout_s;

	for (int i = 0; i < 100000; i++) {
		*gotfds = ps_fds(mux);
		*gotthr = ps_threads(mux);
		if (*gotfds >= 0 && *gotfds <= fds && *gotthr >= 0 &&
		    *gotthr <= thr)
			return true;
		if (now() >= deadline)
			break;
		pause_ms(20);
	}
	return false;
}

/*
 * clean_message - one session with one message while every upstream is
 * up: it must pass with both headers.  Returns true if it did.
 */
static bool
clean_message(void)
{
	uint64_t	 rng = 42;
	size_t		 first = atomic_load(&nrecs);
	unsigned	 saved = opt.messages;
	bool		 ok = true;

	/* One session, one message: the budget is what ends it. */
	opt.messages = atomic_load(&started) + 1;
	session(&rng);
	opt.messages = saved;
	for (size_t i = first; i < atomic_load(&nrecs); i++) {
		const struct record *r = &recs[i];

		if (r->error || r->final != VERDICT_CONTINUE ||
		    (r->kind == REC_MESSAGE && (!r->hdr_a || !r->hdr_r)))
			ok = false;
	}
	atomic_store(&nrecs, first);
	atomic_store(&started, 0);
	return ok;
}

static void
usage(FILE *f)
{
	fprintf(f,
"usage: soak [-m MESSAGES] [-c SESSIONS] [-k KILL_MS] [-s SEED] [-v]\n"
"       soak --short\n"
"\n"
"  -m, --messages N   messages to send (default 50000)\n"
"  -c, --sessions N   concurrent MTA sessions (default 200)\n"
"  -k, --kill-ms MS   mean time between upstream kills (default 3000)\n"
"  -s, --seed N       seed of the clients' choices (default 1)\n"
"  -v, --verbose      progress every second\n"
"      --short        10000 messages, 200 sessions, a kill every 1000 ms\n");
}

static unsigned
number(const char *s, const char *what, unsigned max)
{
	char		*end;
	unsigned long	 v = strtoul(s, &end, 10);

	if (*end != '\0' || end == s || v == 0 || v > max) {
		fprintf(stderr, "soak: %s: \"%s\" is not a number from 1 to "
		    "%u\n", what, s, max);
		exit(EX_USAGE);
	}
	return (unsigned)v;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "messages",	required_argument, NULL, 'm' },
		{ "sessions",	required_argument, NULL, 'c' },
		{ "kill-ms",	required_argument, NULL, 'k' },
		{ "seed",	required_argument, NULL, 's' },
		{ "verbose",	no_argument,	   NULL, 'v' },
		{ "short",	no_argument,	   NULL, 'S' },
		{ "help",	no_argument,	   NULL, 'h' },
		{ NULL,		0,		   NULL, 0 }
	};
	const char	*mux_argv[6];
	struct sample	 smp = { 0 };
	pthread_t	*threads;
	char		*conf, *cfg, *mux_log, *mux_sock, *log, *p;
	size_t		 loglen;
	pid_t		 mux;
	uint64_t	 rng;
	double		 t0, t1, next_kill, next_print;
	long		 fds0, thr0, rss0, fds1, thr1, rss1;
	size_t		 n, bad = 0, errors = 0, msgs = 0, pass = 0, pass_a = 0;
	size_t		 rej = 0, tmp = 0, sess_refused = 0, exact = 0;
	size_t		 by_stage[STAGE_COUNT][VERDICT_COUNT];
	unsigned	 restarts[NUP] = { 0 };
	bool		 ok = true, settled;
	int		 ch, status = 0;

	while ((ch = getopt_long(argc, argv, "m:c:k:s:vh", longopts,
	    NULL)) != -1) {
		switch (ch) {
		case 'm':
			opt.messages = number(optarg, "--messages", 10000000);
			break;
		case 'c':
			opt.sessions = number(optarg, "--sessions", 2000);
			break;
		case 'k':
			opt.kill_ms = number(optarg, "--kill-ms", 3600000);
			break;
		case 's':
			opt.seed = number(optarg, "--seed", 1000000000);
			break;
		case 'v':
			opt.verbose = true;
			break;
		case 'S':
			opt.messages = 10000;
			opt.sessions = 200;
			opt.kill_ms = 1000;
			break;
		case 'h':
			usage(stdout);
			return EX_OK;
		default:
			usage(stderr);
			return EX_USAGE;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return EX_USAGE;
	}
	/* Each message a record, each session one more. */
	maxrecs = 2 * (size_t)opt.messages + 4 * (size_t)opt.sessions + 1000;
	recs = h_xmalloc(maxrecs * sizeof *recs);
	memset(by_stage, 0, sizeof by_stage);

	for (int u = 0; u < NUP; u++) {
		ups[u].sock = h_xasprintf("%s/%s.sock", h_tmpdir(),
		    up_name[u]);
		start_upstream((enum up_id)u);
	}
	mux_sock = h_path("mux.sock");
	mux_spec = h_xasprintf("unix:%s", mux_sock);
	mux_log = h_path("miltermux.log");
	conf = h_path("miltermux.json");
	cfg = h_xasprintf("{\n\"listen\": \"%s\",\n\"threads\": 2,\n"
	    "\"timeouts\": { \"connect\": 2, \"command\": 5, \"content\": 10 },"
	    /* Upstreams come and go every second here; the answer judged
	     * for each message assumes a live upstream is asked, so the
	     * breaker (failures/retry_after, tested in test_daemon) stays
	     * out of the way. */
	    "\n\"failures\": 1000,"
	    "\n\"upstreams\": [\n"
	    "{ \"name\": \"a\", \"address\": \"unix:%s\", \"on_failure\": "
	    "\"accept\" },\n"
	    "{ \"name\": \"t\", \"address\": \"unix:%s\", \"on_failure\": "
	    "\"tempfail\" },\n"
	    "{ \"name\": \"r\", \"address\": \"unix:%s\", \"on_failure\": "
	    "\"reject\" }\n] }\n", mux_spec, ups[UP_A].sock, ups[UP_T].sock,
	    ups[UP_R].sock);
	if (h_write_file(conf, cfg) != 0) {
		fprintf(stderr, "soak: cannot write %s\n", conf);
		return 1;
	}
	mux_argv[0] = BIN("miltermux");
	mux_argv[1] = "-f";
	mux_argv[2] = "-c";
	mux_argv[3] = conf;
	mux_argv[4] = NULL;
	mux = h_spawn(mux_argv, mux_log);
	if (mux <= 0 || h_wait_unix(mux_sock, 10) != 0) {
		fprintf(stderr, "soak: miltermux does not start\n");
		return 1;
	}
	/* The baseline: miltermux once one whole session went through it
	 * (libmilter sets its worker pool up lazily), steady. */
	if (!clean_message() || ps_wait_steady(mux, 0.3, 10, &fds0,
	    &thr0) != 0) {
		fprintf(stderr, "soak: miltermux does not pass a message\n");
		return 1;
	}
	rss0 = ps_rss_kb(mux);
	printf("soak: %u messages from %u concurrent sessions; an upstream "
	    "killed every %u ms on average; seed %u\n", opt.messages,
	    opt.sessions, opt.kill_ms, opt.seed);
	printf("soak: miltermux at start: %ld fds, %ld threads, %ld KiB "
	    "resident\n", fds0, thr0, rss0);
	fflush(stdout);

	threads = h_xmalloc(opt.sessions * sizeof *threads);
	t0 = now();
	for (unsigned i = 0; i < opt.sessions; i++)
		if (pthread_create(&threads[i], NULL, client,
		    (void *)(uintptr_t)i) != 0) {
			fprintf(stderr, "soak: pthread_create failed\n");
			return 1;
		}

	/* The main thread: kills, restarts and samples until the clients
	 * have started every message; it stops killing then, so that the
	 * last messages end against a stable set. */
	rng = (uint64_t)opt.seed * 7919;
	next_kill = t0 + (double)(splitmix(&rng) % (2 * opt.kill_ms)) / 1000;
	next_print = t0 + 1;
	while (atomic_load(&started) < opt.messages) {
		double	 t = now();
		unsigned s = atomic_load(&started);

		sample(mux, &smp, (double)s / opt.messages);
		if (t >= next_kill) {
			enum up_id u = (enum up_id)(splitmix(&rng) % NUP);

			kill_upstream(u);
			pause_ms((double)(splitmix(&rng) % 300));
			start_upstream(u);
			restarts[u]++;
			next_kill = now() + (double)(splitmix(&rng) %
			    (2 * opt.kill_ms)) / 1000;
		}
		if (opt.verbose && t >= next_print) {
			printf("soak: %.0f s: %u messages started, %u "
			    "sessions; miltermux %ld fds, %ld threads, "
			    "%ld KiB\n",
			    t - t0, s, atomic_load(&nsessions), ps_fds(mux),
			    ps_threads(mux), ps_rss_kb(mux));
			fflush(stdout);
			next_print += 1;
		}
		pause_ms(50);
	}
	for (unsigned i = 0; i < opt.sessions; i++)
		pthread_join(threads[i], NULL);
	t1 = now();
	sample(mux, &smp, 1);

	/* Judge every answer against the full kill log. */
	n = atomic_load(&nrecs);
	for (size_t i = 0; i < n; i++) {
		const struct record *r = &recs[i];
		enum state	 st[NUP];

		if (r->error) {
			errors++;
			if (errors <= 10)
				printf("soak: ERROR %s at %s: %s\n",
				    r->kind == REC_SESSION ? "session" :
				    "message", proto_stage_name(r->stage),
				    strerror(-r->err));
			continue;
		}
		if (r->kind == REC_MESSAGE) {
			msgs++;
			by_stage[r->stage][r->final]++;
			if (r->final == VERDICT_CONTINUE) {
				pass++;
				pass_a += r->hdr_a;
			} else if (r->final == VERDICT_REJECT)
				rej++;
			else if (r->final == VERDICT_TEMPFAIL)
				tmp++;
		} else if (r->final != VERDICT_CONTINUE)
			sess_refused++;
		exact += !judge_loose(r);
		if (!judge(r, st)) {
			bad++;
			if (bad <= 10)
				printf("soak: UNEXPECTED %s: %s at %s (hdr_a "
				    "%d hdr_r %d other %d bad rcpt %s%s); "
				    "a %s, t %s, r %s; window %.3f-%.3f s\n",
				    r->kind == REC_SESSION ? "session" :
				    "message", proto_verdict_name(r->final),
				    proto_stage_name(r->stage), r->hdr_a,
				    r->hdr_r, r->other_mods, r->bad_sent ?
				    proto_verdict_name(r->bad) : "-",
				    r->bad_sent && !r->bad_text_ok ?
				    " (text?)" : "", state_name(st[UP_A]),
				    state_name(st[UP_T]), state_name(st[UP_R]),
				    r->opened - t0, r->answered - t0);
		}
	}

	/* Everything closed: miltermux must be back where it started. */
	(void)settle(mux, fds0, thr0 + IDLE_WORKERS, 20, &fds1, &thr1);
	settled = settle(mux, fds0 + FD_SLACK, thr0 + IDLE_WORKERS, 1, &fds1,
	    &thr1);
	rss1 = ps_rss_kb(mux);

	printf("soak: %zu messages in %.1f s (%.0f messages/s), %u sessions "
	    "(%zu refused at connect or helo)\n", msgs, t1 - t0,
	    (double)msgs / (t1 - t0), atomic_load(&nsessions), sess_refused);
	printf("soak: answers: %zu passed (%zu with a's header), %zu "
	    "rejected, %zu tempfailed\n", pass, pass_a, rej, tmp);
	for (int s = 0; s < STAGE_COUNT; s++)
		for (int v = 0; v < VERDICT_COUNT; v++)
			if (by_stage[s][v] > 0 && v != VERDICT_CONTINUE)
				printf("soak:   %s at %s: %zu\n",
				    proto_verdict_name(v),
				    proto_stage_name(s), by_stage[s][v]);
	printf("soak: %zu of %zu answers judged exactly (every upstream "
	    "surely alive or surely failed), the others raced with a kill\n",
	    exact, n - errors);
	printf("soak: upstream restarts: a %u, t %u, r %u\n",
	    restarts[UP_A], restarts[UP_T], restarts[UP_R]);
	printf("soak: miltermux during: fds %ld-%ld, threads %ld-%ld, "
	    "resident %ld-%ld KiB (peak per quarter of the run: %ld %ld %ld "
	    "%ld KiB)\n", smp.fds_min, smp.fds_max, smp.thr_min,
	    smp.thr_max, smp.rss_min, smp.rss_max, smp.rss_q[0],
	    smp.rss_q[1], smp.rss_q[2], smp.rss_q[3]);
	printf("soak: miltermux after: %ld fds (%ld at start), %ld threads "
	    "(%ld at start), %ld KiB resident (%ld at start)\n", fds1, fds0,
	    thr1, thr0, rss1, rss0);
	printf("soak: %zu unexpected answers, %zu errors (no answer in %.0f "
	    "s, or a broken stream)\n", bad, errors, REPLY_TIMEOUT);

	if (bad > 0 || errors > 0 || msgs < opt.messages)
		ok = false;
	if (!settled) {
		printf("soak: FAIL: miltermux did not give back its "
		    "descriptors or threads\n");
		ok = false;
	}
	/* Memory may rise with the load, not with the time: once the
	 * load is up (the first quarter ramps), a per-message leak makes
	 * the last quarter's peak climb above the second's. */
	if (PS_MEMORY_MEANINGFUL &&
	    smp.rss_q[3] > smp.rss_q[1] + RSS_SLACK_KB) {
		printf("soak: FAIL: resident memory grew from %ld to %ld KiB "
		    "over the run\n", smp.rss_q[1], smp.rss_q[3]);
		ok = false;
	}
	/* A sanitizer build of miltermux writes its findings to its log:
	 * none may come while it works. */
	if ((log = h_read_file(mux_log)) != NULL &&
	    (p = strstr(log, "Sanitizer")) != NULL) {
		printf("soak: FAIL: miltermux's log:\n%.8000s\n", p);
		ok = false;
	}
	loglen = log != NULL ? strlen(log) : 0;
	free(log);
	if (h_kill(mux, 0) != 0) {
		printf("soak: FAIL: miltermux died\n");
		ok = false;
	} else {
		/* A clean stop, so that a sanitizer build reports. */
		(void)h_stop(mux, 15, &status);
		printf("soak: miltermux stopped: %s %d\n",
		    WIFEXITED(status) ? "exit" : "signal", WIFEXITED(status) ?
		    WEXITSTATUS(status) : WTERMSIG(status));
	}
	/* Leaks show at exit.  ThreadSanitizer's reports at exit are left
	 * out: libmilter's own shutdown (mi_stop_milters, mi_listener)
	 * destroys mutexes its signal thread still uses. */
	if ((log = h_read_file(mux_log)) != NULL && strlen(log) >= loglen &&
	    ((p = strstr(log + loglen, "LeakSanitizer")) != NULL ||
	    (p = strstr(log + loglen, "AddressSanitizer")) != NULL)) {
		printf("soak: FAIL: miltermux's log:\n%.8000s\n", p);
		ok = false;
	}
	free(log);
	printf("soak: %s\n", ok ? "PASS" : "FAIL");
	fflush(stdout);
	free(cfg);
	free(conf);
	return ok ? 0 : 1;
}
