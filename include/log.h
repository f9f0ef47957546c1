/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * log - one logging API for the daemon, the tools and the tests.
 *
 * Modelled on OpenSMTPD's log.c: log_warn appends strerror(errno),
 * log_warnc appends strerror of an explicit code (our -errno returns),
 * log_warnx appends nothing.  Output goes to syslog (facility mail) or,
 * in the foreground, to stderr; a test may install a sink.
 *
 * Concurrency: every call emits exactly one line atomically; callable
 * from any thread.  errno is preserved.  Ownership: nothing kept.
 */
#ifndef LOG_H
#define LOG_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>

enum trace {
	TRACE_FRONT	= 0x01,
	TRACE_UPSTREAM	= 0x02,
	TRACE_PROTO	= 0x04,
	TRACE_POOL	= 0x08,
	TRACE_MERGE	= 0x10,
	TRACE_CONF	= 0x20
};

/* Priority values are syslog's (LOG_ERR, LOG_WARNING, LOG_INFO...). */
typedef void log_sink_fn(void *arg, int priority, const char *line);

void	log_init(const char *ident, bool foreground);
void	log_set_verbose(int);
int	log_get_verbose(void);
void	log_set_trace(unsigned mask);
/*
 * JSON lines ("log_format": "json"): every line becomes one object with
 * "ts", "level" and "msg"; log_record adds its own fields to that.
 */
void	log_set_json(bool on);
/* Text lines on stderr start with a UTC timestamp (the daemon's -f). */
void	log_set_timestamps(bool on);
bool	log_get_json(void);
struct json_t;
/* One record: fmt is the text line; fields (not consumed, may be NULL)
 * the same facts as JSON keys, used in JSON mode. */
void	log_record(int priority, struct json_t *fields, const char *fmt, ...)
	    __attribute__((format(printf, 3, 4)));
/* A JSON string of s (NULL: ""), bytes that are not UTF-8 as '?'. */
struct json_t	*log_jstr(const char *s);
/* Route every line to fn (tests); NULL restores the default. */
void	log_set_sink(log_sink_fn *fn, void *arg);

void	log_info(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_warn(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_warnx(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_warnc(int code, const char *, ...)
	    __attribute__((format(printf, 2, 3)));
void	log_debug(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_trace_(unsigned cat, const char *, ...)
	    __attribute__((format(printf, 2, 3)));
_Noreturn void	fatal(const char *, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void	fatalx(const char *, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void	log_panic(const char *, ...)
	    __attribute__((format(printf, 1, 2)));

extern atomic_uint	log_trace_mask;
/* Costs one branch when the category is off. */
#define log_trace(cat, ...) do {					\
	if (atomic_load_explicit(&log_trace_mask,			\
	    memory_order_relaxed) & (cat))				\
		log_trace_((cat), __VA_ARGS__);				\
} while (0)

#endif /* LOG_H */
