/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * upstream - MTA-side milter client for one upstream, on one pool loop.
 *
 * Design: a queue of exchanges; the head one is "current".  Starting it
 * decides, from the mirrored libmilter state, what to write (macros,
 * command, both or nothing) and whether a reply is due; the socket
 * handler then writes, reads, decodes with codec.c and completes it.  A
 * reply is only ever read for the current exchange, so a byte that
 * arrives when none is due is a protocol error by definition.
 *
 * Concurrency: loop thread only (see upstream.h).  No locks.
 * Ownership: the upstream owns its fd and buffers; exchanges belong to
 * their submitter.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <syslog.h>
#include <unistd.h>

#include <jansson.h>

#include "codec.h"
#include "connpool.h"
#include "health.h"
#include "log.h"
#include "metrics.h"
#include "netio.h"
#include "upstream.h"
#include "xalloc.h"

/* Replies are small: read a little at a time, and give back what a
 * big packet made a buffer grow to once it is drained.  With hundreds
 * of upstream connections open, 64 KiB here and 128 KiB of write buffer
 * after one body packet came to over half a megabyte per MTA session
 * with three upstreams. */
#define READ_CHUNK	4096
#define BUF_KEEP	(16 * 1024)
#define WHY_LEN		320	/* a failure's reason, for the log */
#define SHOW_BYTES	48	/* bytes of a bad packet the log shows */
/* What a reused connection keeps for a fresh one until its first
 * answer; past this it cannot fall back any more. */
#define REPLAY_MAX	(256 * 1024)

TAILQ_HEAD(xchg_queue, upstream_xchg);

enum plan {
	PLAN_NONE = 0,		/* not in that stage: nothing sent */
	PLAN_QUIET,		/* macros at most; no reply due */
	PLAN_WAIT,		/* command sent, reply due */
	PLAN_COUNT
};

struct upstream {
	struct pool_io		 io;
	struct pool_loop	*loop;
	char			*name;
	char			*connid;
	/* Borrowed: the session's pinned configuration outlives us. */
	const struct conf_upstream *cfg;
	/* The MTA's queue id of the current message, for failure lines:
	 * set from the MTA's thread, read on the loop's. */
	pthread_mutex_t		 qlock;
	char			 qid[64];	/* (qlock) "" if none */
	struct conf_addr	 addr;
	enum on_failure		 on_failure;
	/* Before negotiation a failure moves to another replica. */
	bool			 failover;
	enum upstream_mode	 mode;	/* not enforce: nothing is applied */
	unsigned		 max_mods;	/* per message; more fails */
	struct xchg_queue	 queue;
	struct buf		 wbuf;
	struct buf		 rbuf;
	bool			 tcp;		/* not a unix socket */
	bool			 registered;	/* fd in the loop's epoll */
	/* A waiting submitter polls the socket itself (upstream.h): out
	 * of the epoll set, and events the loop still had are dropped. */
	bool			 borrowed;
	uint32_t		 events;	/* its interest when registered */
	bool			 connecting;
	bool			 reply_due;	/* current exchange waits */
	bool			 failed;
	int			 fail_err;
	char			 why[WHY_LEN];	/* reason being built */
	/* The last command written, for a reply that comes after it. */
	int			 last_stage;	/* -1 before the first */
	bool			 last_nr;	/* sent without reply (NR) */
	/* Mirror of the filter's libmilter state. */
	bool			 ready;		/* options negotiated */
	bool			 connected;	/* CONNECT stage done */
	bool			 conn_done;	/* finished for the connection */
	bool			 in_tx;		/* between MAIL and EOM */
	/* An abort was written ahead of the queue: what is queued before
	 * it belongs to the aborted transaction and is not sent. */
	bool			 aborting;
	int			 skip_stage;	/* -1, or a stage it skipped */
	/* Negotiated. */
	uint32_t		 version;
	uint32_t		 actions;
	uint32_t		 proto;
	char			*symlists[MACRO_STAGE_COUNT];
	/* Connection reuse (connpool.h). */
	uint32_t		 offer_actions;	/* what we offered */
	uint32_t		 offer_proto;
	/* libmilter would take QUIT_NC now: the last command was an end
	 * of message answered "continue" or an UNKNOWN not accepted. */
	bool			 qnc_ok;
	/* Taken from the pool and not answered yet: what was written on
	 * it is kept in replay, for a fresh connection if it was stale. */
	bool			 replaying;
	struct buf		 replay;
	bool			 reused;	/* OPEN took an idle one */
	/* Falling back: a fresh connection negotiates; then replay. */
	bool			 refreshing;
	bool			 saved_reply_due;
};

static void	start(struct upstream *);
static const char *stray_why(struct upstream *);
static void	on_ready(struct pool_io *, uint32_t);

struct upstream *
upstream_new(const struct conf_upstream *cfg, size_t r, bool failover,
    const char *connid, struct pool_loop *loop)
{
	struct upstream	*up = xcalloc(1, sizeof *up);
	const struct conf_addr *a = r < cfg->nreplicas ?
	    &cfg->replicas[r].addr : &cfg->addr;

	up->io.fd = -1;
	up->io.ready = on_ready;
	up->loop = loop;
	up->name = xstrdup(health_key(cfg, r));
	up->connid = xstrdup(connid);
	up->cfg = cfg;
	buf_init(&up->replay);
	pthread_mutex_init(&up->qlock, NULL);
	up->addr = *a;
	up->tcp = a->sa.ss_family != AF_UNIX;
	up->failover = failover;
	up->on_failure = cfg->on_failure;
	up->mode = cfg->mode;
	up->max_mods = cfg->max_mods;
	up->skip_stage = -1;
	up->last_stage = -1;
	TAILQ_INIT(&up->queue);
	buf_init(&up->wbuf);
	buf_init(&up->rbuf);
	return up;
}

