/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * recorder - a recording upstream milter, inside the test process.
 *
 * Concurrency: r->lock protects the record (struct rec_stats) and the
 * thread count; each connection thread owns its socket and read buffer.
 * Ownership: see recorder.h.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "codec.h"
#include "proto.h"
#include "recorder.h"
#include "xalloc.h"

#define REC_MAX_DATA	(64u * 1024 * 1024)
#define READ_CHUNK	(256 * 1024)

struct recorder {
	pthread_mutex_t	 lock;
	pthread_cond_t	 cond;		/* an eom arrived */
	int		 lfd;
	pthread_t	 acceptor;
	bool		 keep_headers;
	struct rec_stats st;		/* (lock) */
	size_t		 hdrcap;	/* (lock) */
};

struct rconn {
	struct recorder	*r;
	int		 fd;
};

uint64_t
rec_hash(uint64_t h, const void *data, size_t len)
{
	const uint8_t	*p = data;

	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static int
send_all(int fd, const void *data, size_t len)
{
	const uint8_t	*p = data;
	ssize_t		 n;

	while (len > 0) {
		n = send(fd, p, len, MSG_NOSIGNAL);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* note - record one packet; returns the reply code to send, or 0 */
static char
note(struct recorder *r, char cmd, const uint8_t *data, size_t len)
{
	struct rec_stats	*st = &r->st;
	const char		*nul;
	char			 reply = MR_CONTINUE;

	pthread_mutex_lock(&r->lock);
	st->packets++;
	if (len > st->max_data) {
		st->max_data = len;
		st->max_cmd = cmd;
	}
	if (len > PROTO_MAX_DATA)
		st->over_limit++;
	switch (cmd) {
	case MC_OPTNEG:
		reply = MR_OPTNEG;
		break;
	case MC_MACRO:
	case MC_ABORT:
	case MC_QUIT:
	case MC_QUIT_NC:
		if (cmd == MC_ABORT)
			st->aborts++;
		reply = 0;
		break;
	case MC_HELO:
		free(st->helo);
		st->helo = xmalloc(len + 1);
		memcpy(st->helo, data, len);
		st->helo[len] = '\0';
		st->helo_len = len > 0 ? len - 1 : 0;
		break;
	case MC_RCPT:
		st->rcpts++;
		break;
	case MC_HEADER:
		if (len == 0 || data[len - 1] != '\0' ||
		    (nul = memchr(data, '\0', len)) == NULL ||
		    (size_t)(nul - (const char *)data) + 1 >= len) {
			st->bad++;
			break;
		}
		if (!r->keep_headers) {
			st->nheaders++;
			break;
		}
		if (st->nheaders == r->hdrcap) {
			r->hdrcap = r->hdrcap == 0 ? 64 : 2 * r->hdrcap;
			st->headers = xreallocarray(st->headers, r->hdrcap,
			    sizeof *st->headers);
		}
		{
			struct rec_header *h = &st->headers[st->nheaders++];
			size_t		 nlen = (size_t)(nul -
					    (const char *)data);

			h->name = xstrndup((const char *)data, nlen);
			h->vlen = len - nlen - 2;
			h->value = xmemdup(nul + 1, h->vlen + 1);
		}
		break;
	case MC_BODY:
		st->body_packets++;
		st->body_bytes += len;
		st->body_hash = rec_hash(st->body_hash, data, len);
		break;
	case MC_BODYEOB:
		st->eoms++;
		pthread_cond_broadcast(&r->cond);
		break;
	case MC_CONNECT:
	case MC_MAIL:
	case MC_DATA:
	case MC_EOH:
	case MC_UNKNOWN:
		break;
	default:
		st->bad++;
		break;
	}
	pthread_mutex_unlock(&r->lock);
	return reply;
}

/* serve - one connection from miltermux, until it closes */
static void *
serve(void *arg)
{
	struct rconn	*c = arg;
	struct buf	 in = BUF_INIT, out = BUF_INIT;
	const uint8_t	*data;
	size_t		 len, used;
	ssize_t		 n;
	char		 cmd, reply;
	bool		 quit = false;

	while (!quit) {
		uint8_t	*w = buf_reserve(&in, READ_CHUNK);

		n = recv(c->fd, w, READ_CHUNK, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		buf_commit(&in, (size_t)n);
		while (codec_frame(buf_head(&in), buf_avail(&in),
		    REC_MAX_DATA, &cmd, &data, &len, &used) == 0) {
			reply = note(c->r, cmd, data, len);
			buf_consume(&in, used);
			if (cmd == MC_QUIT)
				quit = true;
			if (reply == 0)
				continue;
			buf_reset(&out);
			if (reply == MR_OPTNEG) {
				const char *const none[MACRO_STAGE_COUNT] = {
					NULL };

				codec_put_optneg_reply(&out, PROTO_VERSION, 0,
				    0, none);
			} else
				codec_put_packet(&out, reply, NULL, 0);
			if (send_all(c->fd, buf_head(&out), buf_avail(&out)))
				quit = true;
		}
	}
	close(c->fd);
	buf_fini(&in);
	buf_fini(&out);
	free(c);
	return NULL;
}

static void *
acceptor(void *arg)
{
	struct recorder	*r = arg;
	pthread_attr_t	 attr;
	pthread_t	 t;
	int		 fd;

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	for (;;) {
		struct rconn	*c;

		fd = accept(r->lfd, NULL, NULL);
		if (fd == -1) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			break;		/* the listener was shut down */
		}
		pthread_mutex_lock(&r->lock);
		r->st.connections++;
		pthread_mutex_unlock(&r->lock);
		c = xcalloc(1, sizeof *c);
		c->r = r;
		c->fd = fd;
		if (pthread_create(&t, &attr, serve, c) != 0) {
			close(fd);
			free(c);
		}
	}
	pthread_attr_destroy(&attr);
	return NULL;
}

struct recorder *
rec_start(const char *path, bool keep_headers)
{
	struct recorder		*r = xcalloc(1, sizeof *r);
	struct sockaddr_un	 sun = { .sun_family = AF_UNIX };
	pthread_condattr_t	 ca;

	if (strlen(path) >= sizeof sun.sun_path)
		goto fail;
	strcpy(sun.sun_path, path);
	unlink(path);
	r->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (r->lfd == -1)
		goto fail;
	if (bind(r->lfd, (struct sockaddr *)&sun, sizeof sun) == -1 ||
	    listen(r->lfd, 512) == -1) {
		close(r->lfd);
		goto fail;
	}
	r->keep_headers = keep_headers;
	r->st.body_hash = REC_HASH0;
	pthread_mutex_init(&r->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->cond, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&r->acceptor, NULL, acceptor, r) != 0) {
		close(r->lfd);
		goto fail;
	}
	return r;

fail:
	free(r);
	return NULL;
}

void
rec_stop(struct recorder *r)
{
	if (r == NULL)
		return;
	shutdown(r->lfd, SHUT_RDWR);
	pthread_join(r->acceptor, NULL);
	close(r->lfd);
	/* Connection threads may still hold r: the test process is about
	 * to end, so the record is left for the exit to reclaim. */
}

int
rec_wait_eoms(struct recorder *r, size_t n, double timeout_s)
{
	struct timespec	 ts;
	int		 rc = 0;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)timeout_s;
	pthread_mutex_lock(&r->lock);
	while (r->st.eoms < n && rc == 0)
		rc = pthread_cond_timedwait(&r->cond, &r->lock, &ts);
	rc = r->st.eoms >= n ? 0 : -ETIMEDOUT;
	pthread_mutex_unlock(&r->lock);
	return rc;
}

void
rec_snapshot(struct recorder *r, struct rec_stats *out)
{
	pthread_mutex_lock(&r->lock);
	*out = r->st;
	out->headers = NULL;
	if (r->st.nheaders > 0 && r->st.headers != NULL) {
		out->headers = xreallocarray(NULL, r->st.nheaders,
		    sizeof *out->headers);
		for (size_t i = 0; i < r->st.nheaders; i++) {
			const struct rec_header *h = &r->st.headers[i];

			out->headers[i].name = xstrdup(h->name);
			out->headers[i].vlen = h->vlen;
			out->headers[i].value = xmemdup(h->value, h->vlen + 1);
		}
	}
	out->helo = r->st.helo != NULL ? xmemdup(r->st.helo,
	    r->st.helo_len + 1) : NULL;
	pthread_mutex_unlock(&r->lock);
}

void
rec_stats_fini(struct rec_stats *s)
{
	for (size_t i = 0; i < s->nheaders && s->headers != NULL; i++) {
		free(s->headers[i].name);
		free(s->headers[i].value);
	}
	free(s->headers);
	free(s->helo);
	memset(s, 0, sizeof *s);
}
