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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "codec.h"
#include "log.h"
#include "netio.h"
#include "upstream.h"
#include "xalloc.h"

#define READ_CHUNK	(64 * 1024)

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
	struct conf_addr	 addr;
	enum on_failure		 on_failure;
	struct xchg_queue	 queue;
	struct buf		 wbuf;
	struct buf		 rbuf;
	bool			 tcp;		/* not a unix socket */
	bool			 registered;	/* fd in the loop's epoll */
	uint32_t		 events;	/* its interest when registered */
	bool			 connecting;
	bool			 reply_due;	/* current exchange waits */
	bool			 failed;
	int			 fail_err;
	/* Mirror of the filter's libmilter state. */
	bool			 ready;		/* options negotiated */
	bool			 connected;	/* CONNECT stage done */
	bool			 conn_done;	/* finished for the connection */
	bool			 in_tx;		/* between MAIL and EOM */
	int			 skip_stage;	/* -1, or a stage it skipped */
	/* Negotiated. */
	uint32_t		 version;
	uint32_t		 actions;
	uint32_t		 proto;
	char			*symlists[MACRO_STAGE_COUNT];
};

static void	start(struct upstream *);
static void	on_ready(struct pool_io *, uint32_t);

struct upstream *
upstream_new(const struct conf_upstream *cfg, const char *connid,
    struct pool_loop *loop)
{
	struct upstream	*up = xcalloc(1, sizeof *up);

