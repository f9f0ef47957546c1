/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * replica - the choice of a pool's replica (see replica.h).
 *
 * Design: a small table searched linearly, like health.c's: one entry
 * per replica label with its sessions in flight, and one per pool name
 * with its round-robin start.  A pool has a handful of replicas and a
 * session chooses once per pool, so a sort of at most CONF_REPLICAS_MAX
 * indices under the lock costs nothing next to a connect.
 *
 * Concurrency: replica_lock protects the table.  Ownership: entries
 * and their keys belong to the table.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "replica.h"
#include "xalloc.h"

struct rentry {
	char		*key;	/* a replica's label, or a pool's name */
	unsigned	 n;	/* replica: in flight; pool: next start */
};

/* replica_lock protects table, ntable and cap. */
static pthread_mutex_t	 replica_lock = PTHREAD_MUTEX_INITIALIZER;
static struct rentry	*table;
static size_t		 ntable, cap;

/* rget - the entry for key, added (0) if new; replica_lock held */
static struct rentry *
rget(const char *key)
{
	for (size_t i = 0; i < ntable; i++)
		if (strcmp(table[i].key, key) == 0)
			return &table[i];
	if (ntable == cap) {
		cap = cap == 0 ? 16 : cap * 2;
		table = xreallocarray(table, cap, sizeof *table);
	}
	table[ntable].key = xstrdup(key);
	table[ntable].n = 0;
	return &table[ntable++];
}

/* counted - whether cfg's sessions are counted: a pool with labels */
static bool
counted(const struct conf_upstream *cfg)
{
	return cfg->pool && cfg->nreplicas > 0 &&
	    cfg->replicas[0].label != NULL;
}

size_t
replica_choose(const struct conf_upstream *cfg, size_t *order)
{
	unsigned	 load[CONF_REPLICAS_MAX];
	size_t		 n = cfg->nreplicas, rank[CONF_REPLICAS_MAX];
	struct rentry	*rr;

	order[0] = 0;
	if (!counted(cfg) || n == 1 || n > CONF_REPLICAS_MAX) {
		for (size_t i = 1; i < n; i++)
			order[i] = i;
		if (counted(cfg)) {
			pthread_mutex_lock(&replica_lock);
			rget(cfg->replicas[0].label)->n++;
			pthread_mutex_unlock(&replica_lock);
		}
		return n == 0 ? 1 : n;
	}
	pthread_mutex_lock(&replica_lock);
	rr = rget(cfg->name);
	for (size_t i = 0; i < n; i++) {
		load[i] = rget(cfg->replicas[i].label)->n;
		/* Distance from the round-robin start breaks ties. */
		rank[i] = (i + n - rr->n % n) % n;
	}
	/* Insertion sort by (load, rank): n is small. */
	for (size_t i = 0; i < n; i++) {
		size_t	 j = i, v = i;

		while (j > 0 && (load[order[j - 1]] > load[v] ||
		    (load[order[j - 1]] == load[v] &&
		    rank[order[j - 1]] > rank[v]))) {
			order[j] = order[j - 1];
			j--;
		}
		order[j] = v;
	}
	rr->n = (unsigned)((order[0] + 1) % n);
	rget(cfg->replicas[order[0]].label)->n++;
	pthread_mutex_unlock(&replica_lock);
	return n;
}

void
replica_move(const struct conf_upstream *cfg, size_t from, size_t to)
{
	struct rentry	*e;

	if (!counted(cfg) || from == to || from >= cfg->nreplicas ||
	    to >= cfg->nreplicas)
		return;
	pthread_mutex_lock(&replica_lock);
	e = rget(cfg->replicas[from].label);
	if (e->n > 0)
		e->n--;
	rget(cfg->replicas[to].label)->n++;
	pthread_mutex_unlock(&replica_lock);
}

void
replica_release(const struct conf_upstream *cfg, size_t r)
{
	struct rentry	*e;

	if (!counted(cfg) || r >= cfg->nreplicas)
		return;
	pthread_mutex_lock(&replica_lock);
	e = rget(cfg->replicas[r].label);
	if (e->n > 0)
		e->n--;
	pthread_mutex_unlock(&replica_lock);
}

unsigned
replica_inflight(const struct conf_upstream *cfg, size_t r)
{
	unsigned	 n = 0;

	if (!counted(cfg) || r >= cfg->nreplicas)
		return 0;
	pthread_mutex_lock(&replica_lock);
	for (size_t i = 0; i < ntable; i++)
		if (strcmp(table[i].key, cfg->replicas[r].label) == 0)
			n = table[i].n;
	pthread_mutex_unlock(&replica_lock);
	return n;
}

void
replica_reset(void)
{
	pthread_mutex_lock(&replica_lock);
	for (size_t i = 0; i < ntable; i++)
		free(table[i].key);
	free(table);
	table = NULL;
	ntable = cap = 0;
	pthread_mutex_unlock(&replica_lock);
}
