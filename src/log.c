/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * log - syslog or stderr logging, one line per call.
 *
 * Concurrency: the sink and stderr writes are serialised by log_lock;
 * settings are atomics.  Never logs while holding any other lock of its
 * own.  Ownership: nothing kept.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "log.h"

#define LINE_MAX_LEN	4096

atomic_uint		 log_trace_mask;
static atomic_int	 log_verbose;
static atomic_bool	 log_foreground = true;
/* log_lock protects log_sink, log_sink_arg and writes to stderr. */
static pthread_mutex_t	 log_lock = PTHREAD_MUTEX_INITIALIZER;
static log_sink_fn	*log_sink;
static void		*log_sink_arg;

void
log_init(const char *ident, bool foreground)
{
	atomic_store(&log_foreground, foreground);
	if (!foreground)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void
log_set_verbose(int v)
{
	atomic_store(&log_verbose, v);
}

int
log_get_verbose(void)
{
	return atomic_load(&log_verbose);
}

void
log_set_trace(unsigned mask)
{
	atomic_store(&log_trace_mask, mask);
}

void
log_set_sink(log_sink_fn *fn, void *arg)
{
	pthread_mutex_lock(&log_lock);
	log_sink = fn;
	log_sink_arg = arg;
	pthread_mutex_unlock(&log_lock);
}

/* emit - format one line, replacing control bytes, and write it once */
static void
emit(int pri, int code, const char *fmt, va_list ap)
{
	char		 line[LINE_MAX_LEN], ebuf[256];
	size_t		 len;
	int		 saved = errno;

	vsnprintf(line, sizeof line, fmt, ap);
	if (code != 0) {
		if (strerror_r(code, ebuf, sizeof ebuf) != 0)
			snprintf(ebuf, sizeof ebuf, "error %d", code);
		len = strlen(line);
		snprintf(line + len, sizeof line - len, ": %s", ebuf);
	}
	/* A peer's text may reach a log line; never let it split one. */
	for (char *p = line; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	pthread_mutex_lock(&log_lock);
	if (log_sink != NULL)
		log_sink(log_sink_arg, pri, line);
	else if (atomic_load(&log_foreground))
		fprintf(stderr, "%s\n", line);
	else
		syslog(pri, "%s", line);
	pthread_mutex_unlock(&log_lock);
	errno = saved;
}

#define LOG_BODY(pri, code) do {		\
	va_list	 ap;				\
	va_start(ap, fmt);			\
	emit((pri), (code), fmt, ap);		\
	va_end(ap);				\
} while (0)

void
log_info(const char *fmt, ...)
{
	LOG_BODY(LOG_INFO, 0);
}

void
log_warn(const char *fmt, ...)
{
	int	 code = errno;

	LOG_BODY(LOG_WARNING, code);
}

void
log_warnx(const char *fmt, ...)
{
	LOG_BODY(LOG_WARNING, 0);
}

void
log_warnc(int code, const char *fmt, ...)
{
	LOG_BODY(LOG_WARNING, code < 0 ? -code : code);
}

void
log_debug(const char *fmt, ...)
{
	if (atomic_load(&log_verbose) < 1)
		return;
	LOG_BODY(LOG_DEBUG, 0);
}

void
log_trace_(unsigned cat, const char *fmt, ...)
{
	(void)cat;
	LOG_BODY(LOG_DEBUG, 0);
}

void
fatal(const char *fmt, ...)
{
	int	 code = errno;

	LOG_BODY(LOG_CRIT, code);
	exit(1);
}

void
fatalx(const char *fmt, ...)
{
	LOG_BODY(LOG_CRIT, 0);
	exit(1);
}

void
log_panic(const char *fmt, ...)
{
	LOG_BODY(LOG_CRIT, 0);
	abort();
}