	up->io.fd = -1;
	up->io.ready = on_ready;
	up->loop = loop;
	up->name = xstrdup(cfg->name);
	up->connid = xstrdup(connid);
	up->addr = cfg->addr;
	up->tcp = cfg->addr.sa.ss_family != AF_UNIX;
	up->on_failure = cfg->on_failure;
	up->skip_stage = -1;
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

/* complete - hand the head exchange back to its submitter */
static void
complete(struct upstream *up, struct upstream_xchg *x, int err)
{
	TAILQ_REMOVE(&up->queue, x, entry);
	up->reply_due = false;
	x->error = err;
	x->finished = now();
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

/* fail - poison the upstream: close, log once, fail everything queued */
static void
fail(struct upstream *up, int err, const char *why)
{
	struct upstream_xchg	*x;
	const char		*stage = "idle";

	if (!up->failed) {
		x = TAILQ_FIRST(&up->queue);
		if (x != NULL)
			stage = x->kind == XCHG_OPEN ? "negotiate" :
			    proto_stage_name(x->stage);
		log_warnx("%s: upstream %s: %s: %s%s%s; applying on_failure=%s",
		    up->connid, up->name, stage, why,
		    err != 0 ? ": " : "", err != 0 ? strerror(-err) : "",
		    conf_on_failure_name(up->on_failure));
		up->failed = true;
		up->fail_err = err != 0 ? err : -EPROTO;
	}
	close_fd(up);
	buf_reset(&up->wbuf);
	buf_reset(&up->rbuf);
	while ((x = TAILQ_FIRST(&up->queue)) != NULL)
		complete(up, x, up->fail_err);
}

/* want - set the epoll interest from what the upstream waits for */
static void
want(struct upstream *up)
{
	uint32_t	 ev = EPOLLIN;
	int		 rc;

	if (up->io.fd == -1)
		return;
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

	fd = netio_connect((const struct sockaddr *)&up->addr.sa,
	    up->addr.salen, &inprogress);
	if (fd < 0) {
		fail(up, fd, "connect");
		return -1;
	}
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
			if (start_open(up, x) != 0)
				return;	/* fail() completed everything */
			break;
		}
		p = decide(up, x, &cmd);
		x->verdict = p == PLAN_NONE ? VERDICT_NONE : VERDICT_CONTINUE;
		if (p != PLAN_NONE && x->stage != STAGE_ABORT)
			buf_add(&up->wbuf, buf_head(&x->macros),
			    buf_avail(&x->macros));
		if (cmd)
			buf_add(&up->wbuf, buf_head(&x->cmd),
			    buf_avail(&x->cmd));
		up->reply_due = p == PLAN_WAIT;
		if (buf_avail(&up->wbuf) > 0 &&
		    (rc = netio_flush(up->io.fd, &up->wbuf)) != 0) {
			fail(up, rc, "write");
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
		break;
	case STAGE_UNKNOWN:
		break;
	default:
		if (v != VERDICT_CONTINUE && v != VERDICT_SKIP)
			up->in_tx = false;
		break;
	}
	if (v == VERDICT_SKIP)
		up->skip_stage = (int)s;
}

/* on_optneg - check and record the filter's option reply */
static int
on_optneg(struct upstream *up, struct upstream_xchg *x, char cmd,
    const uint8_t *data, size_t len, const char **why)
{
	struct codec_optneg	 o;
	int			 rc;

	if (cmd != MR_OPTNEG) {
		*why = "option negotiation: unexpected reply";
		return -EPROTO;
	}
	if ((rc = codec_decode_optneg(data, len, &o)) != 0) {
		*why = "option negotiation: malformed reply";
		return rc;
	}
	rc = -EPROTO;
	if (o.version < 2 || o.version > PROTO_VERSION)
		*why = "option negotiation: unsupported protocol version";
	else if ((o.actions & ~x->offer_actions) != 0)
		*why = "option negotiation: asked for actions not offered";
	else if ((o.protocol & ~MP_INTERNAL & ~x->offer_proto) != 0)
		*why = "option negotiation: asked for protocol steps not "
		    "offered";
	else
		rc = 0;
	if (rc != 0) {
		codec_optneg_fini(&o);
		return rc;
	}
	up->version = o.version;
	up->actions = o.actions;
	up->proto = o.protocol & ~MP_INTERNAL;
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

/* on_packet - one reply for the current exchange; 1 when it completed */
static int
on_packet(struct upstream *up, char cmd, const uint8_t *data, size_t len,
    const char **why)
{
	struct upstream_xchg	*x = TAILQ_FIRST(&up->queue);
	struct codec_reply	 r;
	int			 rc;

	if (x == NULL || !up->reply_due) {
		*why = "reply where none was due";
		return -EPROTO;
	}
	if (x->kind == XCHG_OPEN) {
		if ((rc = on_optneg(up, x, cmd, data, len, why)) != 0)
			return rc;
		complete(up, x, 0);
		return 1;
	}
	if ((rc = codec_decode_reply(cmd, data, len, &r)) != 0) {
		*why = "malformed reply";
		return rc;
	}
	switch (r.kind) {
	case REPLY_PROGRESS:
		codec_reply_fini(&r);
		return 0;
	case REPLY_MOD:
		if (x->stage != STAGE_EOM) {
			*why = "modification before end of message";
			codec_reply_fini(&r);
			return -EPROTO;
		}
		if ((up->actions & codec_mod_action(r.mod.kind)) == 0) {
			*why = "modification it did not negotiate";
			codec_reply_fini(&r);
			return -EPROTO;
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
		*why = "verdict not allowed at this stage";
		codec_reply_fini(&r);
		return -EPROTO;
	}
	x->verdict = r.verdict;
	x->text = r.text;
	r.text = NULL;
	codec_reply_fini(&r);
	after_verdict(up, x->stage, x->verdict);
	complete(up, x, 0);
	return 1;
}

/* read_replies - read what is there and handle every whole packet */
static void
read_replies(struct upstream *up)
{
	const uint8_t	*data;
	const char	*why = "read";
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
				fail(up, frc, "bad packet length");
				return;
			}
			frc = on_packet(up, cmd, data, len, &why);
			buf_consume(&up->rbuf, used);
			if (frc < 0) {
				fail(up, frc, why);
				return;
			}
			/* The protocol is strictly one command, one answer:
			 * nothing may follow a final reply before the next
			 * command was sent. */
			if (frc == 1 && buf_avail(&up->rbuf) > 0) {
				fail(up, -EPROTO, "data after the final reply");
				return;
			}
			if (frc == 1) {
				start(up);
				if (up->failed)
					return;
			}
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

/* on_ready - socket event from the loop */
static void
on_ready(struct pool_io *io, uint32_t events)
{
	struct upstream		*up = (struct upstream *)io;
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
			fail(up, rc, "write");
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

/* destroy - QUIT, close and free; queued exchanges are cancelled */
static void
destroy(struct upstream *up)
{
	struct upstream_xchg	*x;
	uint8_t			 quit[CODEC_HDR_LEN] = { 0, 0, 0, 1, MC_QUIT };

	if (up->io.fd != -1 && !up->connecting && !up->failed &&
	    buf_avail(&up->wbuf) == 0)
		(void)!write(up->io.fd, quit, sizeof quit);
	close_fd(up);
	up->failed = true;
	up->fail_err = -ECANCELED;
	while ((x = TAILQ_FIRST(&up->queue)) != NULL)
		complete(up, x, -ECANCELED);
	buf_fini(&up->wbuf);
	buf_fini(&up->rbuf);
	for (int i = 0; i < MACRO_STAGE_COUNT; i++) {
		free(up->symlists[i]);
		up->symlists[i] = NULL;
	}
	free(up->name);
	free(up->connid);
	free(up);
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
