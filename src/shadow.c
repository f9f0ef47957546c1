/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * shadow - shadow upstreams: record, queue, replay off the latency path
 * (see shadow.h).
 *
 * Design: one service per shadow upstream name, for the life of the
 * process: a queue of whole messages and one thread that replays them
 * one at a time.  A replay is an upstream.c connection on the pool loop
 * of the session that recorded the message: the thread submits the
 * open, every stage and, once all are done, the close, and waits for
 * them with a budget per answer (the upstream's longest timeout, from
 * the previous answer); past it the loop is asked to expire the
 * upstream (as fanout.c does), which completes what is left with an
 * error.  The service thread is the only one that waits for a shadow
 * upstream: an MTA session only copies and queues.
 *
 * Memory: every recorded byte is reserved against the upstream's
 * shadow_queue_bytes while the message is recorded, queued and
 * replayed; a message whose next packet would not fit is dropped at
 * once (its packets freed) and counted at its end.
 *
 * Locking: svc->lock protects the fields marked (S); run->lock the
 * fields of struct run.  Neither is held across a submit, logging or
 * another lock (svcs_lock is taken alone, to find or add a service).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#include <jansson.h>
#include <sys/queue.h>

#include "codec.h"
#include "conf.h"
#include "health.h"
#include "log.h"
#include "monotime.h"
#include "merge.h"
#include "metrics.h"
#include "pool.h"
#include "replica.h"
#include "shadow.h"
#include "upstream.h"
#include "xalloc.h"

/* A dropped message is logged at most this often per upstream (s). */
#define DROP_LOG_INTERVAL	1.0

struct pkt {
	enum stage	 stage;
	struct buf	 macros;
	struct buf	 cmd;
};

struct smsg {
	TAILQ_ENTRY(smsg)		 entry;
	struct conf			*conf;	/* a reference */
	const struct conf_upstream	*cfg;	/* in conf */
	struct pool_loop		*loop;
	char				*connid;
	char				*qid;
	struct pkt			*pkts;
	size_t				 n, cap;
	size_t				 bytes;		/* reserved */
	bool				 over;		/* did not fit */
	bool				 eom;		/* reached its end */
};

TAILQ_HEAD(smsgq, smsg);

struct svc {
	struct svc		*next;		/* svcs_lock */
	char			*name;
	pthread_t		 thread;
	pthread_mutex_t		 lock;		/* (S) */
	pthread_cond_t		 cond;		/* (S) changes wake it */
	struct smsgq		 queue;		/* (S) */
	unsigned		 nqueued;	/* (S) */
	size_t			 bytes;		/* (S) reserved */
	bool			 busy;		/* (S) replaying one */
	/* (S) The replay's outcome is being reported: shadow_drain
	 * waits for it.  Else, past the grace, it gives the replay up
	 * (gave_up), counts it as cut off, and it is not reported. */
	bool			 reporting;
	bool			 gave_up;
	bool			 stopping;	/* (S) draining */
	unsigned long		 unlogged;	/* (S) drops not yet logged */
	double			 logged_at;	/* (S) last drop line */
};

struct shadow_rec {
	struct svc			*svc;
	const struct conf_upstream	*cfg;
	struct conf			*conf;
	struct pool_loop		*loop;
	char				*connid;
	struct pkt			 prefix[2];	/* connect, helo */
	bool				 have[2];
	struct smsg			*cur;
};

/* One replay, shared by the service thread and the loop. */
struct run {
	pthread_mutex_t		 lock;
	pthread_cond_t		 cond;
	struct upstream		*up;
	unsigned		 left;		/* exchanges not done */
	double			 last;		/* last answer, monotonic */
	bool			 cancel_posted;
	struct pool_job		 cancel;
	int			 err;		/* first failure */
	bool			 down;		/* skipped: its breaker */
	enum verdict		 verdict;	/* of the message */
	size_t			 nmods;
};

struct sx {
	struct upstream_xchg	 x;	/* first: done() casts */
	struct run		*run;
};

static pthread_mutex_t	 svcs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct svc	*svcs;		/* svcs_lock */

static void
shcond_init(pthread_cond_t *c)
{
	pthread_condattr_t	 ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(c, &ca);
	pthread_condattr_destroy(&ca);
}

static void
pkt_fini(struct pkt *p)
{
	buf_fini(&p->macros);
	buf_fini(&p->cmd);
}

static void
smsg_free(struct smsg *m)
{
	if (m == NULL)
		return;
	for (size_t i = 0; i < m->n; i++)
		pkt_fini(&m->pkts[i]);
	free(m->pkts);
	free(m->connid);
	free(m->qid);
	conf_release(m->conf);
	free(m);
}

