/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * load - miltermux-send's load mode: many MTA sessions at once against
 * one milter, or against a chain of milters asked one after another.
 *
 * Every session is a small state machine driven by the completions of
 * its upstream exchanges (upstream.c), so K sessions need no K threads:
 * they share the few event loops of one pool, each session confined to
 * one loop with all of its upstreams.  A chain is asked the way Postfix
 * and Sendmail ask their list of milters: each stage goes to milter 1,
 * then 2, ...; a milter that rejects, tempfails or discards stops the
 * chain, one that accepts is out of the transaction.
 *
 * Concurrency: load_run() is called once, from the main thread, which
 * then only waits and enforces deadlines.  Ownership: everything in
 * struct load_opts is borrowed for the duration of load_run().
 */
#ifndef LOAD_H
#define LOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "conf.h"

struct load_header {
	char	*name;
	char	*value;
};

struct load_macro {
	char	*name;
	char	*value;
};

struct load_opts {
	const struct conf_upstream	*ups;	/* the milters, in chain order */
	size_t				 nups;	/* more than one: a chain */
	/* Ask every milter of a stage at once and wait for all (the
	 * strictest refusal wins), instead of one after another. */
	bool				 fanout;
	unsigned long			 count;		/* messages in all */
	unsigned			 concurrency;	/* sessions at once */
	unsigned			 per_session;	/* messages each */
	unsigned			 threads;	/* pool loops */
	double				 timeout;	/* per exchange, s */
	bool				 json;
	/* What each session sends: the envelope, the message. */
	const char			*helo;
	const char			*client_name;
	const char			*client_addr;
	unsigned			 client_port;
	const char			*from;
	const char *const		*rcpts;
	size_t				 nrcpts;
	const struct load_macro		*macros;
	size_t				 nmacros;
	const struct load_header	*hdrs;
	size_t				 nhdrs;
	const uint8_t			*body;		/* CRLF line ends */
	size_t				 bodylen;
	size_t				 size;		/* message bytes */
};

/*
 * Runs opts->count messages over opts->concurrency sessions, each
 * session carrying up to opts->per_session messages, and prints the
 * figures (messages per second, latency percentiles, results, errors)
 * to out as text or JSON.  Blocks until every session ended; every
 * exchange is bounded by opts->timeout.  Returns the exit status: 0
 * when every message got an answer, EX_UNAVAILABLE when some failed,
 * EX_OSERR when the pool cannot start.
 */
int	load_run(const struct load_opts *opts, FILE *out);

#endif /* LOAD_H */
