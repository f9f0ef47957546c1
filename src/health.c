/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * health - shared up/down state of the upstreams (see health.h).
 *
 * Design: a small table, one entry per replica label (conf.h: the
 * upstream's name, or "NAME[ADDRESS]" in a pool) ever asked about,
 * searched linearly: a proxy has a handful of upstreams, and each
 * session asks once per upstream.  Each entry is a three-state machine:
 *
 *   UP --(failures in a row)--> DOWN --(retry_after passed, a session
 *   asks)--> PROBING --(probe ok, or it negotiated)--> UP
 *                              \--(probe failed)--> DOWN
 *                              \--(probe failed locally)--> DOWN, due
 *
 * Reports from sessions that are not the probe are ignored while the
 * upstream is down or probed: they started before it was marked down,
 * so they tell nothing new, and the probe alone decides.
 *
 * A probe that negotiated brings the upstream back at once, while its
 * session may stay idle for minutes; the count of failures is left as
 * it was, so that one more failure before any success marks it down
 * again, as the probe's failure would have.  A failure of our own (out
 * of descriptors or memory: health_local) tells nothing about the
 * upstream: it is not counted, and a probe that met one hands the
 * probe on to the next session.
 *
 * Concurrency: health_lock protects the table and next_probe; log lines
 * are written after it is released.  Ownership: entries and their names
 * belong to the table.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "health.h"
#include "log.h"
#include "xalloc.h"

enum hstate {
	HSTATE_UP = 0,
	HSTATE_DOWN,
	HSTATE_PROBING,
	HSTATE_COUNT
};

struct entry {
	char		*name;
	enum hstate	 state;
	unsigned	 fails;		/* in a row */
	double		 until;		/* DOWN: monotonic seconds */
	uint64_t	 probe;		/* PROBING: the prober's token */
};

static const char *const use_names[HEALTH_USE_COUNT] = {
	[HEALTH_USE]	= "use",
	[HEALTH_PROBE]	= "probe",
	[HEALTH_SKIP]	= "skip",
};

/* health_lock protects table, ntable, cap and next_probe. */
static pthread_mutex_t	 health_lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry	*table;
static size_t		 ntable, cap;
static uint64_t		 next_probe;