/* reserve - room for n more bytes of a message, within the bound */
static bool
reserve(struct svc *sv, const struct conf_upstream *cfg, size_t n)
{
	bool	 ok;

	pthread_mutex_lock(&sv->lock);
	ok = sv->bytes + n <= cfg->shadow_queue_bytes;
	if (ok)
		sv->bytes += n;
	pthread_mutex_unlock(&sv->lock);
	return ok;
}

static void
unreserve(struct svc *sv, size_t n)
{
	pthread_mutex_lock(&sv->lock);
	sv->bytes -= n;
	pthread_mutex_unlock(&sv->lock);
	pthread_cond_broadcast(&sv->cond);
}

/* push - append a packet to m (taking its buffers), if it fits */
static void
push(struct svc *sv, struct smsg *m, enum stage st, struct buf *macros,
    struct buf *cmd)
{
	size_t	 n = buf_avail(macros) + buf_avail(cmd);
	struct pkt *p;

	if (m->over)
		goto drop;
	if (!reserve(sv, m->cfg, n)) {
		/* Never half a message: what it has is freed now, and it
		 * is counted as dropped at its end. */
		m->over = true;
		for (size_t i = 0; i < m->n; i++)
			pkt_fini(&m->pkts[i]);
		m->n = 0;
		unreserve(sv, m->bytes);
		m->bytes = 0;
		goto drop;
	}
	if (m->n == m->cap) {
		m->cap = m->cap == 0 ? 16 : 2 * m->cap;
		m->pkts = xreallocarray(m->pkts, m->cap, sizeof *m->pkts);
	}
	p = &m->pkts[m->n++];
	p->stage = st;
	p->macros = *macros;
	p->cmd = *cmd;
	buf_init(macros);
	buf_init(cmd);
	m->bytes += n;
	return;
drop:
	buf_fini(macros);
	buf_fini(cmd);
	buf_init(macros);
	buf_init(cmd);
}

/* copy_into - a copy of the session's packet p into m */
static void
copy_into(struct svc *sv, struct smsg *m, const struct pkt *p)
{
	struct buf	 a = BUF_INIT, b = BUF_INIT;

	buf_add(&a, buf_head(&p->macros), buf_avail(&p->macros));
	buf_add(&b, buf_head(&p->cmd), buf_avail(&p->cmd));
	push(sv, m, p->stage, &a, &b);
}

/* ---- the service thread: replay one message ---- */

