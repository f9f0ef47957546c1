/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * connpool - idle upstream connections kept across MTA sessions (see
 * connpool.h for the contract).
 *
 * Design: a list of endpoints, each with its idle connections newest
 * first (the newest is the least likely to have been timed out by the
 * filter, and the oldest age out).  Endpoints stay for the life of the
 * process once seen, so that "not supported" is learnt once; they are
 * few (those of the configuration).
 *
 * Concurrency: connpool_lock protects everything below; sockets are
 * closed, and lines logged, after it is released.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>
#include <unistd.h>

#include "connpool.h"
#include "log.h"
#include "netio.h"
#include "xalloc.h"

/* An EOF this soon after QUIT_NC, before any reuse worked, means the
 * filter closes on QUIT_NC instead of taking it. */
#define CLOSE_ON_QNC	2.0	/* seconds */

struct idle {
	TAILQ_ENTRY(idle)	 entry;
	struct connpool_conn	 c;
	double			 since;		/* when it went idle */
};
TAILQ_HEAD(idle_list, idle);

struct endpoint {
	LIST_ENTRY(endpoint)	 entry;
	char			*name;
	struct conf_addr	 addr;
	struct conf_reuse	 reuse;		/* as last configured */
	bool			 unsupported;	/* reuse stopped for good */
	bool			 confirmed;	/* a reuse once worked */
	unsigned		 nidle;
	struct idle_list	 idle;
};

static pthread_mutex_t			 connpool_lock =
    PTHREAD_MUTEX_INITIALIZER;
static LIST_HEAD(, endpoint)		 endpoints =
    LIST_HEAD_INITIALIZER(endpoints);	/* (connpool_lock) */
/* The configuration last reloaded to (connpool_lock); NULL before the
 * first reload.  Only compared with, never read through: a session
 * still on an older one does not give its connections back. */
static const struct conf		*current;