void
upstream_xchg_init(struct upstream_xchg *x, enum xchg_kind kind,
    enum stage stage)
{
	memset(x, 0, sizeof *x);
	x->kind = kind;
	x->stage = stage;
	buf_init(&x->macros);
	buf_init(&x->cmd);
}

void
upstream_xchg_fini(struct upstream_xchg *x)
{
	buf_fini(&x->macros);
	buf_fini(&x->cmd);
	free(x->text);
	x->text = NULL;
	for (size_t i = 0; i < x->nmods; i++)
		codec_mod_fini(&x->mods[i]);
	free(x->mods);
	x->mods = NULL;
	x->nmods = x->modcap = 0;
}

bool
upstream_is_reused(const struct upstream *up)
{
	return up->reused;
}

const char *
upstream_name(const struct upstream *up)
{
	return up->name;
}

uint32_t
upstream_version(const struct upstream *up)
{
	return up->version;
}

uint32_t
upstream_actions(const struct upstream *up)
{
	return up->actions;
}

uint32_t
upstream_proto(const struct upstream *up)
{
	return up->proto;
}

const char *
upstream_symlist(const struct upstream *up, enum macro_stage m)
{
	return up->symlists[m];
}

struct pool_loop *
upstream_loop(const struct upstream *up)
{
	return up->loop;
}

/* now - CLOCK_MONOTONIC */
static struct timespec
now(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts;
}

/* put - queue bytes for the socket; kept for a fallback while the
 * connection is a reused one not yet answered */
static void
put(struct upstream *up, const void *p, size_t len)
{
	buf_add(&up->wbuf, p, len);
	if (!up->replaying)
		return;
	if (buf_avail(&up->replay) + len > REPLAY_MAX) {
		up->replaying = false;
		buf_fini(&up->replay);
		return;
	}
	buf_add(&up->replay, p, len);
}

/* complete - hand the head exchange back to its submitter */
static void
complete(struct upstream *up, struct upstream_xchg *x, int err)
{
	TAILQ_REMOVE(&up->queue, x, entry);
	up->reply_due = false;
	x->error = err;
	x->finished = now();
	if (x->started.tv_sec == 0 && x->started.tv_nsec == 0)
		x->started = x->finished;	/* failed before its turn */
	if (x->kind == XCHG_STAGE)
		log_trace(TRACE_UPSTREAM, "%s: upstream %s: %s: %s%s%s",
		    up->connid, up->name, proto_stage_name(x->stage),
		    err != 0 ? "failed" : proto_verdict_name(x->verdict),
		    x->text != NULL ? " " : "", x->text != NULL ? x->text : "");
	x->done(x);		/* may free x: don't touch it */
}

/* close_fd - drop the socket from the loop and close it */
static void
close_fd(struct upstream *up)
{
	if (up->io.fd == -1)
		return;
	if (up->registered)
		pool_io_del(up->loop, &up->io);
	up->registered = false;
	close(up->io.fd);
	up->io.fd = -1;
	up->connecting = false;
}

void
upstream_set_queueid(struct upstream *up, const char *qid)
{
	pthread_mutex_lock(&up->qlock);
	snprintf(up->qid, sizeof up->qid, "%s", qid != NULL ? qid : "");
	pthread_mutex_unlock(&up->qlock);
}

/*
 * log_failure - the one line of an upstream's failure: "QID: conn-N:
 * upstream X: stage: why; applying on_failure=..." (no "QID: " before
 * the MTA gave one), or the same as JSON fields
 */
static void
log_failure(struct upstream *up, const char *stage, const char *why,
    int err)
{
	char	 qid[64], pre[80] = "", act[64];
	json_t	*o;
	/* A pool's replica that could not be opened: the session tries
	 * the next one, and on_failure comes only if none is left. */
	bool	 next = up->failover && !up->ready;

	pthread_mutex_lock(&up->qlock);
	memcpy(qid, up->qid, sizeof qid);
	pthread_mutex_unlock(&up->qlock);
	if (qid[0] != '\0')
		snprintf(pre, sizeof pre, "%s: ", qid);
	o = json_pack("{s:s, s:s, s:o, s:s, s:o, s:s}", "event",
	    "upstream_failure", "session", up->connid, "upstream",
	    log_jstr(up->name), "stage", stage, "reason", log_jstr(why),
	    "on_failure",
	    conf_on_failure_name(up->on_failure));
	if (o != NULL && next)
		json_object_set_new(o, "next_replica", json_true());
	if (o != NULL && qid[0] != '\0')
		json_object_set_new(o, "queue_id", log_jstr(qid));
	if (o != NULL && err != 0)
		json_object_set_new(o, "error", json_string(strerror(-err)));
	if (o != NULL && health_local(err))
		json_object_set_new(o, "local", json_true());
	/* A monitor's or shadow's failure changes nothing for the MTA. */
	if (up->mode != MODE_ENFORCE)
		snprintf(act, sizeof act, "ignored (%s)",
		    conf_mode_name(up->mode));
	else if (next)
		snprintf(act, sizeof act, "trying the next replica");
	else
		snprintf(act, sizeof act, "applying on_failure=%s",
		    conf_on_failure_name(up->on_failure));
	if (o != NULL && up->mode != MODE_ENFORCE)
		json_object_set_new(o, "mode", json_string(
		    conf_mode_name(up->mode)));
	log_record(LOG_WARNING, o, "%s%s: upstream %s: %s: %s%s%s%s; %s",
	    pre, up->connid, up->name, stage, why,
	    err != 0 ? ": " : "", err != 0 ? strerror(-err) : "",
	    health_local(err) ? " (on miltermux's side: not counted "
	    "against the upstream)" : "", act);
	json_decref(o);
}

