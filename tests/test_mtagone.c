/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_mtagone - the MTA goes away at any stage, and miltermux keeps
 * nothing of the session: no upstream socket, no thread, no memory.
 *
 * 10,000 sessions, 20 at a time, each cut at a stage drawn from a fixed
 * seed (the draw depends on the session's number only, so a failure
 * replays): before negotiation, in the middle of a packet, right after
 * a command was sent (miltermux is then inside the callback, waiting on
 * its upstreams), or right after a reply, from negotiation through
 * connect, helo, mail, rcpt, data, headers, body, end of message and a
 * second transaction.  The MTA side is tests/mtaclient.c; the upstreams
 * are two real testmilters, one slow at end of message.  Afterwards
 * miltermux's open descriptors must be back to what they were before the
 * first session, its threads back to its own plus libmilter's idle
 * workers, its resident memory back near the warmed-up level, and it
 * must still pass a message.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <criterion/logging.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fixture.h"
#include "harness.h"
#include "mtaclient.h"
#include "procstat.h"

#define SESSIONS	10000
#define WARMUP		400
#define CONCURRENCY	20
#define SEED		0x6d74616e65ULL
#define NHEADERS	3
#define NBODY		3

/*
 * libmilter's worker pool keeps MIN_WORKERS (2) threads, and a worker
 * above that quits only once MIN_IDLE (1) other one is idle
 * (libmilter/worker.c): after a burst, up to about 3 may stay.
 */
#define IDLE_WORKERS	3
#define FD_SLACK	2
#define RSS_SLACK_KB	(8 * 1024)

/* The steps of a session, in order; a session is cut before one. */
enum step {
	STEP_NEGOTIATE = 0,
	STEP_CONNECT,
	STEP_HELO,
	STEP_MAIL,
	STEP_RCPT,
	STEP_DATA,
	STEP_HEADER,			/* NHEADERS of them */
	STEP_EOH = STEP_HEADER + NHEADERS,
	STEP_BODY,			/* NBODY of them */
	STEP_EOM = STEP_BODY + NBODY,
	STEP_MAIL2,
	STEP_RCPT2,
	STEP_ABORT,
	STEP_QUIT,
	STEP_COUNT
};

/* How a session ends at its cut step. */
enum cut {
	CUT_BEFORE = 0,		/* close before sending the step */
	CUT_PARTIAL,		/* half the step's packet, then close */
	CUT_SENT,		/* the whole packet, close without the reply */
	CUT_COUNT
};

struct run {
	const char	*spec;
	atomic_uint	 next;		/* next session number */
	unsigned	 last;		/* one past the last session */
	atomic_uint	 errors;	/* replies missing or wrong */
	atomic_uint	 cuts[STEP_COUNT + 1][CUT_COUNT];
	char		 first_error[256];
	pthread_mutex_t	 lock;		/* first_error */
};