static void
sx_done(struct upstream_xchg *x)
{
	struct sx	*s = (struct sx *)x;
	struct run	*r = s->run;

	pthread_mutex_lock(&r->lock);
	if (x->error != 0) {
		if (r->err == 0)
			r->err = x->error;
	} else if (x->kind == XCHG_STAGE && x->verdict != VERDICT_NONE &&
	    x->stage != STAGE_ABORT) {
		/* As fanout.c's settle: a recipient's refusal is not the
		 * message's, and the end-of-message word is final. */
		if (x->stage == STAGE_EOM) {
			r->verdict = x->verdict;
			r->nmods = x->nmods;
		} else if (x->stage != STAGE_ENVRCPT ||
		    x->verdict == VERDICT_ACCEPT ||
		    x->verdict == VERDICT_DISCARD)
			r->verdict = merge_verdict(r->verdict, x->verdict);
	}
	r->left--;
	r->last = mono_now();
	/* Under the lock: once it is released with nothing left, the
	 * service thread may be gone with r. */
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

static void
close_done(struct upstream_xchg *x)
{
	upstream_xchg_fini(x);
	free(x);
}

/* cancel_run - on the loop: expire an upstream that took too long */
static void
cancel_run(struct pool_job *job)
{
	struct run	*r = (struct run *)((char *)job -
			    offsetof(struct run, cancel));

	upstream_expire(r->up, -ETIMEDOUT);
	pthread_mutex_lock(&r->lock);
	r->cancel_posted = false;
	pthread_cond_broadcast(&r->cond);	/* as in sx_done */
	pthread_mutex_unlock(&r->lock);
}

static double
budget(const struct conf_upstream *cfg)
{
	double	 b = cfg->timeouts.connect;

	if (cfg->timeouts.command > b)
		b = cfg->timeouts.command;
	if (cfg->timeouts.content > b)
		b = cfg->timeouts.content;
	return b;
}

/* report - the message's line and counters */
static void
report(struct svc *sv, const struct smsg *m, const struct run *r,
    double seconds)
{
	const char	*vs = r->down ? "down" : r->err != 0 ? "failed" :
			    r->verdict == VERDICT_NONE ? "-" :
			    proto_verdict_name(r->verdict);
	json_t		*o = NULL;

	metrics_upstream_verdict(sv->name, r->down ? METRICS_UV_DOWN :
	    r->err != 0 ? METRICS_UV_FAILED : (int)r->verdict);
	if (r->err == 0 && (r->nmods > 0 || r->verdict == VERDICT_REJECT ||
	    r->verdict == VERDICT_TEMPFAIL || r->verdict == VERDICT_DISCARD))
		metrics_unapplied(sv->name);
	if (log_get_json())
		o = json_pack("{s:s, s:o, s:o, s:o, s:s, s:f, s:I}",
		    "event", "shadow", "session", log_jstr(m->connid),
		    "queue_id", m->qid != NULL ? log_jstr(m->qid) :
		    json_null(), "upstream", log_jstr(sv->name),
		    "verdict", vs, "ms", seconds * 1000,
		    "modifications", (json_int_t)r->nmods);
	log_record(LOG_INFO, o, "%s: shadow %s (%s): %s/%.0fms; %zu "
	    "modification%s not applied", m->qid != NULL ? m->qid : m->connid,
	    sv->name, m->connid, vs, seconds * 1000, r->nmods,
	    r->nmods == 1 ? "" : "s");
	json_decref(o);
}

/* report_once - report, unless shadow_drain gave the replay up */
static void
report_once(struct svc *sv, const struct smsg *m, const struct run *r,
    double seconds)
{
	bool	 go;

	pthread_mutex_lock(&sv->lock);
	go = !sv->gave_up;
	sv->reporting = go;
	pthread_mutex_unlock(&sv->lock);
	if (go)
		report(sv, m, r, seconds);
}

/*
 * replay - one message over a connection of its own: open, every stage,
 * then close once all are answered; each answer within the upstream's
 * longest timeout of the one before
 */
static void
replay(struct svc *sv, struct smsg *m)
{
	struct run	 r = { .verdict = VERDICT_NONE };
	struct sx	*xs, *cl;
	double		 start = mono_now(), dl, b = budget(m->cfg);
	struct timespec	 ts;
	uint64_t	 probe = 0;
	size_t		 order[CONF_REPLICAS_MAX + 1], norder, k, rep;

	/* A pool's replica with the fewest sessions, of those whose
	 * breaker lets them be tried; the breaker as for any upstream: a
	 * shadow that is down costs one line per message, not a failed
	 * connection each. */
	norder = replica_choose(m->cfg, order);
	for (k = 0; k < norder; k++)
		if (health_check(m->cfg, order[k], &probe) != HEALTH_SKIP)
			break;
	if (k == norder) {
		replica_release(m->cfg, order[0]);
		r.down = true;
		report_once(sv, m, &r, 0);
		return;
	}
	rep = order[k];
	if (rep != order[0])
		replica_move(m->cfg, order[0], rep);
	xs = xcalloc(m->n + 1, sizeof *xs);

	pthread_mutex_init(&r.lock, NULL);
	shcond_init(&r.cond);
	r.up = upstream_new(m->cfg, rep, false, m->connid, m->loop);
	if (m->qid != NULL)
		upstream_set_queueid(r.up, m->qid);
	r.left = (unsigned)m->n + 1;
	r.last = start;
	upstream_xchg_init(&xs[0].x, XCHG_OPEN, STAGE_CONNECT);
	xs[0].x.offer_actions = MA_ALL;
	xs[0].x.offer_proto = MP_ALL_NO | MP_ALL_NR | MP_SKIP;
	for (size_t i = 0; i < m->n; i++) {
		struct upstream_xchg	*x = &xs[i + 1].x;

		upstream_xchg_init(x, XCHG_STAGE, m->pkts[i].stage);
		x->macros = m->pkts[i].macros;
		x->cmd = m->pkts[i].cmd;
		buf_init(&m->pkts[i].macros);
		buf_init(&m->pkts[i].cmd);
	}
	for (size_t i = 0; i <= m->n; i++) {
		xs[i].run = &r;
		xs[i].x.done = sx_done;
		upstream_submit(r.up, &xs[i].x);
	}
	pthread_mutex_lock(&r.lock);
	while (r.left > 0 || r.cancel_posted) {
		dl = r.last + b;
		if (r.left > 0 && mono_now() >= dl && !r.cancel_posted) {
			r.cancel_posted = true;
			r.cancel.run = cancel_run;
			r.last = mono_now();	/* the next try, if it must */
			pool_post(m->loop, &r.cancel);
			continue;
		}
		ts = mono_ts(dl);
		pthread_cond_timedwait(&r.cond, &r.lock, &ts);
	}
	pthread_mutex_unlock(&r.lock);
	if (r.err != 0)
		health_failure(m->cfg, rep, probe, r.err);
	else
		health_report(m->cfg, rep, probe, true);
	replica_release(m->cfg, rep);
	report_once(sv, m, &r, mono_now() - start);
	cl = xcalloc(1, sizeof *cl);
	upstream_xchg_init(&cl->x, XCHG_CLOSE, STAGE_QUIT);
	cl->x.done = close_done;
	upstream_submit(r.up, &cl->x);
	for (size_t i = 0; i <= m->n; i++)
		upstream_xchg_fini(&xs[i].x);
	free(xs);
	pthread_cond_destroy(&r.cond);
	pthread_mutex_destroy(&r.lock);
}

static void *
svc_main(void *arg)
{
	struct svc	*sv = arg;
	struct smsg	*m;

	for (;;) {
		pthread_mutex_lock(&sv->lock);
		while (TAILQ_EMPTY(&sv->queue))
			pthread_cond_wait(&sv->cond, &sv->lock);
		m = TAILQ_FIRST(&sv->queue);
		TAILQ_REMOVE(&sv->queue, m, entry);
		sv->nqueued--;
		sv->busy = true;
		pthread_mutex_unlock(&sv->lock);
		replay(sv, m);
		pthread_mutex_lock(&sv->lock);
		sv->busy = false;
		sv->reporting = false;
		sv->bytes -= m->bytes;
		pthread_mutex_unlock(&sv->lock);
		pthread_cond_broadcast(&sv->cond);
		smsg_free(m);
	}
	return NULL;
}

/* svc_get - the service of upstream name, started on first use */
static struct svc *
svc_get(const char *name)
{
	struct svc	*sv;
	sigset_t	 all, old;
	int		 rc;

	pthread_mutex_lock(&svcs_lock);
	for (sv = svcs; sv != NULL; sv = sv->next)
		if (strcmp(sv->name, name) == 0)
			break;
	if (sv == NULL) {
		sv = xcalloc(1, sizeof *sv);
		sv->name = xstrdup(name);
		pthread_mutex_init(&sv->lock, NULL);
		shcond_init(&sv->cond);
		TAILQ_INIT(&sv->queue);
		/* Signals stay with the signal thread. */
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		rc = pthread_create(&sv->thread, NULL, svc_main, sv);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (rc != 0)
			fatalx("cannot start the thread of shadow upstream "
			    "%s: %s", name, strerror(rc));
		sv->next = svcs;
		svcs = sv;
	}
	pthread_mutex_unlock(&svcs_lock);
	return sv;
}

/* ---- recording, on the MTA session's thread ---- */

struct shadow_rec *
shadow_rec_new(const struct conf_upstream *cfg, struct conf *conf,
    const char *connid, struct pool_loop *loop)
{
	struct shadow_rec	*rec = xcalloc(1, sizeof *rec);

	rec->svc = svc_get(cfg->name);
	rec->cfg = cfg;
	rec->conf = conf;
	rec->loop = loop;
	rec->connid = xstrdup(connid);
	for (int i = 0; i < 2; i++) {
		buf_init(&rec->prefix[i].macros);
		buf_init(&rec->prefix[i].cmd);
	}
	return rec;
}

void
shadow_rec_add(struct shadow_rec *rec, enum stage st, struct buf *macros,
    struct buf *cmd)
{
	struct smsg	*m;
	int		 k;

	if (st == STAGE_CONNECT || st == STAGE_HELO) {
		k = st == STAGE_HELO;
		pkt_fini(&rec->prefix[k]);
		rec->prefix[k].stage = st;
		rec->prefix[k].macros = *macros;
		rec->prefix[k].cmd = *cmd;
		rec->have[k] = true;
		buf_init(macros);
		buf_init(cmd);
		return;
	}
	if (st == STAGE_ENVFROM) {
		shadow_rec_end(rec, NULL);
		m = xcalloc(1, sizeof *m);
		m->conf = rec->conf;
		atomic_fetch_add(&m->conf->refs, 1);
		m->cfg = rec->cfg;
		m->loop = rec->loop;
		m->connid = xstrdup(rec->connid);
		rec->cur = m;
		for (k = 0; k < 2; k++)
			if (rec->have[k])
				copy_into(rec->svc, m, &rec->prefix[k]);
	}
	if ((m = rec->cur) == NULL) {
		buf_fini(macros);
		buf_fini(cmd);
		buf_init(macros);
		buf_init(cmd);
		return;
	}
	if (st == STAGE_EOM)
		m->eom = true;
	push(rec->svc, m, st, macros, cmd);
}

/* dropped - count a message the upstream will not see; returns how
 * many to log now (0: not yet, at most a line a second) (sv->lock held) */
static unsigned long
dropped(struct svc *sv)
{
	double		 t = mono_now();
	unsigned long	 n = 0;

	metrics_shadow_dropped(sv->name);
	sv->unlogged++;
	if (sv->logged_at == 0 || t - sv->logged_at >= DROP_LOG_INTERVAL) {
		sv->logged_at = t;
		n = sv->unlogged;
		sv->unlogged = 0;
	}
	return n;
}

void
shadow_rec_end(struct shadow_rec *rec, const char *queueid)
{
	struct smsg	*m = rec->cur;
	struct svc	*sv = rec->svc;
	struct buf	 a = BUF_INIT, b = BUF_INIT;
	const char	*why = NULL;
	unsigned long	 logn = 0;
	unsigned	 nq = 0;

	if (m == NULL)
		return;
	rec->cur = NULL;
	if (queueid != NULL)
		m->qid = xstrdup(queueid);
	if (!m->eom) {
		/* It ended early for the MTA: the upstream is told so. */
		codec_put_packet(&b, MC_ABORT, NULL, 0);
		push(sv, m, STAGE_ABORT, &a, &b);
	}
	pthread_mutex_lock(&sv->lock);
	if (m->over)
		why = "more bytes than its queue may hold";
	else if (sv->stopping)
		why = "stopping";
	else if (sv->nqueued >= m->cfg->shadow_queue)
		why = "its queue is full";
	if (why != NULL) {
		nq = sv->nqueued;
		sv->bytes -= m->bytes;
		logn = dropped(sv);
	} else {
		TAILQ_INSERT_TAIL(&sv->queue, m, entry);
		sv->nqueued++;
	}
	pthread_mutex_unlock(&sv->lock);
	if (why == NULL) {
		pthread_cond_broadcast(&sv->cond);
		return;
	}
	if (logn > 0)
		log_warnx("%s: shadow %s (%s): message dropped: %s (%u "
		    "waiting); %lu dropped since the last such line",
		    m->qid != NULL ? m->qid : m->connid, sv->name, m->connid,
		    why, nq, logn);
	pthread_cond_broadcast(&sv->cond);
	smsg_free(m);
}

void
shadow_rec_free(struct shadow_rec *rec)
{
	if (rec == NULL)
		return;
	shadow_rec_end(rec, NULL);
	for (int i = 0; i < 2; i++)
		pkt_fini(&rec->prefix[i]);
	free(rec->connid);
	free(rec);
}

void
shadow_drain(double grace)
{
	double		 deadline = mono_now() + grace;
	struct svc	*sv, *list;
	struct smsg	*m;
	struct timespec	 ts = mono_ts(deadline);
	unsigned long	 left;
	bool		 cut;

	pthread_mutex_lock(&svcs_lock);
	list = svcs;
	pthread_mutex_unlock(&svcs_lock);
	for (sv = list; sv != NULL; sv = sv->next) {
		left = 0;
		pthread_mutex_lock(&sv->lock);
		sv->stopping = true;
		while ((sv->nqueued > 0 || sv->busy) && mono_now() < deadline)
			pthread_cond_timedwait(&sv->cond, &sv->lock, &ts);
		/* A line being written is let through: it is one line. */
		while (sv->busy && sv->reporting)
			pthread_cond_wait(&sv->cond, &sv->lock);
		cut = sv->busy;
		sv->gave_up = cut;
		while ((m = TAILQ_FIRST(&sv->queue)) != NULL) {
			TAILQ_REMOVE(&sv->queue, m, entry);
			sv->nqueued--;
			sv->bytes -= m->bytes;
			metrics_shadow_dropped(sv->name);
			left++;
			pthread_mutex_unlock(&sv->lock);
			smsg_free(m);
			pthread_mutex_lock(&sv->lock);
		}
		pthread_mutex_unlock(&sv->lock);
		if (left > 0 || cut)
			log_warnx("shadow %s: %lu queued message%s dropped at "
			    "shutdown%s", sv->name, left, left == 1 ? "" : "s",
			    cut ? ", 1 cut off while replayed" : "");
		else
			log_info("shadow %s: every queued message replayed",
			    sv->name);
	}
}