static bool	refresh(struct upstream *, int err, const char *why);

/* fail - poison the upstream: close, log once, fail everything queued */
static void
fail(struct upstream *up, int err, const char *why)
{
	struct upstream_xchg	*x;
	char			 stage[32] = "idle";

	/* A reused connection the filter had closed: connect afresh. */
	if (refresh(up, err, why))
		return;
	if (!up->failed) {
		x = TAILQ_FIRST(&up->queue);
		if (x != NULL)
			snprintf(stage, sizeof stage, "%s",
			    x->kind == XCHG_OPEN ? "negotiate" :
			    proto_stage_name(x->stage));
		else if (up->last_stage >= 0)
			snprintf(stage, sizeof stage, "after %s",
			    proto_stage_name(up->last_stage));
		log_failure(up, stage, why, err);
		up->failed = true;
		up->fail_err = err != 0 ? err : -EPROTO;
		metrics_upstream_failure(up->name, err, why);
	}
	close_fd(up);
	buf_reset(&up->wbuf);
	buf_reset(&up->rbuf);
	while ((x = TAILQ_FIRST(&up->queue)) != NULL)
		complete(up, x, up->fail_err);
}

/* write_why - a failed write, said the way the reader would say it */
static const char *
write_why(int rc)
{
	return rc == -EPIPE || rc == -ECONNRESET ?
	    "connection closed while a command was written" : "write";
}

/* trim - free buffers a big packet grew, once they are drained */
static void
trim(struct upstream *up)
{
	if (buf_avail(&up->wbuf) == 0 && up->wbuf.cap > BUF_KEEP)
		buf_fini(&up->wbuf);
	if (buf_avail(&up->rbuf) == 0 && up->rbuf.cap > BUF_KEEP)
		buf_fini(&up->rbuf);
}

/* want - set the epoll interest from what the upstream waits for */
static void
want(struct upstream *up)
{
	uint32_t	 ev = EPOLLIN;
	int		 rc;

	if (up->io.fd == -1 || up->borrowed)
		return;
	trim(up);
	if (up->connecting || buf_avail(&up->wbuf) > 0)
		ev |= EPOLLOUT;
	/* One epoll_ctl per change, not per event: most exchanges leave
	 * the interest at EPOLLIN. */
	if (up->registered && up->events == ev)
		return;
	rc = up->registered ? pool_io_mod(up->loop, &up->io, ev) :
	    pool_io_add(up->loop, &up->io, ev);
	if (rc != 0) {
		fail(up, rc, "epoll_ctl");
		return;
	}
	up->registered = true;
	up->events = ev;
}

/* decide - what the filter's state allows for this stage */
static enum plan
decide(struct upstream *up, const struct upstream_xchg *x, bool *cmd)
{
	enum stage	 s = x->stage;

	*cmd = false;
	if (!up->ready || up->conn_done)
		return PLAN_NONE;
	if (up->skip_stage != -1 && up->skip_stage != (int)s)
		up->skip_stage = -1;
	if (up->aborting && s != STAGE_ABORT)
		return PLAN_NONE;
	switch (s) {
	case STAGE_CONNECT:
		if (up->connected)
			return PLAN_NONE;
		up->connected = true;
		break;
	case STAGE_HELO:
		/* libmilter resets to HELO from inside a transaction. */
		up->in_tx = false;
		break;
	case STAGE_ENVFROM:
		up->in_tx = true;
		break;
	case STAGE_ENVRCPT:
	case STAGE_DATA:
	case STAGE_HEADER:
	case STAGE_EOH:
	case STAGE_BODY:
	case STAGE_EOM:
		if (!up->in_tx)
			return PLAN_NONE;
		break;
	case STAGE_ABORT:
		if (x->prewritten) {
			up->aborting = false;
			up->in_tx = false;
			return PLAN_NONE;
		}
		if (!up->in_tx)
			return PLAN_NONE;
		up->in_tx = false;
		*cmd = true;
		return PLAN_QUIET;
	case STAGE_UNKNOWN:
		break;
	default:
		return PLAN_NONE;
	}
	if (s == STAGE_EOM) {
		*cmd = true;	/* always sent, whatever NO* says */
		return PLAN_WAIT;
	}
	/* Like the MTAs, send a stage's macros even when the filter
	 * switched the stage itself off (PROTOCOL.md 1.5). */
	if ((up->proto & proto_stage_no[s]) != 0 || up->skip_stage == (int)s)
		return PLAN_QUIET;
	*cmd = true;
	if ((up->proto & proto_stage_nr[s]) != 0)
		return PLAN_QUIET;
	return PLAN_WAIT;
}

/* start_open - begin connecting; the reply handler finishes negotiation */
static int
start_open(struct upstream *up, struct upstream_xchg *x)
{
	int	 fd, inprogress;

	struct connpool_conn	 c;

	up->offer_actions = x->offer_actions;
	up->offer_proto = x->offer_proto;
	if (connpool_take(up->cfg, &up->addr, x->offer_actions,
	    x->offer_proto, &c)) {
		/* Negotiated already: the filter waits for CONNECT. */
		up->io.fd = c.fd;
		up->version = c.version;
		up->actions = c.actions;
		up->proto = c.proto;
		for (int i = 0; i < MACRO_STAGE_COUNT; i++) {
			up->symlists[i] = c.symlists[i];
			c.symlists[i] = NULL;
		}
		up->ready = true;
		up->replaying = true;
		up->reused = true;
		metrics_upstream_connection(up->name, true);
		log_trace(TRACE_UPSTREAM, "%s: upstream %s: reusing the "
		    "connection of %s", up->connid, up->name, c.from);
		return 1;
	}
	fd = netio_connect((const struct sockaddr *)&up->addr.sa,
	    up->addr.salen, &inprogress);
	if (fd < 0) {
		fail(up, fd, "connect");
		return -1;
	}
	metrics_upstream_connection(up->name, false);
	up->io.fd = fd;
	up->connecting = inprogress != 0;
	codec_put_optneg(&up->wbuf, PROTO_VERSION, x->offer_actions,
	    x->offer_proto);
	up->reply_due = true;
	return 0;
}