static double
mono(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

const char *
health_key(const struct conf_upstream *cfg, size_t r)
{
	return r < cfg->nreplicas && cfg->replicas[r].label != NULL ?
	    cfg->replicas[r].label : cfg->name;
}

/* entry_get - the entry for name, added (up) if new; health_lock held */
static struct entry *
entry_get(const char *name)
{
	for (size_t i = 0; i < ntable; i++)
		if (strcmp(table[i].name, name) == 0)
			return &table[i];
	if (ntable == cap) {
		cap = cap == 0 ? 8 : cap * 2;
		table = xreallocarray(table, cap, sizeof *table);
	}
	memset(&table[ntable], 0, sizeof table[ntable]);
	table[ntable].name = xstrdup(name);
	table[ntable].state = HSTATE_UP;
	return &table[ntable++];
}

enum health_use
health_check(const struct conf_upstream *cfg, size_t r, uint64_t *probe)
{
	const char	*key = health_key(cfg, r);
	struct entry	*e;
	enum health_use	 use = HEALTH_USE;

	*probe = 0;
	pthread_mutex_lock(&health_lock);
	e = entry_get(key);
	switch (e->state) {
	case HSTATE_DOWN:
		if (mono() < e->until) {
			use = HEALTH_SKIP;
			break;
		}
		e->state = HSTATE_PROBING;
		e->probe = *probe = ++next_probe;
		use = HEALTH_PROBE;
		break;
	case HSTATE_PROBING:
		use = HEALTH_SKIP;
		break;
	default:
		break;
	}
	pthread_mutex_unlock(&health_lock);
	if (use == HEALTH_PROBE)
		log_info("upstream %s: probing", key);
	return use;
}

void
health_report(const struct conf_upstream *cfg, size_t r, uint64_t probe,
    bool ok)
{
	const char	*key = health_key(cfg, r);
	struct entry	*e;
	enum hstate	 to = HSTATE_COUNT;	/* no change */
	unsigned	 fails;

	pthread_mutex_lock(&health_lock);
	e = entry_get(key);
	switch (e->state) {
	case HSTATE_UP:
		if (ok)
			e->fails = 0;
		else if (++e->fails >= cfg->failures)
			to = HSTATE_DOWN;
		break;
	case HSTATE_PROBING:
		if (probe == 0 || probe != e->probe)
			break;
		if (ok) {
			e->fails = 0;
			to = HSTATE_UP;
		} else {
			e->fails++;
			to = HSTATE_DOWN;
		}
		break;
	default:
		break;
	}
	if (to == HSTATE_DOWN)
		e->until = mono() + cfg->retry_after;
	if (to != HSTATE_COUNT) {
		e->state = to;
		e->probe = 0;
	}
	fails = e->fails;
	pthread_mutex_unlock(&health_lock);
	if (to == HSTATE_DOWN)
		log_warnx("upstream %s: down after %u consecutive failure%s; "
		    "retrying in %g s", key, fails, fails == 1 ? "" : "s",
		    cfg->retry_after);
	else if (to == HSTATE_UP)
		log_info("upstream %s: back up", key);
}

bool
health_local(int err)
{
	if (err < 0)
		err = -err;
	return err == EMFILE || err == ENFILE || err == ENOMEM ||
	    err == ENOBUFS;
}

void
health_failure(const struct conf_upstream *cfg, size_t r, uint64_t probe,
    int err)
{
	const char	*key = health_key(cfg, r);
	struct entry	*e;

	if (!health_local(err)) {
		health_report(cfg, r, probe, false);
		return;
	}
	pthread_mutex_lock(&health_lock);
	e = entry_get(key);
	if (e->state == HSTATE_PROBING && probe != 0 && probe == e->probe) {
		/* Not the upstream's fault: the next session probes. */
		e->state = HSTATE_DOWN;
		e->until = 0;
		e->probe = 0;
	}
	pthread_mutex_unlock(&health_lock);
}

void
health_alive(const struct conf_upstream *cfg, size_t r, uint64_t probe)
{
	const char	*key = health_key(cfg, r);
	struct entry	*e;
	bool		 up = false;

	if (probe == 0)
		return;
	pthread_mutex_lock(&health_lock);
	e = entry_get(key);
	if (e->state == HSTATE_PROBING && probe == e->probe) {
		e->state = HSTATE_UP;
		e->probe = 0;
		up = true;
	}
	pthread_mutex_unlock(&health_lock);
	if (up)
		log_info("upstream %s: back up", key);
}

void
health_reset(void)
{
	pthread_mutex_lock(&health_lock);
	for (size_t i = 0; i < ntable; i++) {
		free(table[i].name);
		table[i].name = NULL;
	}
	free(table);
	table = NULL;
	ntable = cap = 0;
	pthread_mutex_unlock(&health_lock);
}

static const char *const state_names[HSTATE_COUNT] = {
	[HSTATE_UP]	 = "up",
	[HSTATE_DOWN]	 = "down",
	[HSTATE_PROBING] = "probing",
};

void
health_get(const char *name, struct health_info *hi)
{
	struct entry	*e = NULL;

	memset(hi, 0, sizeof *hi);
	hi->up = true;
	hi->state = state_names[HSTATE_UP];
	pthread_mutex_lock(&health_lock);
	for (size_t i = 0; i < ntable; i++)
		if (strcmp(table[i].name, name) == 0)
			e = &table[i];
	if (e != NULL) {
		hi->up = e->state == HSTATE_UP;
		hi->state = state_names[e->state];
		hi->fails = e->fails;
		if (e->state == HSTATE_DOWN && e->until > mono())
			hi->retry_in = e->until - mono();
	}
	pthread_mutex_unlock(&health_lock);
}

void
health_get_upstream(const struct conf_upstream *cfg, struct health_info *hi)
{
	struct health_info	 one;
	size_t			 n = cfg->nreplicas == 0 ? 1 : cfg->nreplicas;
	bool			 probing = false;

	health_get(health_key(cfg, 0), hi);
	if (n == 1)
		return;
	/* A pool is up while one replica is; its retry is the soonest. */
	for (size_t r = 0; r < n; r++) {
		health_get(health_key(cfg, r), &one);
		if (r == 0 || one.retry_in < hi->retry_in)
			hi->retry_in = one.retry_in;
		if (one.up) {
			hi->up = true;
			hi->retry_in = 0;
			hi->fails = 0;
			hi->state = one.state;
			return;
		}
		if (strcmp(one.state, "probing") == 0)
			probing = true;
		if (r == 0 || one.fails < hi->fails)
			hi->fails = one.fails;
	}
	hi->up = false;
	hi->state = state_names[probing ? HSTATE_PROBING : HSTATE_DOWN];
}

const char *
health_use_name(enum health_use u)
{
	return (unsigned)u < HEALTH_USE_COUNT ? use_names[u] : "?";
}