static uint64_t
splitmix(uint64_t *s)
{
	uint64_t	 z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* build - the packet(s) of step st; whether a reply is due */
static bool
build(enum step st, struct buf *b, unsigned sess)
{
	static const char	 chunk[] = "A line of the body.\r\n";
	const char		*from[2] = { "<alice@example.org>", "SIZE=99" };
	const char		*to[1] = { "<bob@example.net>" };
	const char		*qid[2] = { "i", "GONE" };
	char			 v[32];

	switch (st) {
	case STEP_NEGOTIATE:
		/* An MTA without the no-reply bits, which waits for a
		 * reply at every step (libmilter fakes them for us). */
		codec_put_optneg(b, PROTO_VERSION, MA_ALL,
		    MP_ALL_V6 & ~MP_ALL_NR);
		return true;
	case STEP_CONNECT:
		codec_put_connect(b, "client.example", '4', 25000,
		    "192.0.2.7");
		return true;
	case STEP_HELO:
		codec_put_str(b, MC_HELO, "client.example");
		return true;
	case STEP_MAIL:
	case STEP_MAIL2:
		codec_put_macros(b, MC_MAIL, qid, 1);
		codec_put_argv(b, MC_MAIL, from, 2);
		return true;
	case STEP_RCPT:
	case STEP_RCPT2:
		codec_put_argv(b, MC_RCPT, to, 1);
		return true;
	case STEP_DATA:
		codec_put_packet(b, MC_DATA, NULL, 0);
		return true;
	case STEP_EOH:
		codec_put_packet(b, MC_EOH, NULL, 0);
		return true;
	case STEP_EOM:
		codec_put_packet(b, MC_BODYEOB, NULL, 0);
		return true;
	case STEP_ABORT:
		codec_put_packet(b, MC_ABORT, NULL, 0);
		return false;
	case STEP_QUIT:
		codec_put_packet(b, MC_QUIT, NULL, 0);
		return false;
	default:
		break;
	}
	if (st >= STEP_HEADER && st < STEP_EOH) {
		snprintf(v, sizeof v, "session %u", sess);
		codec_put_header(b, st == STEP_HEADER ? "Subject" : "X-Test",
		    v);
	} else
		codec_put_body(b, chunk, sizeof chunk - 1);
	return true;
}

static void
note_error(struct run *run, unsigned sess, enum step st, const char *what)
{
	atomic_fetch_add(&run->errors, 1);
	pthread_mutex_lock(&run->lock);
	if (run->first_error[0] == '\0')
		snprintf(run->first_error, sizeof run->first_error,
		    "session %u, step %d: %s", sess, (int)st, what);
	pthread_mutex_unlock(&run->lock);
}

/* session - one session of the storm, cut where its draw says */
static void
session(struct run *run, unsigned sess)
{
	uint64_t		 rng = SEED ^ ((uint64_t)sess << 20);
	enum step		 cut_at = (enum step)(splitmix(&rng) %
				    (STEP_COUNT + 1));
	enum cut		 how = (enum cut)(splitmix(&rng) % CUT_COUNT);
	struct mta		 m;
	struct mta_result	 r;
	struct buf		 b = BUF_INIT;
	bool			 reply;
	int			 rc;

	if ((rc = mta_open(&m, run->spec, 30)) != 0) {
		note_error(run, sess, 0, rc == -EAGAIN ? "cannot connect: "
		    "listen backlog full" : rc == -ECONNREFUSED ?
		    "cannot connect: refused" : "cannot connect");
		return;
	}
	atomic_fetch_add(&run->cuts[cut_at][how], 1);
	for (enum step st = 0; st < STEP_COUNT; st++) {
		buf_reset(&b);
		reply = build(st, &b, sess);
		if (st == cut_at && how == CUT_BEFORE)
			break;
		if (st == cut_at && how == CUT_PARTIAL) {
			(void)mta_send_raw(&m, buf_head(&b),
			    buf_avail(&b) / 2 + (buf_avail(&b) > 1 ? 0 : 1));
			break;
		}
		if (st == cut_at) {
			(void)mta_send_raw(&m, buf_head(&b), buf_avail(&b));
			break;
		}
		if (st == STEP_NEGOTIATE) {
			rc = mta_negotiate(&m, MA_ALL, MP_ALL_V6 & ~MP_ALL_NR);
			if (rc != 0) {
				note_error(run, sess, st, strerror(-rc));
				break;
			}
			continue;
		}
		rc = mta_exchange(&m, &b, reply, st == STEP_EOM, &r);
		if (rc != 0) {
			note_error(run, sess, st, strerror(-rc));
			break;
		}
		/* Everyone continues; only the eom is slow. */
		if (reply && r.verdict != VERDICT_CONTINUE) {
			note_error(run, sess, st, proto_verdict_name(
			    r.verdict));
			mta_result_fini(&r);
			break;
		}
		mta_result_fini(&r);
	}
	buf_fini(&b);
	mta_close(&m);
}

static void *
worker(void *arg)
{
	struct run	*run = arg;
	unsigned	 sess;

	while ((sess = atomic_fetch_add(&run->next, 1)) < run->last)
		session(run, sess);
	return NULL;
}

/* storm - sessions [first, last) from CONCURRENCY threads */
static void
storm(struct run *run, unsigned first, unsigned last)
{
	pthread_t	 t[CONCURRENCY];

	atomic_store(&run->next, first);
	run->last = last;
	for (int i = 0; i < CONCURRENCY; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, worker, run), 0);
	for (int i = 0; i < CONCURRENCY; i++)
		pthread_join(t[i], NULL);
}

/* settle - wait until miltermux holds no more than the limits */
static bool
settle(pid_t pid, long fds, long threads, double timeout_s, long *gotfds,
    long *gotthreads)
{
	struct timespec	 pause = { 0, 20 * 1000 * 1000 };
	double		 deadline = h_now() + timeout_s;
	int		 i;

	for (i = 0; i < 100000; i++) {
		*gotfds = ps_fds(pid);
		*gotthreads = ps_threads(pid);
		if (*gotfds >= 0 && *gotfds <= fds && *gotthreads >= 0 &&
		    *gotthreads <= threads)
			return true;
		if (h_now() >= deadline)
			break;
		/* Polling /proc, not waiting on a timer: the condition is
		 * what ends the loop, the deadline only bounds it. */
		nanosleep(&pause, NULL);
	}
	return false;
}