/* start - start queued exchanges until one has to wait */
static void
start(struct upstream *up)
{
	struct upstream_xchg	*x;
	enum plan		 p;
	bool			 cmd;
	int			 rc;

	while ((x = TAILQ_FIRST(&up->queue)) != NULL) {
		if (up->reply_due || buf_avail(&up->wbuf) > 0)
			break;		/* current one still running */
		x->started = now();
		if (up->failed) {
			complete(up, x, up->fail_err);
			continue;
		}
		if (x->kind == XCHG_OPEN) {
			rc = start_open(up, x);
			if (rc < 0)
				return;	/* fail() completed everything */
			if (rc > 0) {
				complete(up, x, 0);	/* reused */
				continue;
			}
			break;
		}
		/* Bytes waiting now came while no reply was due. */
		if (up->ready && up->io.fd != -1 && !up->connecting &&
		    netio_has_data(up->io.fd)) {
			fail(up, -EPROTO, stray_why(up));
			return;
		}
		p = decide(up, x, &cmd);
		x->verdict = p == PLAN_NONE ? VERDICT_NONE : VERDICT_CONTINUE;
		if (cmd) {
			up->qnc_ok = false;
			up->last_stage = (int)x->stage;
			up->last_nr = p == PLAN_QUIET &&
			    x->stage != STAGE_ABORT;
		}
		if (p != PLAN_NONE && x->stage != STAGE_ABORT)
			put(up, buf_head(&x->macros), buf_avail(&x->macros));
		if (cmd)
			put(up, buf_head(&x->cmd), buf_avail(&x->cmd));
		up->reply_due = p == PLAN_WAIT;
		if (buf_avail(&up->wbuf) > 0 &&
		    (rc = netio_flush(up->io.fd, &up->wbuf)) != 0) {
			fail(up, rc, write_why(rc));
			return;
		}
		if (up->reply_due || buf_avail(&up->wbuf) > 0)
			break;
		complete(up, x, 0);
	}
	want(up);
}

/* verdict_ok - may the filter give verdict v at stage s? */
static bool
verdict_ok(enum stage s, enum verdict *v)
{
	if (*v == VERDICT_SKIP)
		return s == STAGE_BODY || s == STAGE_HEADER ||
		    s == STAGE_ENVRCPT;
	/* Postfix ignores DISCARD where it means nothing (4.1). */
	if (*v == VERDICT_DISCARD && (s == STAGE_CONNECT ||
	    s == STAGE_HELO || s == STAGE_UNKNOWN))
		*v = VERDICT_CONTINUE;
	return true;
}

/* after_verdict - follow libmilter's state change for a stage verdict */
static void
after_verdict(struct upstream *up, enum stage s, enum verdict v)
{
	switch (s) {
	case STAGE_CONNECT:
	case STAGE_HELO:
		if (v != VERDICT_CONTINUE)
			up->conn_done = true;
		break;
	case STAGE_ENVRCPT:
		if (v == VERDICT_ACCEPT || v == VERDICT_DISCARD)
			up->in_tx = false;
		break;
	case STAGE_EOM:
		up->in_tx = false;
		/* libmilter stays in its end-of-message state only after
		 * "continue" (PROTOCOL.md 1.6): QUIT_NC is taken there,
		 * unless an abort went out ahead of this reply (it moves
		 * libmilter out of that state). */
		up->qnc_ok = v == VERDICT_CONTINUE &&
		    up->last_stage == STAGE_EOM;
		break;
	case STAGE_UNKNOWN:
		up->qnc_ok = v != VERDICT_ACCEPT &&
		    up->last_stage == STAGE_UNKNOWN;
		break;
	default:
		if (v != VERDICT_CONTINUE && v != VERDICT_SKIP)
			up->in_tx = false;
		break;
	}
	if (v == VERDICT_SKIP)
		up->skip_stage = (int)s;
}

