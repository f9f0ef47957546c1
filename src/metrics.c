/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * metrics - counters and their rendering (see metrics.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "conf.h"
#include "health.h"
#include "log.h"
#include "metrics.h"
#include "replica.h"
#include "xalloc.h"

/* Upper bounds of the stage histogram, in seconds (+Inf is implied):
 * from a fast local milter's answer to the content timeout. */
static const double bounds[] = {
	0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
	60
};
#define NBOUNDS	(sizeof bounds / sizeof bounds[0])
/* The stages fanout_event times: every MTA command with an answer. */
#define NSTAGES	(STAGE_EOM + 1)

struct hist {
	atomic_ulong		 bucket[NBOUNDS + 1];	/* not cumulative */
	atomic_ullong		 sum_ns;
};

/* One upstream's counters, kept by name; never freed. */
struct mup {
	char			*name;
	atomic_ulong		 verdicts[METRICS_UV_COUNT];
	atomic_ulong		 failures[METRICS_REASON_COUNT];
	atomic_ulong		 unapplied;	/* monitor, shadow */
	atomic_ulong		 shadow_dropped;
	atomic_ulong		 conns[2];	/* fresh, reused */
};

static const char *const reason_names[METRICS_REASON_COUNT] = {
	[METRICS_TIMEOUT]	= "timeout",
	[METRICS_CONNECT]	= "connect",
	[METRICS_PROTOCOL]	= "protocol",
	[METRICS_CLOSED]	= "closed",
	[METRICS_LOCAL]		= "local",
};

/* The upstream entries: an immutable array, replaced (copy and one
 * more) when a name is added, so that the hot path looks a name up
 * without a lock.  Replaced arrays are kept, never freed, as the
 * entries are: one per name ever configured. */
struct mtab {
	/* The table this one replaced: a reader may still hold it (the
	 * lookup takes no lock), so it is never freed; kept reachable
	 * here.  Tables grow once per upstream name ever seen. */
	const struct mtab	*prev;
	size_t			 n;
	struct mup		*v[];
};

static atomic_uint	 sessions_open;
static atomic_ulong	 sessions_total;
static atomic_bool	 draining;
static atomic_ulong	 messages[VERDICT_COUNT];
static struct hist	 stages[NSTAGES];
/* ups_lock serialises additions to ups; readers take none. */
static pthread_mutex_t	 ups_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(struct mtab *) ups;

const char *
metrics_reason_name(enum metrics_reason r)
{
	return (unsigned)r < METRICS_REASON_COUNT ? reason_names[r] : "?";
}

/* uv_name - the label of an upstream's part in a message */
static const char *
uv_name(int v)
{
	if (v == VERDICT_NONE)
		return "none";
	if (v == METRICS_UV_FAILED)
		return "failed";
	if (v == METRICS_UV_DOWN)
		return "down";
	return proto_verdict_name((enum verdict)v);
}

static const char *
message_name(int v)
{
	return v == VERDICT_NONE ? "aborted" :
	    proto_verdict_name((enum verdict)v);
}

/* find - name's entry in t, or NULL */
static struct mup *
find(const struct mtab *t, const char *name)
{
	for (size_t i = 0; t != NULL && i < t->n; i++)
		if (strcmp(t->v[i]->name, name) == 0)
			return t->v[i];
	return NULL;
}

/* mup_get - name's entry, added on first use */
static struct mup *
mup_get(const char *name)
{
	struct mtab	*t = atomic_load_explicit(&ups, memory_order_acquire);
	struct mtab	*nt;
	struct mup	*m;

	if ((m = find(t, name)) != NULL)
		return m;
	pthread_mutex_lock(&ups_lock);
	t = atomic_load_explicit(&ups, memory_order_acquire);
	if ((m = find(t, name)) == NULL) {
		size_t	 n = t != NULL ? t->n : 0;

		m = xcalloc(1, sizeof *m);
		m->name = xstrdup(name);
		nt = xmalloc(sizeof *nt + (n + 1) * sizeof nt->v[0]);
		nt->prev = t;
		nt->n = n + 1;
		for (size_t i = 0; i < n; i++)
			nt->v[i] = t->v[i];
		nt->v[n] = m;
		atomic_store_explicit(&ups, nt, memory_order_release);
	}
	pthread_mutex_unlock(&ups_lock);
	return m;
}

void
metrics_session_begin(void)
{
	atomic_fetch_add_explicit(&sessions_open, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&sessions_total, 1, memory_order_relaxed);
}

void
metrics_session_end(void)
{
	atomic_fetch_sub_explicit(&sessions_open, 1, memory_order_relaxed);
}

void
metrics_set_draining(void)
{
	atomic_store(&draining, true);
}

bool
metrics_draining(void)
{
	return atomic_load(&draining);
}

void
metrics_message(enum verdict v)
{
	if ((unsigned)v < VERDICT_COUNT)
		atomic_fetch_add_explicit(&messages[v], 1,
		    memory_order_relaxed);
}

void
metrics_upstream_verdict(const char *name, int v)
{
	if (v >= 0 && v < METRICS_UV_COUNT)
		atomic_fetch_add_explicit(&mup_get(name)->verdicts[v], 1,
		    memory_order_relaxed);
}

void
metrics_unapplied(const char *name)
{
	atomic_fetch_add_explicit(&mup_get(name)->unapplied, 1,
	    memory_order_relaxed);
}

void
metrics_shadow_dropped(const char *name)
{
	atomic_fetch_add_explicit(&mup_get(name)->shadow_dropped, 1,
	    memory_order_relaxed);
}

enum metrics_reason
metrics_reason_of(int err, const char *why)
{
	if (health_local(err))
		return METRICS_LOCAL;
	if (err == -ETIMEDOUT || err == ETIMEDOUT ||
	    (why != NULL && strcmp(why, "no answer in time") == 0))
		return METRICS_TIMEOUT;
	if ((why != NULL && strcmp(why, "connect") == 0) ||
	    err == -ECONNREFUSED || err == -ENOENT)
		return METRICS_CONNECT;
	if (err == -EPIPE || err == -ECONNRESET ||
	    (why != NULL && strncmp(why, "connection closed", 17) == 0))
		return METRICS_CLOSED;
	return METRICS_PROTOCOL;
}

void
metrics_upstream_failure(const char *name, int err, const char *why)
{
	atomic_fetch_add_explicit(
	    &mup_get(name)->failures[metrics_reason_of(err, why)], 1,
	    memory_order_relaxed);
}

void
metrics_upstream_connection(const char *name, bool reused)
{
	atomic_fetch_add_explicit(&mup_get(name)->conns[reused ? 1 : 0], 1,
	    memory_order_relaxed);
}

void
metrics_stage(enum stage s, double seconds)
{
	size_t	 b = 0;

	if ((unsigned)s >= NSTAGES)
		return;
	if (seconds < 0)
		seconds = 0;
	while (b < NBOUNDS && seconds > bounds[b])
		b++;
	atomic_fetch_add_explicit(&stages[s].bucket[b], 1,
	    memory_order_relaxed);
	atomic_fetch_add_explicit(&stages[s].sum_ns,
	    (unsigned long long)(seconds * 1e9), memory_order_relaxed);
}

static unsigned long
ld(atomic_ulong *a)
{
	return atomic_load_explicit(a, memory_order_relaxed);
}

/* put_label - a label value, escaped as the text format wants */
static void
put_label(FILE *f, const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s == '\\' || *s == '"')
			fprintf(f, "\\%c", *s);
		else if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

/* put_replica - '",replica="ADDRESS' for replica k of a pool */
static void
put_replica(FILE *f, const struct conf_upstream *u, size_t k)
{
	if (!u->pool)
		return;
	fputs("\",replica=\"", f);
	put_label(f, u->replicas[k].address);
}

static void
head(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

char *
metrics_render(void)
{
	struct conf	*c = conf_acquire();
	struct health_info hi;
	char		*out = NULL;
	size_t		 len = 0;
	FILE		*f = open_memstream(&out, &len);
	struct mup	*m;

	if (f == NULL)
		fatalx("out of memory (metrics)");
	head(f, "miltermux_sessions_open", "gauge",
	    "MTA sessions open now.");
	fprintf(f, "miltermux_sessions_open %u\n",
	    atomic_load_explicit(&sessions_open, memory_order_relaxed));
	head(f, "miltermux_sessions_total", "counter",
	    "MTA sessions served since start.");
	fprintf(f, "miltermux_sessions_total %lu\n", ld(&sessions_total));
	head(f, "miltermux_draining", "gauge",
	    "1 while stopping: new MTA sessions are refused.");
	fprintf(f, "miltermux_draining %d\n", metrics_draining() ? 1 : 0);
	head(f, "miltermux_messages_total", "counter",
	    "Messages by merged verdict (aborted: the MTA gave up first).");
	for (int v = 0; v < VERDICT_COUNT; v++)
		fprintf(f, "miltermux_messages_total{verdict=\"%s\"} %lu\n",
		    message_name(v), ld(&messages[v]));
	head(f, "miltermux_upstream_verdicts_total", "counter",
	    "Messages by each upstream's own verdict.");
	for (size_t i = 0; i < c->nupstreams; i++) {
		m = mup_get(c->upstreams[i].name);
		for (int v = 0; v < METRICS_UV_COUNT; v++) {
			fputs("miltermux_upstream_verdicts_total{upstream=\"",
			    f);
			put_label(f, m->name);
			fprintf(f, "\",verdict=\"%s\"} %lu\n", uv_name(v),
			    ld(&m->verdicts[v]));
		}
	}
	head(f, "miltermux_upstream_unapplied_total", "counter",
	    "Messages a monitor or shadow upstream would have refused or "
	    "changed, left as the others decided.");
	for (size_t i = 0; i < c->nupstreams; i++) {
		if (c->upstreams[i].mode == MODE_ENFORCE)
			continue;
		m = mup_get(c->upstreams[i].name);
		fputs("miltermux_upstream_unapplied_total{upstream=\"", f);
		put_label(f, m->name);
		fprintf(f, "\",mode=\"%s\"} %lu\n",
		    conf_mode_name(c->upstreams[i].mode), ld(&m->unapplied));
	}
	head(f, "miltermux_shadow_dropped_total", "counter",
	    "Messages a shadow upstream did not get: its queue was full.");
	for (size_t i = 0; i < c->nupstreams; i++) {
		if (c->upstreams[i].mode != MODE_SHADOW)
			continue;
		m = mup_get(c->upstreams[i].name);
		fputs("miltermux_shadow_dropped_total{upstream=\"", f);
		put_label(f, m->name);
		fprintf(f, "\"} %lu\n", ld(&m->shadow_dropped));
	}
	head(f, "miltermux_upstream_failures_total", "counter",
	    "Upstream connections that failed, by reason.");
	for (size_t i = 0; i < c->nupstreams; i++) {
		const struct conf_upstream *u = &c->upstreams[i];

		/* A pool's failures are its replicas'. */
		for (size_t k = 0; k < (u->pool ? u->nreplicas : 1); k++) {
			m = mup_get(health_key(u, k));
			for (int r = 0; r < METRICS_REASON_COUNT; r++) {
				fputs("miltermux_upstream_failures_total{"
				    "upstream=\"", f);
				put_label(f, u->name);
				put_replica(f, u, k);
				fprintf(f, "\",reason=\"%s\"} %lu\n",
				    reason_names[r], ld(&m->failures[r]));
			}
		}
	}
	head(f, "miltermux_upstream_connections_total", "counter",
	    "Upstream connections opened for MTA sessions: fresh (connect "
	    "and negotiation) or reused (an idle one, after QUIT_NC).");
	for (size_t i = 0; i < c->nupstreams; i++) {
		m = mup_get(c->upstreams[i].name);
		for (int k = 0; k < 2; k++) {
			fputs("miltermux_upstream_connections_total{upstream=\"",
			    f);
			put_label(f, m->name);
			fprintf(f, "\",kind=\"%s\"} %lu\n",
			    k == 0 ? "fresh" : "reused", ld(&m->conns[k]));
		}
	}
	head(f, "miltermux_upstream_up", "gauge",
	    "1 when the upstream is enabled and its breaker is closed "
	    "(a pool: one replica's is; with replica=\"...\": that "
	    "replica's).");
	for (size_t i = 0; i < c->nupstreams; i++) {
		const struct conf_upstream *u = &c->upstreams[i];

		health_get_upstream(u, &hi);
		fputs("miltermux_upstream_up{upstream=\"", f);
		put_label(f, u->name);
		fprintf(f, "\"} %d\n", u->enabled && hi.up);
		for (size_t k = 0; u->pool && k < u->nreplicas; k++) {
			health_get(health_key(u, k), &hi);
			fputs("miltermux_upstream_up{upstream=\"", f);
			put_label(f, u->name);
			put_replica(f, u, k);
			fprintf(f, "\"} %d\n", u->enabled && hi.up);
		}
	}
	head(f, "miltermux_replica_sessions", "gauge",
	    "MTA sessions in flight on each replica of a pool.");
	for (size_t i = 0; i < c->nupstreams; i++) {
		const struct conf_upstream *u = &c->upstreams[i];

		for (size_t k = 0; u->pool && k < u->nreplicas; k++) {
			fputs("miltermux_replica_sessions{upstream=\"", f);
			put_label(f, u->name);
			put_replica(f, u, k);
			fprintf(f, "\"} %u\n", replica_inflight(u, k));
		}
	}
	head(f, "miltermux_stage_seconds", "histogram",
	    "Time from an MTA command to miltermux's answer, by stage.");
	for (int s = 0; s < (int)NSTAGES; s++) {
		unsigned long	 cum = 0;
		const char	*sn = proto_stage_name((enum stage)s);

		for (size_t b = 0; b <= NBOUNDS; b++) {
			cum += ld(&stages[s].bucket[b]);
			if (b < NBOUNDS)
				fprintf(f, "miltermux_stage_seconds_bucket{"
				    "stage=\"%s\",le=\"%g\"} %lu\n", sn,
				    bounds[b], cum);
			else
				fprintf(f, "miltermux_stage_seconds_bucket{"
				    "stage=\"%s\",le=\"+Inf\"} %lu\n", sn, cum);
		}
		fprintf(f, "miltermux_stage_seconds_sum{stage=\"%s\"} %.9f\n",
		    sn, (double)atomic_load_explicit(&stages[s].sum_ns,
		    memory_order_relaxed) / 1e9);
		fprintf(f, "miltermux_stage_seconds_count{stage=\"%s\"} %lu\n",
		    sn, cum);
	}
	fclose(f);
	conf_release(c);
	return out;
}

bool
metrics_healthy(const char **why)
{
	struct conf	*c;
	struct health_info hi;
	size_t		 up = 0;

	if (metrics_draining()) {
		*why = "draining";
		return false;
	}
	c = conf_acquire();
	for (size_t i = 0; i < c->nupstreams; i++) {
		if (!c->upstreams[i].enabled)
			continue;
		health_get_upstream(&c->upstreams[i], &hi);
		if (hi.up)
			up++;
	}
	conf_release(c);
	if (up == 0) {
		*why = "every upstream is down";
		return false;
	}
	*why = "serving";
	return true;
}

/*
 * status_replicas - a pool's addresses (o NULL), or its replicas, each
 * with its breaker, sessions in flight and failures
 */
static json_t *
status_replicas(const struct conf_upstream *u, json_t *o)
{
	json_t			*arr = json_array(), *r, *fs;
	struct health_info	 hi;
	struct mup		*m;

	for (size_t k = 0; k < u->nreplicas; k++) {
		if (o == NULL) {
			json_array_append_new(arr,
			    json_string(u->replicas[k].address));
			continue;
		}
		health_get(health_key(u, k), &hi);
		m = mup_get(health_key(u, k));
		r = json_object();
		json_object_set_new(r, "address",
		    json_string(u->replicas[k].address));
		json_object_set_new(r, "up", json_boolean(u->enabled &&
		    hi.up));
		json_object_set_new(r, "breaker", json_string(hi.state));
		json_object_set_new(r, "failures_in_a_row",
		    json_integer(hi.fails));
		json_object_set_new(r, "retry_in", json_real(hi.retry_in));
		json_object_set_new(r, "sessions", json_integer(
		    replica_inflight(u, k)));
		fs = json_object();
		for (int e = 0; e < METRICS_REASON_COUNT; e++)
			json_object_set_new(fs, reason_names[e], json_integer(
			    (json_int_t)ld(&m->failures[e])));
		json_object_set_new(r, "failures", fs);
		json_array_append_new(arr, r);
	}
	return arr;
}

char *
metrics_status(void)
{
	struct conf	*c = conf_acquire();
	struct health_info hi;
	json_t		*root, *arr, *o, *vs, *fs;
	const char	*why;
	bool		 ok = metrics_healthy(&why);
	struct mup	*m;
	char		*s;

	root = json_object();
	json_object_set_new(root, "status", json_string(why));
	json_object_set_new(root, "healthy", json_boolean(ok));
	json_object_set_new(root, "draining", json_boolean(metrics_draining()));
	o = json_object();
	json_object_set_new(o, "open", json_integer(atomic_load_explicit(
	    &sessions_open, memory_order_relaxed)));
	json_object_set_new(o, "total", json_integer(
	    (json_int_t)ld(&sessions_total)));
	json_object_set_new(root, "sessions", o);
	o = json_object();
	for (int v = 0; v < VERDICT_COUNT; v++)
		json_object_set_new(o, message_name(v), json_integer(
		    (json_int_t)ld(&messages[v])));
	json_object_set_new(root, "messages", o);
	arr = json_array();
	for (size_t i = 0; i < c->nupstreams; i++) {
		const struct conf_upstream *u = &c->upstreams[i];

		health_get_upstream(u, &hi);
		m = mup_get(u->name);
		o = json_object();
		json_object_set_new(o, "name", json_string(u->name));
		if (u->pool)
			json_object_set_new(o, "address", status_replicas(u,
			    NULL));
		else
			json_object_set_new(o, "address",
			    json_string(u->address));
		json_object_set_new(o, "enabled", json_boolean(u->enabled));
		json_object_set_new(o, "phase", json_integer(u->phase));
		json_object_set_new(o, "up", json_boolean(u->enabled && hi.up));
		json_object_set_new(o, "breaker", json_string(hi.state));
		json_object_set_new(o, "failures_in_a_row",
		    json_integer(hi.fails));
		json_object_set_new(o, "retry_in", json_real(hi.retry_in));
		vs = json_object();
		for (int v = 0; v < METRICS_UV_COUNT; v++)
			json_object_set_new(vs, uv_name(v), json_integer(
			    (json_int_t)ld(&m->verdicts[v])));
		json_object_set_new(o, "verdicts", vs);
		fs = json_object();
		for (int r = 0; r < METRICS_REASON_COUNT; r++) {
			unsigned long	 sum = 0;

			/* A pool's are its replicas'. */
			for (size_t k = 0; k < (u->pool ? u->nreplicas : 1);
			    k++)
				sum += ld(&mup_get(health_key(u, k))->
				    failures[r]);
			json_object_set_new(fs, reason_names[r],
			    json_integer((json_int_t)sum));
		}
		json_object_set_new(o, "failures", fs);
		if (u->pool)
			json_object_set_new(o, "replicas", status_replicas(u,
			    o));
		json_array_append_new(arr, o);
	}
	json_object_set_new(root, "upstreams", arr);
	conf_release(c);
	s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(root);
	if (s == NULL)
		fatalx("out of memory (status)");
	return s;
}