/* one_message - a whole normal message; the answer must be continue */
static void
one_message(const char *spec)
{
	struct mta		 m;
	struct buf		 b = BUF_INIT;
	struct mta_result	 r;

	cr_assert_eq(mta_open(&m, spec, 30), 0);
	cr_assert_eq(mta_negotiate(&m, MA_ALL, MP_ALL_V6 & ~MP_ALL_NR), 0);
	for (enum step st = STEP_CONNECT; st <= STEP_EOM; st++) {
		buf_reset(&b);
		cr_assert_eq(mta_exchange(&m, &b, build(st, &b, 0),
		    st == STEP_EOM, &r), 0, "step %d", (int)st);
		cr_assert_eq(r.verdict, VERDICT_CONTINUE, "step %d: %s",
		    (int)st, proto_verdict_name(r.verdict));
		if (st == STEP_EOM)
			cr_assert_eq(r.nmods, 1, "the upstream's header "
			    "was not passed on");
		mta_result_fini(&r);
	}
	(void)mta_quit(&m);
	mta_close(&m);
	buf_fini(&b);
}

Test(mta_gone, leaves_no_socket_thread_or_memory_behind, .timeout = 170)
{
	struct up	 ups[] = {
		{ "a", { "--addheader", "X-A:1", NULL }, NULL },
		{ "b", { "--delay", "eom=3", NULL }, NULL },
	};
	struct run	 run = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct env	 e;
	long		 fds0, thr0, rss0, hwm0, fds1, thr1, rss1, hwm1;
	long		 fds2, thr2;
	unsigned	 total = 0;
	double		 t0, t1;
	char		*log;
	bool		 ok;

	env_setup(&e, ups, 2, NULL, 0);
	run.spec = e.mux_spec;
	/* What miltermux holds of its own, once one whole session has
	 * gone through it (libmilter sets its worker pool up lazily). */
	one_message(e.mux_spec);
	cr_assert_eq(ps_wait_steady(e.mux, 0.3, 10, &fds0, &thr0), 0);
	cr_assert(fds0 > 0 && thr0 > 0);

	/* A warm-up storm brings up libmilter's workers, malloc's arenas
	 * and the thread stack cache; memory is compared with this. */
	storm(&run, 0, WARMUP);
	cr_assert_eq(atomic_load(&run.errors), 0, "%s", run.first_error);
	ok = settle(e.mux, fds0 + FD_SLACK, thr0 + IDLE_WORKERS, 30, &fds2,
	    &thr2);
	cr_assert(ok, "after the warm-up: %ld fds (%ld before), %ld threads "
	    "(%ld before)", fds2, fds0, thr2, thr0);
	rss0 = ps_rss_kb(e.mux);
	hwm0 = ps_hwm_kb(e.mux);

	t0 = h_now();
	storm(&run, WARMUP, WARMUP + SESSIONS);
	t1 = h_now();
	{
		int	 st = 0;

		cr_assert_neq(h_wait_exit(e.mux, 0, &st), 0, "miltermux exited: "
		    "status 0x%x", st);
	}
	cr_assert_eq(atomic_load(&run.errors), 0, "%u errors; first: %s",
	    atomic_load(&run.errors), run.first_error);
	/* Sessions the MTA side has closed may still be ending inside
	 * miltermux (libmilter notices EOF, upstreams say QUIT): give it
	 * time to get back exactly to the start, then judge with slack. */
	(void)settle(e.mux, fds0, thr0 + IDLE_WORKERS, 20, &fds1, &thr1);
	ok = settle(e.mux, fds0 + FD_SLACK, thr0 + IDLE_WORKERS, 1, &fds1,
	    &thr1);
	rss1 = ps_rss_kb(e.mux);
	hwm1 = ps_hwm_kb(e.mux);
	for (int s = 0; s <= STEP_COUNT; s++)
		for (int c = 0; c < CUT_COUNT; c++)
			total += atomic_load(&run.cuts[s][c]);
	cr_log_info("%u sessions cut (%u warm-up) in %.1f s; miltermux fds "
	    "%ld at start, %ld after; threads %ld at start, %ld after; "
	    "VmRSS %ld -> %ld KiB, VmHWM %ld -> %ld KiB", total - WARMUP,
	    WARMUP, t1 - t0, fds0, fds1, thr0, thr1, rss0, rss1, hwm0,
	    hwm1);
	cr_assert(ok, "miltermux kept %ld fds (%ld at start) and %ld threads "
	    "(%ld at start, %d idle workers allowed)", fds1, fds0, thr1, thr0,
	    IDLE_WORKERS);
	if (PS_MEMORY_MEANINGFUL)
		cr_assert_leq(rss1 - rss0, RSS_SLACK_KB, "resident memory grew "
		    "by %ld KiB over %d sessions", rss1 - rss0, SESSIONS);
	else
		cr_log_info("sanitizer build: memory bounds not checked");
	/* Every cut point was hit. */
	for (int s = 0; s <= STEP_COUNT; s++)
		for (int c = 0; c < CUT_COUNT; c++)
			cr_assert_gt(atomic_load(&run.cuts[s][c]), 0,
			    "cut %d/%d never drawn", s, c);

	one_message(e.mux_spec);
	log = env_mux_log(&e);
	HASNT(log, "panic");
	free(log);
}