/* set_why - the reason fail() will log, formatted into up->why */
static const char *
set_why(struct upstream *up, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static const char *
set_why(struct upstream *up, const char *fmt, ...)
{
	va_list	 ap;

	va_start(ap, fmt);
	vsnprintf(up->why, sizeof up->why, fmt, ap);
	va_end(ap);
	return up->why;
}

/*
 * show - up to SHOW_BYTES of a filter's bytes as one safe line for the
 * log: quotes, backslashes and anything not printable ASCII escaped (a
 * CR or LF would split the line, and a '%' is only ever an argument)
 */
static const char *
show(char *dst, size_t size, const uint8_t *p, size_t len)
{
	size_t	 o = 0, i;

	for (i = 0; i < len && i < SHOW_BYTES && o + 5 < size; i++) {
		if (p[i] == '\r')
			o += (size_t)snprintf(dst + o, size - o, "\\r");
		else if (p[i] == '\n')
			o += (size_t)snprintf(dst + o, size - o, "\\n");
		else if (p[i] == '"' || p[i] == '\\')
			o += (size_t)snprintf(dst + o, size - o, "\\%c", p[i]);
		else if (p[i] < 0x20 || p[i] >= 0x7f)
			o += (size_t)snprintf(dst + o, size - o, "\\x%02x",
			    p[i]);
		else
			dst[o++] = (char)p[i];
	}
	dst[o] = '\0';
	if (i < len && o + 3 < size)
		memcpy(dst + o, "...", 4);
	return dst;
}

/*
 * stray_why - why a packet that came when no reply was due is wrong,
 * naming the command it followed; into up->why
 *
 * A filter that negotiated no reply for a stage (SMFIP_NR_*) and
 * replies anyway is caught here if its reply arrives before the next
 * command is written.  XXX: one that arrives later is taken for the
 * answer to that command: the protocol carries no sequence numbers,
 * so neither we nor Postfix (milter8.c) can tell; the reply one too
 * many then shows up at the end of the exchanges, as here.
 */
static const char *
stray_why(struct upstream *up)
{
	const char	*last;

	if (up->last_stage < 0)
		return set_why(up, "%s", up->ready ? "data after the option "
		    "negotiation reply" : "reply where none was due");
	last = proto_stage_name(up->last_stage);
	if (up->last_stage == STAGE_ABORT)
		return set_why(up, "reply to abort, which takes none");
	if (up->last_nr)
		return set_why(up, "reply to %s, for which it negotiated "
		    "no reply", last);
	return set_why(up, "data after the final reply to %s", last);
}

/*
 * Protocol bits an upstream may ask for without their being offered,
 * as Postfix allows (milter8.c takes the mask as it comes): what can be
 * honoured anyway.  The others (HDR_LEADSPC without the MTA's, and bits
 * of no known meaning) are refused with one log line.
 */
#define OPTNEG_TOLERATED	(MP_ALL_NO | MP_ALL_NR | MP_SKIP | MP_RCPT_REJ)

/* on_optneg - check and record the filter's option reply */
static int
on_optneg(struct upstream *up, struct upstream_xchg *x, char cmd,
    const uint8_t *data, size_t len)
{
	struct codec_optneg	 o;
	uint32_t		 extra;
	int			 rc;

	if (cmd != MR_OPTNEG) {
		set_why(up, "option negotiation: reply code 0x%02x instead "
		    "of 'O'", (unsigned char)cmd);
		return -EPROTO;
	}
	if ((rc = codec_decode_optneg(data, len, &o)) != 0) {
		set_why(up, "option negotiation: malformed reply");
		return rc;
	}
	rc = -EPROTO;
	if (o.version < 2 || o.version > PROTO_VERSION)
		set_why(up, "option negotiation: unsupported protocol "
		    "version %u", o.version);
	else if ((extra = o.actions & ~x->offer_actions) != 0)
		set_why(up, "option negotiation: asked for actions 0x%x, "
		    "which were not offered", extra);
	else if ((extra = o.protocol & ~MP_INTERNAL & ~x->offer_proto &
	    ~OPTNEG_TOLERATED) != 0)
		set_why(up, "option negotiation: asked for protocol bits "
		    "0x%x, which were not offered (%s): refused", extra,
		    (extra & ~MP_ALL_V6) != 0 ? "bits of no known meaning" :
		    "header values with their leading space, which the MTA "
		    "does not send");
	else
		rc = 0;
	if (rc != 0) {
		codec_optneg_fini(&o);
		return rc;
	}
	up->version = o.version;
	up->actions = o.actions;
	up->proto = o.protocol & ~MP_INTERNAL;
	/* Like Postfix, which takes the filter's protocol mask as it
	 * comes: steps left out and replies not sent are honoured
	 * whatever was offered (today all are), and RCPT_REJ without the
	 * MTA's is dropped, as no rejected recipient will come. */
	if ((extra = up->proto & ~x->offer_proto) != 0) {
		log_debug("%s: upstream %s: asked for protocol bits 0x%x, "
		    "which were not offered: tolerated", up->connid,
		    up->name, extra);
		up->proto &= ~(uint32_t)(extra & MP_RCPT_REJ);
	}
	/* Older filters know fewer commands (PROTOCOL.md 1.6 rule 7). */
	if (up->version <= 2)
		up->proto |= MP_NOUNKNOWN;
	if (up->version <= 3)
		up->proto |= MP_NODATA;
	for (int i = 0; i < MACRO_STAGE_COUNT; i++) {
		up->symlists[i] = o.symlists[i];
		o.symlists[i] = NULL;
	}
	codec_optneg_fini(&o);
	up->ready = true;
	return 0;
}

/* same_str - equal strings, NULL only equal to NULL */
static bool
same_str(const char *a, const char *b)
{
	return a == NULL || b == NULL ? a == b : strcmp(a, b) == 0;
}

/*
 * on_refresh - the option reply on the fresh connection that replaces a
 * stale reused one: the same options as before (else the MTA side,
 * negotiated on them, could not be served), then what was written on
 * the stale one goes again.  0: handled, no exchange completes.
 */
static int
on_refresh(struct upstream *up, char cmd, const uint8_t *data, size_t len)
{
	struct upstream_xchg	 tmp;
	char			*old[MACRO_STAGE_COUNT];
	uint32_t		 v = up->version, a = up->actions;
	uint32_t		 p = up->proto;
	bool			 same;
	int			 rc;

	memset(&tmp, 0, sizeof tmp);
	tmp.offer_actions = up->offer_actions;
	tmp.offer_proto = up->offer_proto;
	memcpy(old, up->symlists, sizeof old);
	memset(up->symlists, 0, sizeof up->symlists);
	rc = on_optneg(up, &tmp, cmd, data, len);
	same = rc == 0 && v == up->version && a == up->actions &&
	    p == up->proto;
	for (int i = 0; i < MACRO_STAGE_COUNT; i++) {
		if (rc == 0 && !same_str(old[i], up->symlists[i]))
			same = false;
		free(old[i]);
	}
	if (rc != 0)
		return rc;
	if (!same) {
		set_why(up, "options negotiated afresh after a stale reused "
		    "connection differ from the ones the MTA was given");
		return -EPROTO;
	}
	up->refreshing = false;
	up->reply_due = up->saved_reply_due;
	buf_add(&up->wbuf, buf_head(&up->replay), buf_avail(&up->replay));
	buf_fini(&up->replay);
	if (buf_avail(&up->wbuf) > 0 &&
	    (rc = netio_flush(up->io.fd, &up->wbuf)) != 0) {
		set_why(up, "%s", write_why(rc));
		return rc;
	}
	return 0;
}

/*
 * refresh - fall back from a reused connection that the filter had
 * closed before it answered anything on it: connect and negotiate
 * afresh; on_refresh() then writes again what the stale one got.  True
 * when under way (the failure is not one).
 */
static bool
refresh(struct upstream *up, int err, const char *why)
{
	int	 fd, inprogress;

	if (!up->replaying || up->refreshing || up->failed)
		return false;
	up->replaying = false;
	if (!(err == -EPIPE || err == -ECONNRESET || (err == 0 &&
	    strncmp(why, "connection closed", 17) == 0))) {
		connpool_first_use_failed(up->cfg, &up->addr, up->connid, why);
		buf_fini(&up->replay);
		return false;
	}
	connpool_first_use_failed(up->cfg, &up->addr, up->connid, why);
	close_fd(up);
	buf_reset(&up->wbuf);
	buf_reset(&up->rbuf);
	fd = netio_connect((const struct sockaddr *)&up->addr.sa,
	    up->addr.salen, &inprogress);
	if (fd < 0) {
		buf_fini(&up->replay);
		return false;
	}
	metrics_upstream_connection(up->name, false);
	up->io.fd = fd;
	up->connecting = inprogress != 0;
	codec_put_optneg(&up->wbuf, PROTO_VERSION, up->offer_actions,
	    up->offer_proto);
	up->saved_reply_due = up->reply_due;
	up->reply_due = true;
	up->refreshing = true;
	want(up);
	return true;
}

/* bad_reply - why codec_decode_reply refused a packet */
static void
bad_reply(struct upstream *up, char cmd, const uint8_t *data, size_t len)
{
	char	 shown[4 * SHOW_BYTES + 8];

	if (!codec_is_reply_code(cmd))
		set_why(up, "unknown reply code 0x%02x", (unsigned char)cmd);
	else if (cmd == MR_REPLYCODE)
		set_why(up, "malformed reply text \"%s\" (CR, LF or NUL "
		    "inside, or not a 4xx/5xx reply with an enhanced code of "
		    "its class)",
		    show(shown, sizeof shown, data,
		    len > 0 && data[len - 1] == '\0' ? len - 1 : len));
	else
		set_why(up, "malformed '%c' reply (%zu data bytes)", cmd, len);
}

/*
 * on_packet - one reply for the current exchange; 1 when it was the
 * final one (recorded in the exchange, which the caller completes)
 */
static int
on_packet(struct upstream *up, char cmd, const uint8_t *data, size_t len)
{
	struct upstream_xchg	*x = TAILQ_FIRST(&up->queue);
	struct codec_reply	 r;
	int			 rc;

	if (up->refreshing && up->reply_due)
		return on_refresh(up, cmd, data, len);
	if (x == NULL || !up->reply_due) {
		stray_why(up);
		return -EPROTO;
	}
	if (up->replaying) {
		/* The filter took QUIT_NC: it answers on this connection. */
		up->replaying = false;
		buf_fini(&up->replay);
		connpool_confirm(up->cfg, &up->addr);
	}
	if (x->kind == XCHG_OPEN) {
		if ((rc = on_optneg(up, x, cmd, data, len)) != 0)
			return rc;
		return 1;
	}
	if ((rc = codec_decode_reply(cmd, data, len, &r)) != 0) {
		bad_reply(up, cmd, data, len);
		return rc;
	}
	switch (r.kind) {
	case REPLY_PROGRESS:
		x->nprogress++;
		codec_reply_fini(&r);
		return 0;
	case REPLY_MOD:
		if (x->stage != STAGE_EOM) {
			set_why(up, "modification (%s) before end of message",
			    codec_mod_kind_name(r.mod.kind));
			codec_reply_fini(&r);
			return -EPROTO;
		}
		if ((up->actions & codec_mod_action(r.mod.kind)) == 0) {
			set_why(up, "modification (%s) it did not negotiate",
			    codec_mod_kind_name(r.mod.kind));
			codec_reply_fini(&r);
			return -EPROTO;
		}
		/* Each request costs memory here and time in the merge:
		 * a filter that floods them has failed, and is stopped
		 * before it costs more. */
		if (x->nmods >= up->max_mods) {
			set_why(up, "more than %u modifications "
			    "(max_modifications)", up->max_mods);
			codec_reply_fini(&r);
			return -EMSGSIZE;
		}
		if (x->nmods == x->modcap) {
			x->modcap = x->modcap == 0 ? 8 : x->modcap * 2;
			x->mods = xreallocarray(x->mods, x->modcap,
			    sizeof *x->mods);
		}
		x->mods[x->nmods++] = r.mod;	/* takes the strings */
		memset(&r.mod, 0, sizeof r.mod);
		codec_reply_fini(&r);
		return 0;
	default:
		break;
	}
	if (!verdict_ok(x->stage, &r.verdict)) {
		set_why(up, "verdict %s not allowed at this stage",
		    proto_verdict_name(r.verdict));
		codec_reply_fini(&r);
		return -EPROTO;
	}
	x->verdict = r.verdict;
	x->text = r.text;
	r.text = NULL;
	codec_reply_fini(&r);
	after_verdict(up, x->stage, x->verdict);
	return 1;
}

/* bad_frame - why codec_frame refused the packet header at p */
static void
bad_frame(struct upstream *up, const uint8_t *p, size_t avail, size_t field)
{
	char	 shown[4 * CODEC_HDR_LEN + 8];

	show(shown, sizeof shown, p, avail < CODEC_HDR_LEN ? avail :
	    CODEC_HDR_LEN);
	if (field == 0)
		set_why(up, "bad packet \"%s\": length field 0", shown);
	else
		set_why(up, "bad packet \"%s\": length field %zu over the "
		    "limit of %u", shown, field, PROTO_MAX_DATA + 1);
}

/* read_replies - read what is there and handle every whole packet */
static void
read_replies(struct upstream *up)
{
	const uint8_t	*data;
	size_t		 len, used;
	char		 cmd;
	int		 rc, frc;

	for (;;) {
		rc = netio_fill(up->io.fd, &up->rbuf, READ_CHUNK);
		if (rc < 0 && rc != -ECONNRESET) {
			fail(up, rc, "read");
			return;
		}
		while (buf_avail(&up->rbuf) > 0) {
			frc = codec_frame(buf_head(&up->rbuf),
			    buf_avail(&up->rbuf), PROTO_MAX_DATA, &cmd, &data,
			    &len, &used);
			if (frc == -EAGAIN)
				break;
			if (frc != 0) {
				bad_frame(up, buf_head(&up->rbuf),
				    buf_avail(&up->rbuf), len);
				fail(up, frc, up->why);
				return;
			}
			frc = on_packet(up, cmd, data, len);
			buf_consume(&up->rbuf, used);
			if (frc < 0) {
				fail(up, frc, up->why);
				return;
			}
			if (frc == 0 && !up->reply_due) {
				/* Fallen back and replayed: go on. */
				start(up);
				if (up->failed)
					return;
			}
			if (frc == 0)
				continue;
			/* The protocol is strictly one command, one answer:
			 * nothing may follow a final reply before the next
			 * command was sent.  Judged before the exchange
			 * completes, so that its stage gets the failure. */
			if (buf_avail(&up->rbuf) > 0) {
				fail(up, -EPROTO, stray_why(up));
				return;
			}
			complete(up, TAILQ_FIRST(&up->queue), 0);
			start(up);
			if (up->failed)
				return;
		}
		if (rc == -ECONNRESET) {
			if (buf_avail(&up->rbuf) > 0)
				fail(up, 0, "connection closed inside a reply");
			else if (up->reply_due)
				fail(up, 0, "connection closed before the reply");
			else if (up->conn_done)
				close_fd(up);	/* finished with us anyway */
			else
				fail(up, 0, "connection closed");
			return;
		}
		/*
		 * Data came but the answer is not complete (modifications
		 * before the verdict, or a packet cut in two): a libmilter
		 * filter writes each packet separately, and with Nagle's
		 * algorithm on its side the next one waits for our ACK, which
		 * the kernel would delay by 40 ms.  Acknowledge now.
		 */
		if (rc > 0 && up->reply_due && up->tcp)
			netio_quickack(up->io.fd);
		/* A short read emptied the socket: spare the read that
		 * would only say EAGAIN. */
		if (rc == 0 || (size_t)rc < READ_CHUNK)
			return;
	}
}

/* ready - the socket is ready for events (EPOLLIN, EPOLLOUT, ...) */
static void
ready(struct upstream *up, uint32_t events)
{
	struct upstream_xchg	*x;
	int			 rc;

	if (up->connecting) {
		if ((rc = netio_connect_result(up->io.fd)) != 0) {
			fail(up, rc, "connect");
			return;
		}
		up->connecting = false;
	}
	if ((events & EPOLLOUT) != 0 && buf_avail(&up->wbuf) > 0) {
		if ((rc = netio_flush(up->io.fd, &up->wbuf)) != 0) {
			fail(up, rc, write_why(rc));
			return;
		}
		x = TAILQ_FIRST(&up->queue);
		if (buf_avail(&up->wbuf) == 0 && !up->reply_due &&
		    x != NULL) {
			complete(up, x, 0);
			start(up);
			if (up->failed)
				return;
		}
	}
	if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0) {
		read_replies(up);
		if (up->failed)
			return;
	}
	want(up);
}

