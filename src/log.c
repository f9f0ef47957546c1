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
#include <time.h>

#include <jansson.h>

#include "log.h"

#define LINE_MAX_LEN	4096

atomic_uint		 log_trace_mask;
static atomic_int	 log_verbose;
static atomic_bool	 log_foreground = true;
static atomic_bool	 log_json;
static atomic_bool	 log_stamps;
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
log_set_timestamps(bool on)
{
	atomic_store(&log_stamps, on);
}

void
log_set_json(bool on)
{
	atomic_store(&log_json, on);
}

bool
log_get_json(void)
{
	return atomic_load(&log_json);
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

/* level_name - a syslog priority as a word for the JSON "level" */
static const char *
level_name(int pri)
{
	switch (pri) {
	case LOG_CRIT:
		return "crit";
	case LOG_ERR:
		return "err";
	case LOG_WARNING:
		return "warning";
	case LOG_INFO:
		return "info";
	default:
		return "debug";
	}
}

/* stamp - the time now as 2026-12-04T14:09:24.123Z */
static void
stamp(char *out, size_t size)
{
	struct timespec	 ts;
	struct tm	 tm;
	char		 s[32];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(s, sizeof s, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out, size, "%s.%03ldZ", s, ts.tv_nsec / 1000000L);
}

/* put - one finished line to the sink, stderr (timestamped) or syslog */
static void
put(int pri, const char *line, bool json)
{
	char	 ts[48];

	pthread_mutex_lock(&log_lock);
	if (log_sink != NULL)
		log_sink(log_sink_arg, pri, line);
	else if (atomic_load(&log_foreground)) {
		if (json || !atomic_load(&log_stamps))
			fprintf(stderr, "%s\n", line);
		else {
			stamp(ts, sizeof ts);
			fprintf(stderr, "%s %s\n", ts, line);
		}
	} else
		syslog(pri, "%s", line);
	pthread_mutex_unlock(&log_lock);
}

/*
 * put_record - in JSON mode the object fields (or a new one) with "ts",
 * "level" and "msg" added, as one line; otherwise the text line
 */
static void
put_record(int pri, const char *line, json_t *fields)
{
	json_t	*o;
	char	*s, ts[48];

	if (!atomic_load(&log_json)) {
		put(pri, line, false);
		return;
	}
	o = fields != NULL ? json_incref(fields) : json_object();
	stamp(ts, sizeof ts);
	json_object_set_new(o, "ts", json_string(ts));
	json_object_set_new(o, "level", json_string(level_name(pri)));
	json_object_set_new(o, "msg", json_string(line));
	s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (s == NULL) {
		put(pri, line, false);
		return;
	}
	put(pri, s, true);
	free(s);
}

/* format - one line, control bytes replaced, strerror(code) appended */
static void
format(char *line, size_t size, int code, const char *fmt, va_list ap)
{
	char	 ebuf[256];
	size_t	 len;

	vsnprintf(line, size, fmt, ap);
	if (code != 0) {
		if (strerror_r(code, ebuf, sizeof ebuf) != 0)
			snprintf(ebuf, sizeof ebuf, "error %d", code);
		len = strlen(line);
		snprintf(line + len, size - len, ": %s", ebuf);
	}
	/* A peer's text may reach a log line; never let it split one. */
	for (char *p = line; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
}

/* emit - format one line and write it once */
static void
emit(int pri, int code, const char *fmt, va_list ap)
{
	char		 line[LINE_MAX_LEN];
	int		 saved = errno;

	format(line, sizeof line, code, fmt, ap);
	put_record(pri, line, NULL);
	errno = saved;
}

json_t *
log_jstr(const char *s)
{
	json_t	*j;
	char	*c;

	if (s == NULL)
		s = "";
	if ((j = json_string(s)) != NULL)
		return j;
	c = strdup(s);
	if (c == NULL)
		return json_string("");
	for (char *p = c; *p != '\0'; p++)
		if ((unsigned char)*p >= 0x80)
			*p = '?';
	j = json_string(c);
	free(c);
	return j;
}

void
log_record(int pri, struct json_t *fields, const char *fmt, ...)
{
	char		 line[LINE_MAX_LEN];
	int		 saved = errno;
	va_list		 ap;

	va_start(ap, fmt);
	format(line, sizeof line, 0, fmt, ap);
	va_end(ap);
	put_record(pri, line, fields);
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
