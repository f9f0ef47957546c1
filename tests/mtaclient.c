/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * mtaclient - raw MTA side of the milter protocol for the tests.
 *
 * Concurrency: per struct mta, no globals.  Ownership: see mtaclient.h.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "mtaclient.h"
#include "xalloc.h"

#define READ_CHUNK	(64 * 1024)

static double
now(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* wait_fd - poll for events until deadline; 0, -ETIMEDOUT or -errno */
static int
wait_fd(int fd, short events, double deadline)
{
	struct pollfd	 p = { .fd = fd, .events = events };
	double		 left;
	int		 n;

	for (;;) {
		left = deadline - now();
		if (left <= 0)
			return -ETIMEDOUT;
		n = poll(&p, 1, (int)(left * 1000) + 1);
		if (n == 1)
			return 0;
		if (n == -1 && errno != EINTR)
			return -errno;
	}
}

int
mta_open(struct mta *m, const char *spec, double timeout)
{
	struct conf_addr	 a;
	char			 why[256];
	int			 rc;

	memset(m, 0, sizeof *m);
	m->fd = -1;
	m->timeout = timeout;
	m->max_data = PROTO_MAX_DATA;
	buf_init(&m->rbuf);
	if (conf_parse_address(spec, &a, why, sizeof why) != 0)
		return -EINVAL;
	m->fd = socket(a.sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (m->fd == -1)
		return -errno;
	/* A blocking connect: the listen backlog of a busy miltermux
	 * makes it wait, which is what an MTA does too. */
	if (connect(m->fd, (const struct sockaddr *)&a.sa, a.salen) == -1) {
		rc = -errno;
		mta_close(m);
		return rc;
	}
	return 0;
}

int
mta_send_raw(struct mta *m, const void *data, size_t len)
{
	const uint8_t	*p = data;
	double		 deadline = now() + m->timeout;
	ssize_t		 n;
	int		 rc;

	if (m->fd == -1)
		return -EBADF;
	while (len > 0) {
		if ((rc = wait_fd(m->fd, POLLOUT, deadline)) != 0)
			return rc;
		/* MSG_NOSIGNAL: a peer that went away is an error code
		 * here, never a SIGPIPE that kills the test. */
		n = send(m->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n == -1) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return errno == EPIPE ? -ECONNRESET : -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* read_packet - one whole packet; data borrowed until the next read */
static int
read_packet(struct mta *m, double deadline, char *cmd, const uint8_t **data,
    size_t *len)
{
	size_t	 used;
	ssize_t	 n;
	uint8_t	*w;
	int	 rc;

	for (;;) {
		rc = codec_frame(buf_head(&m->rbuf), buf_avail(&m->rbuf),
		    m->max_data, cmd, data, len, &used);
		if (rc == 0) {
			/* Consumed now, still readable until the next
			 * buf call that adds (buf.h). */
			buf_consume(&m->rbuf, used);
			m->packets_in++;
			if (*len > m->max_in)
				m->max_in = *len;
			return 0;
		}
		if (rc != -EAGAIN)
			return rc;
		if ((rc = wait_fd(m->fd, POLLIN, deadline)) != 0)
			return rc;
		w = buf_reserve(&m->rbuf, READ_CHUNK);
		n = recv(m->fd, w, READ_CHUNK, MSG_DONTWAIT);
		if (n == 0)
			return -ECONNRESET;
		if (n == -1) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return -errno;
		}
		buf_commit(&m->rbuf, (size_t)n);
	}
}

/* read_reply - packets up to and including the verdict */
static int
read_reply(struct mta *m, bool at_eom, struct mta_result *r)
{
	double			 deadline = now() + m->timeout;
	struct codec_reply	 cr;
	const uint8_t		*data;
	size_t			 len;
	char			 cmd;
	int			 rc;

	for (;;) {
		if ((rc = read_packet(m, deadline, &cmd, &data, &len)) != 0)
			return rc;
		if ((rc = codec_decode_reply(cmd, data, len, &cr)) != 0)
			return rc;
		switch (cr.kind) {
		case REPLY_PROGRESS:
			r->progress++;
			r->progress_after = r->nmods;
			/* Progress restarts the MTA's timer. */
			deadline = now() + m->timeout;
			codec_reply_fini(&cr);
			continue;
		case REPLY_MOD:
			if (!at_eom) {
				codec_reply_fini(&cr);
				return -EPROTO;
			}
			if (r->nmods == r->modcap) {
				r->modcap = r->modcap == 0 ? 8 : 2 * r->modcap;
				r->mods = xreallocarray(r->mods, r->modcap,
				    sizeof *r->mods);
			}
			r->mods[r->nmods++] = cr.mod;
			memset(&cr.mod, 0, sizeof cr.mod);
			codec_reply_fini(&cr);
			continue;
		default:
			r->verdict = cr.verdict;
			r->text = cr.text;
			cr.text = NULL;
			codec_reply_fini(&cr);
			return 0;
		}
	}
}

int
mta_exchange(struct mta *m, const struct buf *b, bool want_reply,
    bool at_eom, struct mta_result *r)
{
	struct mta_result	 scratch;
	int			 rc;

	if (r == NULL)
		r = &scratch;
	memset(r, 0, sizeof *r);
	r->verdict = VERDICT_NONE;
	rc = mta_send_raw(m, buf_head(b), buf_avail(b));
	if (rc == 0 && want_reply)
		rc = read_reply(m, at_eom, r);
	if (r == &scratch || rc != 0)
		mta_result_fini(r);
	return rc;
}

int
mta_negotiate(struct mta *m, uint32_t actions, uint32_t proto)
{
	struct codec_optneg	 o;
	struct buf		 b = BUF_INIT;
	const uint8_t		*data;
	size_t			 len;
	char			 cmd;
	int			 rc;

	codec_put_optneg(&b, PROTO_VERSION, actions, proto);
	rc = mta_send_raw(m, buf_head(&b), buf_avail(&b));
	buf_fini(&b);
	if (rc != 0)
		return rc;
	if ((rc = read_packet(m, now() + m->timeout, &cmd, &data, &len)) != 0)
		return rc;
	if (cmd != MR_OPTNEG)
		return -EPROTO;
	if ((rc = codec_decode_optneg(data, len, &o)) != 0)
		return rc;
	m->actions = o.actions;
	m->proto = o.protocol;
	codec_optneg_fini(&o);
	return 0;
}

int
mta_macros(struct mta *m, char cmd, const char *const *pairs, size_t npairs)
{
	struct buf	 b = BUF_INIT;
	int		 rc;

	codec_put_macros(&b, cmd, pairs, npairs);
	rc = mta_send_raw(m, buf_head(&b), buf_avail(&b));
	buf_fini(&b);
	return rc;
}

/* stage - send b for stage st as the negotiated options allow */
static int
stage(struct mta *m, enum stage st, struct buf *b, struct mta_result *r)
{
	bool	 eom = st == STAGE_EOM;
	int	 rc;

	if (!eom && (m->proto & proto_stage_no[st]) != 0) {
		if (r != NULL) {
			memset(r, 0, sizeof *r);
			r->verdict = VERDICT_NONE;
		}
		buf_fini(b);
		return 0;
	}
	rc = mta_exchange(m, b, eom || (m->proto & proto_stage_nr[st]) == 0,
	    eom, r);
	buf_fini(b);
	return rc;
}

int
mta_connect(struct mta *m, const char *host, const char *addr,
    struct mta_result *r)
{
	struct buf	 b = BUF_INIT;

	codec_put_connect(&b, host, '4', 25000, addr);
	return stage(m, STAGE_CONNECT, &b, r);
}

int
mta_helo(struct mta *m, const char *name, struct mta_result *r)
{
	struct buf	 b = BUF_INIT;

	codec_put_str(&b, MC_HELO, name);
	return stage(m, STAGE_HELO, &b, r);
}

int
mta_mail(struct mta *m, const char *const *argv, size_t argc,
    struct mta_result *r)
{
	struct buf	 b = BUF_INIT;

	codec_put_argv(&b, MC_MAIL, argv, argc);
	return stage(m, STAGE_ENVFROM, &b, r);
}

int
mta_rcpt(struct mta *m, const char *const *argv, size_t argc,
    struct mta_result *r)
{
	struct buf	 b = BUF_INIT;

	codec_put_argv(&b, MC_RCPT, argv, argc);
	return stage(m, STAGE_ENVRCPT, &b, r);
}

int
mta_data(struct mta *m, struct mta_result *r)
{
	struct buf	 b = BUF_INIT;

	codec_put_packet(&b, MC_DATA, NULL, 0);
	return stage(m, STAGE_DATA, &b, r);
}

int
mta_header(struct mta *m, const char *name, const void *value, size_t vlen,
    struct mta_result *r)
{
	struct buf	 b = BUF_INIT;
	uint8_t		*p;
	size_t		 nlen = strlen(name);
	size_t		 n = nlen + 1 + vlen + 1;

	/* By hand rather than codec_put_header(): the value may hold
	 * NUL bytes, which a C string cannot carry. */
	buf_add_u32(&b, (uint32_t)(n + 1));
	buf_add_u8(&b, MC_HEADER);
	p = buf_reserve(&b, n);
	memcpy(p, name, nlen + 1);
	memcpy(p + nlen + 1, value, vlen);
	p[n - 1] = '\0';
	buf_commit(&b, n);
	return stage(m, STAGE_HEADER, &b, r);
}

int
mta_eoh(struct mta *m, struct mta_result *r)
{
	struct buf	 b = BUF_INIT;

	codec_put_packet(&b, MC_EOH, NULL, 0);
	return stage(m, STAGE_EOH, &b, r);
}

int
mta_body(struct mta *m, const void *data, size_t len, struct mta_result *r)
{
	struct buf	 b = BUF_INIT;

	codec_put_packet(&b, MC_BODY, data, len);
	return stage(m, STAGE_BODY, &b, r);
}

int
mta_eom(struct mta *m, struct mta_result *r)
{
	struct buf	 b = BUF_INIT;

	codec_put_packet(&b, MC_BODYEOB, NULL, 0);
	return stage(m, STAGE_EOM, &b, r);
}

int
mta_eom_data(struct mta *m, const void *data, size_t len,
    struct mta_result *r)
{
	struct buf	 b = BUF_INIT;

	codec_put_packet(&b, MC_BODYEOB, data, len);
	return stage(m, STAGE_EOM, &b, r);
}

/* no_reply - send one empty command that gets no reply */
static int
no_reply(struct mta *m, char cmd)
{
	struct buf	 b = BUF_INIT;
	int		 rc;

	codec_put_packet(&b, cmd, NULL, 0);
	rc = mta_send_raw(m, buf_head(&b), buf_avail(&b));
	buf_fini(&b);
	return rc;
}

int
mta_abort(struct mta *m)
{
	return no_reply(m, MC_ABORT);
}

int
mta_quit(struct mta *m)
{
	return no_reply(m, MC_QUIT);
}

int
mta_quit_nc(struct mta *m)
{
	return no_reply(m, MC_QUIT_NC);
}

void
mta_close(struct mta *m)
{
	if (m->fd != -1)
		close(m->fd);
	m->fd = -1;
	buf_fini(&m->rbuf);
}

void
mta_result_fini(struct mta_result *r)
{
	free(r->text);
	r->text = NULL;
	for (size_t i = 0; i < r->nmods; i++)
		codec_mod_fini(&r->mods[i]);
	free(r->mods);
	r->mods = NULL;
	r->nmods = r->modcap = 0;
}