/* on_ready - socket event from the loop */
static void
on_ready(struct pool_io *io, uint32_t events)
{
	struct upstream	*up = (struct upstream *)io;

	/* Collected before the socket was borrowed: its borrower reads
	 * it now. */
	if (up->borrowed)
		return;
	ready(up, events);
}

int
upstream_borrow(struct upstream *up)
{
	if (up->io.fd == -1 || up->failed)
		return -1;
	if (up->registered)
		pool_io_del(up->loop, &up->io);
	up->registered = false;
	up->borrowed = true;
	return up->io.fd;
}

short
upstream_poll_events(const struct upstream *up)
{
	if (up->io.fd == -1)
		return 0;
	return (short)(POLLIN | (up->connecting ||
	    buf_avail(&up->wbuf) > 0 ? POLLOUT : 0));
}

int
upstream_handle(struct upstream *up, short revents)
{
	uint32_t	 ev = 0;

	if ((revents & POLLIN) != 0)
		ev |= EPOLLIN;
	if ((revents & POLLOUT) != 0)
		ev |= EPOLLOUT;
	if ((revents & POLLERR) != 0)
		ev |= EPOLLERR;
	if ((revents & POLLHUP) != 0)
		ev |= EPOLLHUP;
	if (up->io.fd != -1 && ev != 0)
		ready(up, ev);
	return up->io.fd;
}