/* mono - CLOCK_MONOTONIC in seconds */
static double
mono(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void
connpool_conn_fini(struct connpool_conn *c)
{
	if (c->fd != -1)
		close(c->fd);
	c->fd = -1;
	for (int i = 0; i < MACRO_STAGE_COUNT; i++) {
		free(c->symlists[i]);
		c->symlists[i] = NULL;
	}
}

/* same_addr - the same socket address */
static bool
same_addr(const struct conf_addr *a, const struct conf_addr *b)
{
	return a->salen == b->salen && memcmp(&a->sa, &b->sa, a->salen) == 0;
}

/* find - the endpoint of name at addr; created if create (lock held) */
static struct endpoint *
find(const struct conf_upstream *cfg, const struct conf_addr *addr,
    bool create)
{
	struct endpoint	*e;

	LIST_FOREACH(e, &endpoints, entry)
		if (strcmp(e->name, cfg->name) == 0 && same_addr(&e->addr, addr))
			return e;
	if (!create)
		return NULL;
	e = xcalloc(1, sizeof *e);
	e->name = xstrdup(cfg->name);
	e->addr = *addr;
	e->reuse = cfg->reuse;
	TAILQ_INIT(&e->idle);
	LIST_INSERT_HEAD(&endpoints, e, entry);
	return e;
}

/* unlink_idle - take i off e's list (lock held) */
static void
unlink_idle(struct endpoint *e, struct idle *i, struct idle_list *out)
{
	TAILQ_REMOVE(&e->idle, i, entry);
	e->nidle--;
	TAILQ_INSERT_TAIL(out, i, entry);
}

/* drain - move all of e's idle connections to out (lock held) */
static void
drain(struct endpoint *e, struct idle_list *out)
{
	struct idle	*i;

	while ((i = TAILQ_FIRST(&e->idle)) != NULL)
		unlink_idle(e, i, out);
}

/* close_all - close and free what was unlinked (lock not held) */
static void
close_all(struct idle_list *l)
{
	struct idle	*i;

	while ((i = TAILQ_FIRST(l)) != NULL) {
		TAILQ_REMOVE(l, i, entry);
		connpool_conn_fini(&i->c);
		free(i);
	}
}

/*
 * closed_early - i was found closed or written to: if that came right
 * after QUIT_NC and no reuse ever worked at e, the filter does not take
 * QUIT_NC and reuse stops there; true the first time (lock held)
 */
static bool
closed_early(struct endpoint *e, const struct idle *i, double now)
{
	if (e->confirmed || e->unsupported || now - i->since >= CLOSE_ON_QNC)
		return false;
	e->unsupported = true;
	return true;
}

/* log_closed_early - the line for closed_early() */
static void
log_closed_early(const char *name)
{
	log_warnx("upstream %s: closed a connection right after QUIT_NC: "
	    "QUIT_NC not supported; connection reuse off for it", name);
}

/* stop - reuse stops at e (lock held); true the first time */
static bool
stop(struct endpoint *e, struct idle_list *out)
{
	bool	 first = !e->unsupported;

	e->unsupported = true;
	drain(e, out);
	return first;
}

bool
connpool_wants(const struct conf_upstream *cfg, const struct conf_addr *addr,
    uint32_t version)
{
	struct endpoint	*e;
	struct idle_list out = TAILQ_HEAD_INITIALIZER(out);
	bool		 wants, logit = false;

	if (!cfg->reuse.enabled || cfg->reuse.idle_max == 0)
		return false;
	pthread_mutex_lock(&connpool_lock);
	e = find(cfg, addr, true);
	if (version < 6 && !e->unsupported)
		logit = stop(e, &out);
	wants = !e->unsupported;
	pthread_mutex_unlock(&connpool_lock);
	if (logit)
		log_warnx("upstream %s: negotiated milter protocol version "
		    "%u, and QUIT_NC needs 6: connection reuse off for it",
		    cfg->name, version);
	close_all(&out);
	return wants;
}

bool
connpool_put(const struct conf_upstream *cfg, const struct conf_addr *addr,
    struct connpool_conn *c)
{
	struct endpoint	*e;
	struct idle	*i;
	bool		 kept = false;

	if (!cfg->reuse.enabled)
		return false;
	i = xcalloc(1, sizeof *i);
	pthread_mutex_lock(&connpool_lock);
	if (current != NULL && ((uintptr_t)cfg <
	    (uintptr_t)current->upstreams || (uintptr_t)cfg >=
	    (uintptr_t)(current->upstreams + current->nupstreams))) {
		pthread_mutex_unlock(&connpool_lock);
		free(i);
		return false;
	}
	e = find(cfg, addr, true);
	e->reuse = cfg->reuse;
	if (!e->unsupported && e->nidle < e->reuse.idle_max) {
		i->c = *c;
		i->since = mono();
		TAILQ_INSERT_HEAD(&e->idle, i, entry);
		e->nidle++;
		kept = true;
	}
	pthread_mutex_unlock(&connpool_lock);
	if (!kept) {
		free(i);
		return false;
	}
	memset(c, 0, sizeof *c);
	c->fd = -1;
	return true;
}

bool
connpool_take(const struct conf_upstream *cfg, const struct conf_addr *addr,
    uint32_t offer_actions, uint32_t offer_proto, struct connpool_conn *out)
{
	struct endpoint	*e;
	struct idle	*i;
	struct idle_list gone = TAILQ_HEAD_INITIALIZER(gone);
	double		 now = mono();
	bool		 got = false, logit = false;

	if (!cfg->reuse.enabled)
		return false;
	pthread_mutex_lock(&connpool_lock);
	e = find(cfg, addr, false);
	while (e != NULL && !e->unsupported) {
		TAILQ_FOREACH(i, &e->idle, entry)
			if (i->c.offer_actions == offer_actions &&
			    i->c.offer_proto == offer_proto)
				break;
		if (i == NULL)
			break;
		unlink_idle(e, i, &gone);
		/* A filter that closed it, or wrote to it, or one past
		 * its time, is not taken. */
		if (now - i->since > e->reuse.idle_timeout)
			continue;
		if (!netio_is_quiet(i->c.fd)) {
			if (closed_early(e, i, now)) {
				logit = true;
				drain(e, &gone);
			}
			continue;
		}
		TAILQ_REMOVE(&gone, i, entry);
		*out = i->c;
		free(i);
		got = true;
		break;
	}
	pthread_mutex_unlock(&connpool_lock);
	if (logit)
		log_closed_early(cfg->name);
	close_all(&gone);
	return got;
}

void
connpool_confirm(const struct conf_upstream *cfg, const struct conf_addr *addr)
{
	struct endpoint	*e;

	pthread_mutex_lock(&connpool_lock);
	if ((e = find(cfg, addr, false)) != NULL)
		e->confirmed = true;
	pthread_mutex_unlock(&connpool_lock);
}

void
connpool_first_use_failed(const struct conf_upstream *cfg,
    const struct conf_addr *addr, const char *connid, const char *why)
{
	struct endpoint	*e;
	struct idle_list out = TAILQ_HEAD_INITIALIZER(out);
	bool		 logit = false;

	pthread_mutex_lock(&connpool_lock);
	if ((e = find(cfg, addr, false)) != NULL && !e->confirmed)
		logit = stop(e, &out);
	pthread_mutex_unlock(&connpool_lock);
	close_all(&out);
	if (logit)
		log_warnx("%s: upstream %s: a connection reused after QUIT_NC "
		    "failed before its first answer (%s), and none ever "
		    "worked: QUIT_NC not supported; connection reuse off for "
		    "it", connid, cfg->name, why);
	else
		log_trace(TRACE_UPSTREAM, "%s: upstream %s: a reused "
		    "connection was stale (%s); connecting afresh", connid,
		    cfg->name, why);
}

void
connpool_sweep(void)
{
	struct endpoint	*e;
	struct idle	*i, *next;
	struct idle_list gone = TAILQ_HEAD_INITIALIZER(gone);
	double		 now = mono();
	char		*names[8];
	size_t		 nnames = 0;

	pthread_mutex_lock(&connpool_lock);
	LIST_FOREACH(e, &endpoints, entry) {
		for (i = TAILQ_FIRST(&e->idle); i != NULL; i = next) {
			next = TAILQ_NEXT(i, entry);
			if (now - i->since > e->reuse.idle_timeout) {
				unlink_idle(e, i, &gone);
				continue;
			}
			if (netio_is_quiet(i->c.fd))
				continue;
			if (closed_early(e, i, now) && nnames < 8)
				names[nnames++] = xstrdup(e->name);
			unlink_idle(e, i, &gone);
		}
		if (e->unsupported)
			drain(e, &gone);
	}
	pthread_mutex_unlock(&connpool_lock);
	for (size_t k = 0; k < nnames; k++) {
		log_closed_early(names[k]);
		free(names[k]);
	}
	close_all(&gone);
}

void
connpool_reconfigure(const struct conf *c)
{
	struct endpoint			*e;
	const struct conf_upstream	*u;
	struct idle_list		 gone = TAILQ_HEAD_INITIALIZER(gone);

	pthread_mutex_lock(&connpool_lock);
	current = c;
	LIST_FOREACH(e, &endpoints, entry) {
		u = NULL;
		/* Kept while the upstream of that name is still enabled
		 * with this address, as its one address or one of its
		 * replicas (conf.h). */
		for (size_t k = 0; k < c->nupstreams; k++) {
			const struct conf_upstream *cu = &c->upstreams[k];

			if (strcmp(cu->name, e->name) != 0 || !cu->enabled)
				continue;
			if (same_addr(&cu->addr, &e->addr))
				u = cu;
			for (size_t r = 0; r < cu->nreplicas; r++)
				if (same_addr(&cu->replicas[r].addr, &e->addr))
					u = cu;
		}
		if (u == NULL || !u->reuse.enabled) {
			drain(e, &gone);
			if (u != NULL)
				e->reuse = u->reuse;
			else
				e->reuse.enabled = false;
			continue;
		}
		e->reuse = u->reuse;
		while (e->nidle > e->reuse.idle_max)
			unlink_idle(e, TAILQ_LAST(&e->idle, idle_list), &gone);
	}
	pthread_mutex_unlock(&connpool_lock);
	close_all(&gone);
}

unsigned
connpool_idle(void)
{
	struct endpoint	*e;
	unsigned	 n = 0;

	pthread_mutex_lock(&connpool_lock);
	LIST_FOREACH(e, &endpoints, entry)
		n += e->nidle;
	pthread_mutex_unlock(&connpool_lock);
	return n;
}
