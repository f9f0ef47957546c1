/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * metrics - counters of sessions, messages, upstream verdicts and
 * failures, a histogram of stage times, and their rendering: the
 * Prometheus text format (GET /metrics), a health answer (GET /healthz)
 * and the live state as JSON (GET /status).  The HTTP side is
 * src/metrics_http.c (libmicrohttpd), in the daemon only.
 *
 * Label sets are bounded: verdicts and stages are enums, failure
 * reasons a fixed set, upstreams those of the configuration.  Upstream
 * counters are kept by name for the life of the process, so that they
 * survive a reload; only the upstreams of the current configuration
 * are rendered.
 *
 * Concurrency: every function is thread-safe.  The counters are C11
 * atomics (relaxed: figures, not synchronisation); upstreams are found
 * by name without a lock, and a mutex is taken only to add one.
 * Ownership: metrics_render and metrics_status return a string the
 * caller frees.
 */
#ifndef METRICS_H
#define METRICS_H

#include <stdbool.h>

#include "proto.h"

/* Why an upstream failed, for miltermux_upstream_failures_total. */
enum metrics_reason {
	METRICS_TIMEOUT = 0,	/* no answer in time */
	METRICS_CONNECT,	/* could not connect */
	METRICS_PROTOCOL,	/* broke the protocol, or refused options */
	METRICS_CLOSED,		/* closed or reset the connection */
	METRICS_LOCAL,		/* our own shortage (health_local) */
	METRICS_REASON_COUNT
};

/* An upstream's part in one message, beyond enum verdict's values:
 * VERDICT_NONE is "none" (it gave no verdict of its own). */
#define METRICS_UV_FAILED	VERDICT_COUNT
#define METRICS_UV_DOWN		(VERDICT_COUNT + 1)
#define METRICS_UV_COUNT	(VERDICT_COUNT + 2)

/* An MTA session began (negotiated) / ended (closed). */
void	 metrics_session_begin(void);
void	 metrics_session_end(void);
/* From now on /healthz answers 503 (front_drain). */
void	 metrics_set_draining(void);
bool	 metrics_draining(void);

/* A message ended with merged verdict v (VERDICT_NONE: aborted). */
void	 metrics_message(enum verdict v);
/* Upstream name's part in a message: an enum verdict or METRICS_UV_*. */
void	 metrics_upstream_verdict(const char *name, int v);
/* A monitor or shadow upstream would have refused or changed a message
 * (a verdict other than accept or continue, or modifications). */
void	 metrics_unapplied(const char *name);
/* A message was dropped for shadow upstream name: its queue was full. */
void	 metrics_shadow_dropped(const char *name);
/* Upstream name failed with err (-errno or 0) for reason why (as
 * upstream.c logs it); the reason is classified from both. */
void	 metrics_upstream_failure(const char *name, int err, const char *why);
enum metrics_reason metrics_reason_of(int err, const char *why);
/* An upstream connection was opened for an MTA session: a fresh
 * connect, or an idle one reused (connpool.h). */
void	 metrics_upstream_connection(const char *name, bool reused);
/* One MTA stage took seconds, from its command to our answer. */
void	 metrics_stage(enum stage, double seconds);

/* GET /metrics: the Prometheus text exposition format 0.0.4. */
char	*metrics_render(void);
/* GET /status: the live state as a JSON object. */
char	*metrics_status(void);
/* GET /healthz: true when serving; else false and *why says why. */
bool	 metrics_healthy(const char **why);

const char *metrics_reason_name(enum metrics_reason);

#endif /* METRICS_H */