void
upstream_unborrow(struct upstream *up)
{
	up->borrowed = false;
	want(up);
}

void
upstream_hold(struct upstream *up)
{
	up->borrowed = true;
}

bool
upstream_held(const struct upstream *up)
{
	return up->borrowed;
}

bool
upstream_idle(const struct upstream *up)
{
	/* A failed upstream's socket is closed: nothing to watch. */
	return up->io.fd == -1 || (TAILQ_EMPTY(&up->queue) &&
	    !up->reply_due && !up->connecting && buf_avail(&up->wbuf) == 0);
}

/*
 * keep - end the filter's session with QUIT_NC and give the connection
 * to the pool, if the session ended cleanly in a state where libmilter
 * takes QUIT_NC; true when the pool has it
 */
static bool
keep(struct upstream *up)
{
	uint8_t			 qnc[CODEC_HDR_LEN] = { 0, 0, 0, 1,
				    MC_QUIT_NC };
	struct connpool_conn	 c;

	/* Nothing owed either way, no abort, no failure, nothing read. */
	if (!up->cfg->reuse.enabled || !up->ready || up->failed ||
	    up->io.fd == -1 || up->connecting || up->refreshing ||
	    up->reply_due || up->aborting || !up->qnc_ok || up->conn_done ||
	    !TAILQ_EMPTY(&up->queue) || buf_avail(&up->wbuf) > 0 ||
	    buf_avail(&up->rbuf) > 0 || !netio_is_quiet(up->io.fd) ||
	    !connpool_wants(up->cfg, &up->addr, up->version))
		return false;
	if (write(up->io.fd, qnc, sizeof qnc) != (ssize_t)sizeof qnc)
		return false;
	if (up->registered)
		pool_io_del(up->loop, &up->io);
	up->registered = false;
	memset(&c, 0, sizeof c);
	c.fd = up->io.fd;
	c.offer_actions = up->offer_actions;
	c.offer_proto = up->offer_proto;
	c.version = up->version;
	c.actions = up->actions;
	c.proto = up->proto;
	memcpy(c.symlists, up->symlists, sizeof c.symlists);
	memset(up->symlists, 0, sizeof up->symlists);
	snprintf(c.from, sizeof c.from, "%s", up->connid);
	log_trace(TRACE_UPSTREAM, "%s: upstream %s: QUIT_NC; connection "
	    "kept", up->connid, up->name);
	up->io.fd = -1;
	if (!connpool_put(up->cfg, &up->addr, &c))
		connpool_conn_fini(&c);	/* full: closed */
	return true;
}

/* destroy - QUIT (or QUIT_NC and keep), close and free; queued
 * exchanges are cancelled */
static void
destroy(struct upstream *up)
{
	struct upstream_xchg	*x;
	uint8_t			 quit[CODEC_HDR_LEN] = { 0, 0, 0, 1, MC_QUIT };

	if (keep(up))
		;	/* the pool has the socket */
	else if (up->io.fd != -1 && !up->connecting && !up->failed &&
	    buf_avail(&up->wbuf) == 0)
		(void)!write(up->io.fd, quit, sizeof quit);
	close_fd(up);
	up->failed = true;
	up->fail_err = -ECANCELED;
	while ((x = TAILQ_FIRST(&up->queue)) != NULL)
		complete(up, x, -ECANCELED);
	buf_fini(&up->wbuf);
	buf_fini(&up->rbuf);
	buf_fini(&up->replay);
	for (int i = 0; i < MACRO_STAGE_COUNT; i++) {
		free(up->symlists[i]);
		up->symlists[i] = NULL;
	}
	free(up->name);
	free(up->connid);
	pthread_mutex_destroy(&up->qlock);
	free(up);
}

/*
 * abort_ahead - write an abort now, while the filter still owes the
 * reply to an earlier command of the transaction: libmilter reads it
 * right after that reply (an abort is taken in any state and answered
 * by nothing), so the filter learns that the transaction is over as
 * soon as it is, not after everything queued for it was answered.
 * What is queued before the abort is not sent any more (decide()).
 */
static void
abort_ahead(struct upstream *up, struct upstream_xchg *x)
{
	uint8_t	 pkt[CODEC_HDR_LEN] = { 0, 0, 0, 1, MC_ABORT };
	int	 rc;

	if (x->kind != XCHG_STAGE || x->stage != STAGE_ABORT ||
	    TAILQ_EMPTY(&up->queue) || !up->reply_due || !up->in_tx ||
	    !up->ready || up->failed || up->io.fd == -1 || up->connecting ||
	    up->aborting || up->refreshing)
		return;
	put(up, pkt, sizeof pkt);
	up->qnc_ok = false;
	x->prewritten = true;
	up->aborting = true;
	up->last_stage = STAGE_ABORT;
	if ((rc = netio_flush(up->io.fd, &up->wbuf)) != 0) {
		fail(up, rc, write_why(rc));
		return;
	}
	want(up);
}

/* run_xchg - the exchange arrives on the loop thread */
static void
run_xchg(struct pool_job *job)
{
	struct upstream_xchg	*x = (struct upstream_xchg *)job;
	struct upstream		*up = x->up;

	if (x->kind == XCHG_CLOSE) {
		destroy(up);
		x->finished = now();
		x->done(x);
		return;
	}
	abort_ahead(up, x);
	TAILQ_INSERT_TAIL(&up->queue, x, entry);
	if (TAILQ_FIRST(&up->queue) == x)
		start(up);
}

void
upstream_submit(struct upstream *up, struct upstream_xchg *x)
{
	x->up = up;
	x->job.run = run_xchg;
	/* Closing frees the upstream, so it waits for the loop's turn
	 * (pool_run()'s rule); anything else may start at once. */
	if (x->kind == XCHG_CLOSE)
		pool_post(up->loop, &x->job);
	else
		pool_run(up->loop, &x->job);
}

void
upstream_expire(struct upstream *up, int err)
{
	if (!TAILQ_EMPTY(&up->queue))
		fail(up, err, "no answer in time");
}
