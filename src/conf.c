/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * conf - load, validate, dump and publish the JSON configuration.
 *
 * The text is parsed by jansson into a json_t tree, checked against the
 * schema below and copied into a plain struct conf; no json_t survives
 * conf_parse().  Validation never stops at the first problem: each one
 * becomes a line "FILE:LINE:COLUMN: KEY.PATH: message", and the lines
 * are handed back sorted by position.  It does not open sockets: an
 * address is only parsed and resolved (getaddrinfo), once, at load.
 *
 * Design: jansson gives no positions for values, so a small scanner
 * (index_build) walks the raw text once more after jansson has accepted
 * it and records, for every key path ("upstreams[1].timeouts.content"),
 * where its key and its value start.  Errors look positions up by path.
 * A key that is not a plain identifier is written ["..."] in a path, so
 * that a path names exactly one place.  Columns count characters (UTF-8
 * sequences), as jansson's own err.column does.
 *
 * Size: about 1,600 lines, over the 1,500 of the house style, because
 * the position scanner and the socket address parser belong with the
 * only module that may see the configuration text (STYLE 2.1); moving
 * them out would give no other module a use for them.
 *
 * Concurrency: conf_parse/conf_load/conf_dump use no shared state.
 * conf_lock protects only the conf_current pointer; refcounts are
 * atomic; a published snapshot is never modified.
 * Ownership: every string in a struct conf is a copy owned by the
 * snapshot and released by conf_free() with its last reference.
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "buf.h"
#include "codec.h"
#include "cond.h"
#include "conf.h"
#include "log.h"
#include "xalloc.h"

#define THREADS_MIN		1
#define THREADS_MAX		1024
#define TIMEOUT_MAX		3600.0	/* seconds */
#define PHASE_MAX		100
#define REPLAY_MEMORY_MAX	(1024LL * 1024 * 1024)
#define FAILURES_MIN		1
#define FAILURES_MAX		1000
#define SESSIONS_MIN		1
#define SESSIONS_MAX		1000000
#define MAX_MODS_MIN		1
#define MAX_MODS_MAX		10000000
/* A shadow queue: 1..SHADOW_QUEUE_MAX messages, and bytes enough for one
 * packet at least (64 KiB) up to 4 GiB. */
#define SHADOW_QUEUE_MAX	1000000
#define SHADOW_BYTES_MIN	65536LL
#define SHADOW_BYTES_MAX	(4096LL * 1024 * 1024)
#define IDLE_MAX_MAX		4096	/* idle connections per endpoint */
#define GROUP_BUF_MAX		(1024 * 1024)	/* getgrnam_r's buffer */
#define MACROS_MAX		50	/* names per macro stage */
#define UPSTREAM_NAME_MAX	64
#define QUOTE_MAX		80	/* bytes of a value shown in a message */
#define SCAN_MAX_DEPTH		4096	/* jansson stops at 2048 */

/*
 * A fuzzing build (tests/fuzz, "make fuzz": the libFuzzer convention
 * FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION) feeds arbitrary names to
 * the address parser and must stay off the network and deterministic:
 * there getaddrinfo() takes numeric hosts and ports only, so that no
 * name service (DNS, /etc/hosts, NIS) is ever asked.  Never defined by
 * configure.
 */
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#define RESOLVE_FLAGS		(AI_NUMERICHOST | AI_NUMERICSERV)
#else
#define RESOLVE_FLAGS		0
#endif

static const char *const on_failure_names[ONFAIL_COUNT] = {
	[ONFAIL_ACCEPT]		= "accept",
	[ONFAIL_TEMPFAIL]	= "tempfail",
	[ONFAIL_REJECT]		= "reject",
};

static const char *const mode_names[MODE_COUNT] = {
	[MODE_ENFORCE]	= "enforce",
	[MODE_MONITOR]	= "monitor",
	[MODE_SHADOW]	= "shadow",
};

/* The schema: known keys per object, in the order conf_dump writes them. */
static const char *const top_keys[] = {
	"listen", "threads", "timeouts", "on_failure", "macros", "replay",
	"upstreams", "failures", "retry_after", "max_modifications",
	"shutdown_grace", "socket_mode", "socket_group", "max_sessions",
	"metrics", "log_format", "reuse", "reuse_idle_max",
	"reuse_idle_timeout", NULL
};
static const char *const upstream_keys[] = {
	"name", "address", "enabled", "phase", "on_failure", "failures",
	"retry_after", "max_modifications", "timeouts", "apply_if", "skip_if",
	"actions", "verdicts", "mode", "shadow_queue", "shadow_queue_bytes",
	"reuse", "reuse_idle_max", "reuse_idle_timeout", NULL
};
static const char *const cond_keys[] = {
	"client", "auth", "sender_domain", "rcpt_domain", "macro",
	"size_over", NULL
};
/* The verdicts "verdicts" may map. */
static const char *const vmap_from[] = {
	"reject", "tempfail", "discard", NULL
};

static const char *const replay_keys[] = {
	"memory", "directory", NULL
};
static const char *const metrics_keys[] = {
	"listen", NULL
};
static const char *const timeout_keys[] = {
	"connect", "command", "content", NULL
};
/* SMTP order; enum macro_stage puts eom before eoh (wire order). */
static const char *const macro_keys[] = {
	"connect", "helo", "envfrom", "envrcpt", "data", "eoh", "eom", NULL
};

/* Indexed like timeout_keys. */
static const size_t timeout_offs[] = {
	offsetof(struct conf_timeouts, connect),
	offsetof(struct conf_timeouts, command),
	offsetof(struct conf_timeouts, content),
};

static double *
timeout_slot(struct conf_timeouts *t, size_t i)
{
	return (double *)(void *)((char *)t + timeout_offs[i]);
}

static double
timeout_get(const struct conf_timeouts *t, size_t i)
{
	return *(const double *)(const void *)((const char *)t +
	    timeout_offs[i]);
}

/*
 * strerror_r exists in two variants: the XSI one (returns int) under
 * plain _POSIX_C_SOURCE, the GNU one (returns char *) under _GNU_SOURCE,
 * which the autotools build defines.  _Generic picks the right reading
 * without feature-macro guesswork.
 */
static inline const char *
xsi_text(int rc, const char *buf)
{
	return rc == 0 ? buf : "unknown error";
}

static inline const char *
gnu_text(const char *s, const char *buf)
{
	(void)buf;
	return s;
}

#define ERRNO_TEXT(code, buf)						\
	_Generic(strerror_r((code), (buf), sizeof (buf)),		\
	    int: xsi_text, default: gnu_text)				\
	    (strerror_r((code), (buf), sizeof (buf)), (buf))

/*
 * Text positions and the position index.
 */

struct tpos {
	int	line;	/* 1-based; 0 when unknown */
	int	col;	/* 1-based, in characters */
};

struct pentry {
	char		*path;
	struct tpos	 key;	/* line 0 for the root and array elements */
	struct tpos	 val;
};

struct pindex {
	struct pentry	*v;
	size_t		 n, cap;
};

struct scan {
	const unsigned char	*p;
	size_t			 len, i;
	int			 line, col;	/* of p[i] */
	struct pindex		*ix;
	struct buf		 key;		/* last decoded key, NUL ended */
};

/* quote - s as a one-line JSON string literal, cut after max bytes
 * (0: never); caller owns, free with free() */
static char *
quote(const char *s, size_t max)
{
	struct buf	 b;
	char		 esc[8], *r;
	unsigned char	 c;

	buf_init(&b);
	buf_add_u8(&b, '"');
	for (size_t i = 0; s[i] != '\0'; i++) {
		c = (unsigned char)s[i];
		if (max != 0 && i >= max && (c & 0xc0) != 0x80) {
			buf_add(&b, "...", 3);
			break;
		}
		if (c == '"' || c == '\\') {
			buf_add_u8(&b, '\\');
			buf_add_u8(&b, c);
		} else if (c < 0x20 || c == 0x7f) {
			snprintf(esc, sizeof esc, "\\u%04x", c);
			buf_add(&b, esc, 6);
		} else
			buf_add_u8(&b, c);
	}
	buf_add_u8(&b, '"');
	buf_add_u8(&b, '\0');
	r = xstrdup((const char *)buf_head(&b));
	buf_fini(&b);
	return r;
}

static bool
is_plain_key(const char *k)
{
	if (*k == '\0')
		return false;
	for (; *k != '\0'; k++)
		if (!((*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') ||
		    (*k >= '0' && *k <= '9') || *k == '_' || *k == '-'))
			return false;
	return true;
}

/* path_key - path of member key of the object at parent; caller owns */
static char *
path_key(const char *parent, const char *key)
{
	char	*q, *r;

	if (is_plain_key(key))
		return *parent == '\0' ? xstrdup(key) :
		    xasprintf("%s.%s", parent, key);
	q = quote(key, 0);
	r = xasprintf("%s[%s]", parent, q);
	free(q);
	return r;
}

/* path_index - path of element i of the array at parent; caller owns */
static char *
path_index(const char *parent, size_t i)
{
	return xasprintf("%s[%zu]", parent, i);
}

/* pindex_add - record a path; takes ownership of path */
static void
pindex_add(struct pindex *ix, char *path, struct tpos key, struct tpos val)
{
	if (ix->n == ix->cap) {
		ix->cap = ix->cap == 0 ? 64 : ix->cap * 2;
		ix->v = xreallocarray(ix->v, ix->cap, sizeof *ix->v);
	}
	ix->v[ix->n].path = path;
	ix->v[ix->n].key = key;
	ix->v[ix->n].val = val;
	ix->n++;
}

static void
pindex_fini(struct pindex *ix)
{
	for (size_t i = 0; i < ix->n; i++) {
		free(ix->v[i].path);
		ix->v[i].path = NULL;
	}
	free(ix->v);
	ix->v = NULL;
	ix->n = ix->cap = 0;
}

static int
pentry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct pentry *)a)->path,
	    ((const struct pentry *)b)->path);
}

static const struct pentry *
pindex_find(const struct pindex *ix, const char *path)
{
	struct pentry	 k = { .path = (char *)(uintptr_t)path };

	if (ix->n == 0)
		return NULL;
	return bsearch(&k, ix->v, ix->n, sizeof *ix->v, pentry_cmp);
}

static int
sc_peek(const struct scan *s)
{
	return s->i < s->len ? s->p[s->i] : -1;
}

/* sc_adv - step over one byte; a column is one character, not a byte */
static void
sc_adv(struct scan *s)
{
	unsigned char	 c = s->p[s->i++];

	if (c == '\n') {
		s->line++;
		s->col = 1;
	} else if ((c & 0xc0) != 0x80)
		s->col++;
}

static struct tpos
sc_here(const struct scan *s)
{
	return (struct tpos){ s->line, s->col };
}

static void
sc_ws(struct scan *s)
{
	int	 c;

	while ((c = sc_peek(s)) == ' ' || c == '\t' || c == '\n' || c == '\r')
		sc_adv(s);
}

static int
sc_hex4(struct scan *s, unsigned *out)
{
	int	 c;

	*out = 0;
	for (int k = 0; k < 4; k++) {
		c = sc_peek(s);
		if (c >= '0' && c <= '9')
			*out = *out * 16 + (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			*out = *out * 16 + (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			*out = *out * 16 + (unsigned)(c - 'A' + 10);
		else
			return -1;
		sc_adv(s);
	}
	return 0;
}

static void
put_utf8(struct buf *b, unsigned cp)
{
	if (cp < 0x80)
		buf_add_u8(b, (uint8_t)cp);
	else if (cp < 0x800) {
		buf_add_u8(b, (uint8_t)(0xc0 | cp >> 6));
		buf_add_u8(b, (uint8_t)(0x80 | (cp & 0x3f)));
	} else if (cp < 0x10000) {
		buf_add_u8(b, (uint8_t)(0xe0 | cp >> 12));
		buf_add_u8(b, (uint8_t)(0x80 | (cp >> 6 & 0x3f)));
		buf_add_u8(b, (uint8_t)(0x80 | (cp & 0x3f)));
	} else {
		buf_add_u8(b, (uint8_t)(0xf0 | cp >> 18));
		buf_add_u8(b, (uint8_t)(0x80 | (cp >> 12 & 0x3f)));
		buf_add_u8(b, (uint8_t)(0x80 | (cp >> 6 & 0x3f)));
		buf_add_u8(b, (uint8_t)(0x80 | (cp & 0x3f)));
	}
}

/* sc_escape - decode the escape after a backslash into s->key */
static int
sc_escape(struct scan *s)
{
	static const char	 from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
	const char		*e;
	unsigned		 cp, lo;
	int			 c = sc_peek(s);

	if (c == -1)
		return -1;
	sc_adv(s);
	if (c != 'u') {
		if (c == '\0' || (e = strchr(from, c)) == NULL)
			return -1;
		buf_add_u8(&s->key, (uint8_t)to[e - from]);
		return 0;
	}
	if (sc_hex4(s, &cp) != 0)
		return -1;
	/* A surrogate pair spells one character in two escapes. */
	if (cp >= 0xd800 && cp <= 0xdbff && sc_peek(s) == '\\' &&
	    s->i + 1 < s->len && s->p[s->i + 1] == 'u') {
		sc_adv(s);
		sc_adv(s);
		if (sc_hex4(s, &lo) != 0)
			return -1;
		if (lo >= 0xdc00 && lo <= 0xdfff)
			cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
		else {
			put_utf8(&s->key, 0xfffd);
			cp = lo;
		}
	}
	if (cp >= 0xd800 && cp <= 0xdfff)
		cp = 0xfffd;
	put_utf8(&s->key, cp);
	return 0;
}

/* sc_string - scan a string literal, decoding it into s->key */
static int
sc_string(struct scan *s)
{
	int	 c;

	buf_reset(&s->key);
	sc_adv(s);				/* the opening quote */
	for (;;) {
		if ((c = sc_peek(s)) == -1)
			return -1;
		sc_adv(s);
		if (c == '"')
			break;
		if (c == '\\') {
			if (sc_escape(s) != 0)
				return -1;
		} else
			buf_add_u8(&s->key, (uint8_t)c);
	}
	buf_add_u8(&s->key, '\0');
	return 0;
}

static int	sc_value(struct scan *, const char *path, int depth);

static int
sc_object(struct scan *s, const char *path, int depth)
{
	struct tpos	 kpos, vpos;
	char		*child;
	int		 c;

	sc_adv(s);
	sc_ws(s);
	if (sc_peek(s) == '}') {
		sc_adv(s);
		return 0;
	}
	for (;;) {
		sc_ws(s);
		kpos = sc_here(s);
		if (sc_peek(s) != '"' || sc_string(s) != 0)
			return -1;
		child = path_key(path, (const char *)buf_head(&s->key));
		sc_ws(s);
		if (sc_peek(s) != ':') {
			free(child);
			return -1;
		}
		sc_adv(s);
		sc_ws(s);
		vpos = sc_here(s);
		pindex_add(s->ix, child, kpos, vpos);	/* owns child now */
		if (sc_value(s, child, depth + 1) != 0)
			return -1;
		sc_ws(s);
		if ((c = sc_peek(s)) == -1)
			return -1;
		sc_adv(s);
		if (c == '}')
			return 0;
		if (c != ',')
			return -1;
	}
}

static int
sc_array(struct scan *s, const char *path, int depth)
{
	char	*child;
	int	 c;

	sc_adv(s);
	sc_ws(s);
	if (sc_peek(s) == ']') {
		sc_adv(s);
		return 0;
	}
	for (size_t i = 0;; i++) {
		sc_ws(s);
		child = path_index(path, i);
		pindex_add(s->ix, child, (struct tpos){ 0, 0 }, sc_here(s));
		if (sc_value(s, child, depth + 1) != 0)
			return -1;
		sc_ws(s);
		if ((c = sc_peek(s)) == -1)
			return -1;
		sc_adv(s);
		if (c == ']')
			return 0;
		if (c != ',')
			return -1;
	}
}

/* sc_value - scan one value; records the positions of what it contains */
static int
sc_value(struct scan *s, const char *path, int depth)
{
	int	 c = sc_peek(s);
	size_t	 start = s->i;

	if (depth > SCAN_MAX_DEPTH)
		return -1;
	switch (c) {
	case '{':
		return sc_object(s, path, depth);
	case '[':
		return sc_array(s, path, depth);
	case '"':
		return sc_string(s);
	default:
		/* Numbers and the literals true, false, null. */
		while ((c = sc_peek(s)) != -1 &&
		    ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
		    (c >= 'A' && c <= 'Z') || c == '+' || c == '-' || c == '.'))
			sc_adv(s);
		return s->i > start ? 0 : -1;
	}
}

/* pos_at - the line and column of byte off, counted as the scanner does */
static struct tpos
pos_at(const char *text, size_t off)
{
	struct scan	 s = { .p = (const unsigned char *)text, .len = off,
			    .line = 1, .col = 1 };

	while (s.i < off)
		sc_adv(&s);
	return sc_here(&s);
}

/*
 * index_build - record where every key and value of text starts.  Only
 * called on text jansson accepted, so a scan failure is a bug; it costs
 * positions in messages, nothing else.
 */
static void
index_build(struct pindex *ix, const char *text, size_t len)
{
	struct scan	 s = {
		.p = (const unsigned char *)text, .len = len,
		.line = 1, .col = 1, .ix = ix,
	};

	buf_init(&s.key);
	sc_ws(&s);
	pindex_add(ix, xstrdup(""), (struct tpos){ 0, 0 }, sc_here(&s));
	if (sc_value(&s, "", 0) != 0)
		log_debug("%s: position scan stopped at byte %zu", __func__,
		    s.i);
	buf_fini(&s.key);
	qsort(ix->v, ix->n, sizeof *ix->v, pentry_cmp);
}

/*
 * Error collection.
 */

struct cerr {
	struct tpos	 at;
	size_t		 seq;
	char		*text;
};

struct ctx {
	const char	*name;		/* file name for messages */
	struct pindex	 ix;
	struct cerr	*errs;
	size_t		 nerrs;
	struct cerr	*warns;		/* same form, "warning: " added */
	size_t		 nwarns;
	struct conf	*c;		/* being built */
};

/* errors_add - append one line; takes ownership of line */
static void
errors_add(struct conf_errors *errs, char *line)
{
	/* One problem, one line, whatever a value or file name holds. */
	for (char *p = line; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	if (errs == NULL) {
		free(line);
		return;
	}
	errs->v = xreallocarray(errs->v, errs->n + 1, sizeof *errs->v);
	errs->v[errs->n++] = line;
}

void
conf_errors_fini(struct conf_errors *errs)
{
	if (errs == NULL)
		return;
	for (size_t i = 0; i < errs->n; i++) {
		free(errs->v[i]);
		errs->v[i] = NULL;
	}
	free(errs->v);
	errs->v = NULL;
	errs->n = 0;
}

static void	vreport(struct ctx *, struct tpos, const char *path,
		    const char *fmt, va_list) __attribute__((format(printf, 4, 0)));
static void	vreport_to(struct cerr **, size_t *, const char *,
		    struct tpos, const char *path, const char *fmt, va_list)
		    __attribute__((format(printf, 6, 0)));
static void	warn_value(struct ctx *, const char *path, const char *fmt,
		    ...) __attribute__((format(printf, 3, 4)));
static void	report(struct ctx *, struct tpos, const char *path,
		    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void	bad_value(struct ctx *, const char *path, const char *fmt, ...)
		    __attribute__((format(printf, 3, 4)));

/* vreport_to - append "NAME:LINE:COL: PATH: message" to a list */
static void
vreport_to(struct cerr **list, size_t *n, const char *name, struct tpos at,
    const char *path, const char *fmt, va_list ap)
{
	va_list		 aq;
	char		*msg;
	int		 len;
	const char	*shown = *path == '\0' ? "(top level)" : path;

	va_copy(aq, ap);
	len = vsnprintf(NULL, 0, fmt, aq);
	va_end(aq);
	if (len < 0)
		log_panic("%s: bad format \"%s\"", __func__, fmt);
	msg = xmalloc((size_t)len + 1);
	vsnprintf(msg, (size_t)len + 1, fmt, ap);

	*list = xreallocarray(*list, *n + 1, sizeof **list);
	(*list)[*n].at = at;
	(*list)[*n].seq = *n;
	(*list)[*n].text = at.line > 0 ?
	    xasprintf("%s:%d:%d: %s: %s", name, at.line, at.col, shown, msg) :
	    xasprintf("%s: %s: %s", name, shown, msg);
	(*n)++;
	free(msg);
}

/* vreport - record an error for sorting later */
static void
vreport(struct ctx *x, struct tpos at, const char *path, const char *fmt,
    va_list ap)
{
	vreport_to(&x->errs, &x->nerrs, x->name, at, path, fmt, ap);
}

static void
report(struct ctx *x, struct tpos at, const char *path, const char *fmt, ...)
{
	va_list	 ap;

	va_start(ap, fmt);
	vreport(x, at, path, fmt, ap);
	va_end(ap);
}

static struct tpos
at_value(const struct ctx *x, const char *path)
{
	const struct pentry	*e = pindex_find(&x->ix, path);

	return e != NULL ? e->val : (struct tpos){ 0, 0 };
}

static struct tpos
at_key(const struct ctx *x, const char *path)
{
	const struct pentry	*e = pindex_find(&x->ix, path);

	if (e != NULL && e->key.line > 0)
		return e->key;
	return at_value(x, path);
}

/* bad_value - report a problem with the value at path */
static void
bad_value(struct ctx *x, const char *path, const char *fmt, ...)
{
	va_list	 ap;

	va_start(ap, fmt);
	vreport(x, at_value(x, path), path, fmt, ap);
	va_end(ap);
}

/* warn_value - record a warning about the value at path */
static void
warn_value(struct ctx *x, const char *path, const char *fmt, ...)
{
	va_list	 ap;

	va_start(ap, fmt);
	vreport_to(&x->warns, &x->nwarns, x->name, at_value(x, path), path,
	    fmt, ap);
	va_end(ap);
}

/* missing - report required key absent from the object at parent */
static void
missing(struct ctx *x, const char *parent, const char *key)
{
	char	*child = path_key(parent, key);

	report(x, at_value(x, parent), child, "required key is missing");
	free(child);
}

static int
cerr_cmp(const void *a, const void *b)
{
	const struct cerr	*p = a, *q = b;

	if (p->at.line != q->at.line)
		return p->at.line < q->at.line ? -1 : 1;
	if (p->at.col != q->at.col)
		return p->at.col < q->at.col ? -1 : 1;
	return p->seq < q->seq ? -1 : p->seq > q->seq;
}

/* flush_errors - hand the errors to errs in file order */
static void
flush_errors(struct ctx *x, struct conf_errors *errs)
{
	if (x->nerrs > 1)
		qsort(x->errs, x->nerrs, sizeof *x->errs, cerr_cmp);
	for (size_t i = 0; i < x->nerrs; i++) {
		errors_add(errs, x->errs[i].text);
		x->errs[i].text = NULL;
	}
	free(x->errs);
	x->errs = NULL;
	x->nerrs = 0;
}

/*
 * Schema checks.  Each reports what it finds and returns whether the
 * value is usable; none stops the walk.
 */

static const char *
type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:	return "an object";
	case JSON_ARRAY:	return "an array";
	case JSON_STRING:	return "a string";
	case JSON_INTEGER:	return "an integer";
	case JSON_REAL:		return "a real number";
	case JSON_TRUE:
	case JSON_FALSE:	return "a boolean";
	case JSON_NULL:		return "null";
	}
	return "unknown";
}

static bool
in_list(const char *s, const char *const *list)
{
	for (; *list != NULL; list++)
		if (strcmp(s, *list) == 0)
			return true;
	return false;
}

static const char *want_string(struct ctx *, json_t *, const char *);

/* check_keys - report every key of obj that is not in known; "comment"
 * is allowed everywhere, as a string */
static void
check_keys(struct ctx *x, json_t *obj, const char *path,
    const char *const *known)
{
	struct buf	 names;
	const char	*key;
	json_t		*m;
	char		*child;

	buf_init(&names);
	for (size_t i = 0; known[i] != NULL; i++) {
		if (i > 0)
			buf_add(&names, ", ", 2);
		buf_add(&names, known[i], strlen(known[i]));
	}
	buf_add_u8(&names, '\0');
	json_object_foreach(obj, key, m) {
		if (in_list(key, known))
			continue;
		/* Every object may say what it is for. */
		if (strcmp(key, "comment") == 0) {
			child = path_key(path, key);
			want_string(x, m, child);
			free(child);
			continue;
		}
		child = path_key(path, key);
		report(x, at_key(x, child), child, "unknown key; expected one of %s",
		    (const char *)buf_head(&names));
		free(child);
	}
	buf_fini(&names);
}

static bool
want_type(struct ctx *x, json_t *v, const char *path, json_type t,
    const char *what)
{
	if (json_typeof(v) == t)
		return true;
	bad_value(x, path, "must be %s, not %s", what, type_name(v));
	return false;
}

/* want_string - the string at path (borrowed from v), or NULL, reported */
static const char *
want_string(struct ctx *x, json_t *v, const char *path)
{
	return want_type(x, v, path, JSON_STRING, "a string") ?
	    json_string_value(v) : NULL;
}

static bool
want_bool(struct ctx *x, json_t *v, const char *path, bool *out)
{
	if (!json_is_boolean(v)) {
		bad_value(x, path, "must be true or false, not %s",
		    type_name(v));
		return false;
	}
	*out = json_is_true(v);
	return true;
}

static bool
want_on_failure(struct ctx *x, json_t *v, const char *path,
    enum on_failure *out)
{
	const char	*s;
	char		*q;

	if ((s = want_string(x, v, path)) == NULL)
		return false;
	for (int i = 0; i < ONFAIL_COUNT; i++)
		if (strcmp(s, on_failure_names[i]) == 0) {
			*out = (enum on_failure)i;
			return true;
		}
	q = quote(s, QUOTE_MAX);
	bad_value(x, path, "%s is not one of accept, tempfail, reject", q);
	free(q);
	return false;
}

/* want_upstream_mode - "enforce", "monitor" or "shadow" */
static bool
want_upstream_mode(struct ctx *x, json_t *v, const char *path,
    enum upstream_mode *out)
{
	const char	*s;
	char		*q;

	if ((s = want_string(x, v, path)) == NULL)
		return false;
	for (int i = 0; i < MODE_COUNT; i++)
		if (strcmp(s, mode_names[i]) == 0) {
			*out = (enum upstream_mode)i;
			return true;
		}
	q = quote(s, QUOTE_MAX);
	bad_value(x, path, "%s is not one of enforce, monitor, shadow", q);
	free(q);
	return false;
}

/* want_range - an integer within lo..hi (unit names the unit) */
static bool
want_range(struct ctx *x, json_t *v, const char *path, long long lo,
    long long hi, const char *unit, long long *out)
{
	if (!want_type(x, v, path, JSON_INTEGER, "an integer"))
		return false;
	if (json_integer_value(v) < lo || json_integer_value(v) > hi) {
		bad_value(x, path, "%" JSON_INTEGER_FORMAT " is out of range "
		    "%lld..%lld%s", json_integer_value(v), lo, hi, unit);
		return false;
	}
	*out = (long long)json_integer_value(v);
	return true;
}

/* want_seconds - a timeout: integer or real, > 0 and <= TIMEOUT_MAX */
static bool
want_seconds(struct ctx *x, json_t *v, const char *path, double *out)
{
	double	 d;

	if (!json_is_number(v)) {
		bad_value(x, path, "must be a number of seconds, not %s",
		    type_name(v));
		return false;
	}
	d = json_number_value(v);
	if (!(d > 0 && d <= TIMEOUT_MAX)) {
		if (json_is_integer(v))
			bad_value(x, path, "%" JSON_INTEGER_FORMAT " is out of "
			    "range; must be more than 0 and at most %g seconds",
			    json_integer_value(v), TIMEOUT_MAX);
		else
			bad_value(x, path, "%g is out of range; must be more "
			    "than 0 and at most %g seconds", d, TIMEOUT_MAX);
		return false;
	}
	*out = d;
	return true;
}

/* want_grace - seconds that may be 0: integer or real, 0..TIMEOUT_MAX */
static bool
want_grace(struct ctx *x, json_t *v, const char *path, double *out)
{
	double	 d;

	if (!json_is_number(v)) {
		bad_value(x, path, "must be a number of seconds, not %s",
		    type_name(v));
		return false;
	}
	d = json_number_value(v);
	if (!(d >= 0 && d <= TIMEOUT_MAX)) {
		bad_value(x, path, "%g is out of range; must be from 0 to %g "
		    "seconds", d, TIMEOUT_MAX);
		return false;
	}
	*out = d;
	return true;
}

/* want_failures - a count of failures in a row, FAILURES_MIN..MAX */
static bool
want_failures(struct ctx *x, json_t *v, const char *path, unsigned *out)
{
	if (!want_type(x, v, path, JSON_INTEGER, "an integer"))
		return false;
	if (json_integer_value(v) < FAILURES_MIN ||
	    json_integer_value(v) > FAILURES_MAX) {
		bad_value(x, path, "%" JSON_INTEGER_FORMAT " is out of range "
		    "%d..%d", json_integer_value(v), FAILURES_MIN,
		    FAILURES_MAX);
		return false;
	}
	*out = (unsigned)json_integer_value(v);
	return true;
}

/*
 * want_max_mods - modification requests per upstream and message,
 * MAX_MODS_MIN..MAX_MODS_MAX
 */
static bool
want_max_mods(struct ctx *x, json_t *v, const char *path, unsigned *out)
{
	if (!want_type(x, v, path, JSON_INTEGER, "an integer"))
		return false;
	if (json_integer_value(v) < MAX_MODS_MIN ||
	    json_integer_value(v) > MAX_MODS_MAX) {
		bad_value(x, path, "%" JSON_INTEGER_FORMAT " is out of range "
		    "%d..%d", json_integer_value(v), MAX_MODS_MIN,
		    MAX_MODS_MAX);
		return false;
	}
	*out = (unsigned)json_integer_value(v);
	return true;
}

/* want_idle_max - idle connections kept per endpoint, 0..IDLE_MAX_MAX */
static bool
want_idle_max(struct ctx *x, json_t *v, const char *path, unsigned *out)
{
	if (!want_type(x, v, path, JSON_INTEGER, "an integer"))
		return false;
	if (json_integer_value(v) < 0 ||
	    json_integer_value(v) > IDLE_MAX_MAX) {
		bad_value(x, path, "%" JSON_INTEGER_FORMAT " is out of range "
		    "0..%d", json_integer_value(v), IDLE_MAX_MAX);
		return false;
	}
	*out = (unsigned)json_integer_value(v);
	return true;
}

/* parse_reuse - "reuse", "reuse_idle_max", "reuse_idle_timeout" of
 * object v (the top level or an upstream); path prefixes the keys */
static void
parse_reuse(struct ctx *x, json_t *v, const char *path, struct conf_reuse *r)
{
	json_t	*m;
	char	*child;

	if ((m = json_object_get(v, "reuse")) != NULL) {
		child = path_key(path, "reuse");
		want_bool(x, m, child, &r->enabled);
		free(child);
	}
	if ((m = json_object_get(v, "reuse_idle_max")) != NULL) {
		child = path_key(path, "reuse_idle_max");
		want_idle_max(x, m, child, &r->idle_max);
		free(child);
	}
	if ((m = json_object_get(v, "reuse_idle_timeout")) != NULL) {
		child = path_key(path, "reuse_idle_timeout");
		want_seconds(x, m, child, &r->idle_timeout);
		free(child);
	}
}

/*
 * want_mode - permission bits as a string of octal digits, as chmod(1)
 * takes them: a JSON number would be read as decimal, so 0660 (or 660)
 * would silently mean something else.
 */
static bool
want_mode(struct ctx *x, json_t *v, const char *path, int *out)
{
	const char	*s;
	char		*q;
	size_t		 n;
	unsigned long	 m;

	if (!json_is_string(v)) {
		bad_value(x, path, "must be a string of octal digits such as "
		    "\"0660\", not %s", type_name(v));
		return false;
	}
	s = json_string_value(v);
	n = strlen(s);
	q = quote(s, QUOTE_MAX);
	if (n == 0 || n > 4 || strspn(s, "01234567") != n) {
		bad_value(x, path, "%s is not a mode: use 1 to 4 octal digits "
		    "such as \"0660\"", q);
		free(q);
		return false;
	}
	m = strtoul(s, NULL, 8);
	if (m > 0777) {
		bad_value(x, path, "%s is out of range 0..0777: set-user-ID, "
		    "set-group-ID and sticky bits mean nothing on a socket", q);
		free(q);
		return false;
	}
	free(q);
	*out = (int)m;
	return true;
}

/* want_group - a group name that exists; its gid in *gid */
static bool
want_group(struct ctx *x, json_t *v, const char *path, gid_t *gid)
{
	struct group	 gr, *res = NULL;
	const char	*s;
	char		*buf, *q, eb[128];
	size_t		 len = 16384;
	int		 rc;

	if ((s = want_string(x, v, path)) == NULL)
		return false;
	for (;;) {
		buf = xmalloc(len);
		rc = getgrnam_r(s, &gr, buf, len, &res);
		if (rc != ERANGE || len >= GROUP_BUF_MAX)
			break;
		free(buf);
		len *= 2;
	}
	if (res != NULL)
		*gid = gr.gr_gid;
	free(buf);
	if (res != NULL)
		return true;
	q = quote(s, QUOTE_MAX);
	if (rc == 0 || rc == ENOENT || rc == ESRCH)
		bad_value(x, path, "%s: no such group", q);
	else
		bad_value(x, path, "%s: cannot look the group up: %s", q,
		    ERRNO_TEXT(rc, eb));
	free(q);
	return false;
}

/* parse_timeouts - override *t with the keys present in v */
static void
parse_timeouts(struct ctx *x, json_t *v, const char *path,
    struct conf_timeouts *t)
{
	json_t	*m;
	char	*child;
	double	 d;

	if (!want_type(x, v, path, JSON_OBJECT, "an object"))
		return;
	check_keys(x, v, path, timeout_keys);
	for (size_t i = 0; timeout_keys[i] != NULL; i++) {
		if ((m = json_object_get(v, timeout_keys[i])) == NULL)
			continue;
		child = path_key(path, timeout_keys[i]);
		if (want_seconds(x, m, child, &d))
			*timeout_slot(t, i) = d;
		free(child);
	}
}

/* check_address - parse spec at path into *a; see addr_parse for rc */
static int	addr_parse(const char *, struct conf_addr *, char *, size_t);

static bool
check_address(struct ctx *x, const char *path, const char *spec,
    struct conf_addr *a, bool must_resolve)
{
	char	 eb[256], *q;
	int	 rc;

	if ((rc = addr_parse(spec, a, eb, sizeof eb)) == 0)
		return true;
	/*
	 * A disabled upstream is often one whose host is gone: its syntax
	 * is still checked, but it need not resolve.
	 */
	if (rc == -ENOENT && !must_resolve) {
		memset(a, 0, sizeof *a);
		return true;
	}
	q = quote(spec, QUOTE_MAX);
	bad_value(x, path, "%s: %s", q, eb);
	free(q);
	return false;
}

/* same_addr - whether two resolved addresses are one socket */
static bool
same_addr(const struct conf_addr *a, const struct conf_addr *b)
{
	return a->salen != 0 && a->salen == b->salen &&
	    memcmp(&a->sa, &b->sa, a->salen) == 0;
}

/*
 * parse_replicas - an upstream's "address": one string (one replica,
 * known by the upstream's name alone) or an array of them (a pool,
 * each replica known as "NAME[ADDRESS]").  u->name may still be NULL
 * (a bad name is reported elsewhere): the labels are set by the caller.
 */
static void
parse_replicas(struct ctx *x, json_t *m, const char *path,
    struct conf_upstream *u)
{
	struct conf_replica	*r;
	const char		*s;
	char			*child, *q;
	size_t			 n, j, k, *at;

	if (json_is_string(m)) {
		s = json_string_value(m);
		r = xcalloc(1, sizeof *r);
		if (!check_address(x, path, s, &r->addr, u->enabled)) {
			free(r);
			return;
		}
		r->address = xstrdup(s);
		u->replicas = r;
		u->nreplicas = 1;
		u->address = xstrdup(s);
		u->addr = r->addr;
		return;
	}
	if (!json_is_array(m)) {
		bad_value(x, path, "must be a string or an array of strings, "
		    "not %s", type_name(m));
		return;
	}
	if ((n = json_array_size(m)) == 0) {
		bad_value(x, path, "is an empty array: give at least one "
		    "address");
		return;
	}
	if (n > CONF_REPLICAS_MAX) {
		bad_value(x, path, "lists %zu addresses; at most %d are "
		    "allowed", n, CONF_REPLICAS_MAX);
		return;
	}
	r = xcalloc(n, sizeof *r);
	at = xcalloc(n, sizeof *at);	/* r[k] is element at[k] */
	for (j = k = 0; j < n; j++) {
		child = path_index(path, j);
		if ((s = want_string(x, json_array_get(m, j), child)) == NULL ||
		    !check_address(x, child, s, &r[k].addr, u->enabled)) {
			free(child);
			continue;
		}
		for (size_t i = 0; i < k; i++) {
			if (strcmp(r[i].address, s) == 0 ||
			    same_addr(&r[i].addr, &r[k].addr)) {
				q = quote(s, QUOTE_MAX);
				bad_value(x, child, "%s is the same socket as "
				    "%s[%zu]", q, path, at[i]);
				free(q);
				s = NULL;
				break;
			}
		}
		free(child);
		if (s == NULL)
			continue;
		r[k].address = xstrdup(s);
		at[k++] = j;
	}
	free(at);
	if (k < n) {
		for (j = 0; j < k; j++)
			free(r[j].address);
		free(r);
		return;
	}
	u->replicas = r;
	u->nreplicas = n;
	u->pool = true;
	u->address = xstrdup(r[0].address);
	u->addr = r[0].addr;
}

static bool
is_macro_name(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s != '\0'; s++)
		if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
			return false;
	return true;
}

/* parse_macro_list - the names for one macro stage */
static void
parse_macro_list(struct ctx *x, json_t *v, const char *path, int stage)
{
	struct conf	*c = x->c;
	json_t		*e;
	const char	*s;
	char		*ep, *q, **list;
	size_t		 i, j, n, k = 0;

	if (!want_type(x, v, path, JSON_ARRAY, "an array of macro names"))
		return;
	if ((n = json_array_size(v)) > MACROS_MAX) {
		bad_value(x, path, "lists %zu macro names; at most %d are "
		    "allowed per stage", n, MACROS_MAX);
		return;
	}
	list = xcalloc(n + 1, sizeof *list);
	json_array_foreach(v, i, e) {
		ep = path_index(path, i);
		if ((s = want_string(x, e, ep)) == NULL)
			goto next;
		q = quote(s, QUOTE_MAX);
		if (!is_macro_name(s)) {
			bad_value(x, ep, "%s is not a macro name: use printable "
			    "ASCII without spaces, such as \"{auth_authen}\"", q);
			goto next_q;
		}
		for (j = 0; j < i; j++)
			if (json_is_string(json_array_get(v, j)) && strcmp(s,
			    json_string_value(json_array_get(v, j))) == 0)
				break;
		if (j < i) {
			bad_value(x, ep, "%s is listed twice (first at "
			    "%s[%zu])", q, path, j);
			goto next_q;
		}
		list[k++] = xstrdup(s);
next_q:
		free(q);
next:
		free(ep);
	}
	free(c->macros[stage]);
	c->macros[stage] = list;
	c->nmacros[stage] = k;
}

static void
parse_macros(struct ctx *x, json_t *v)
{
	json_t	*m;
	char	*path;

	if (!want_type(x, v, "macros", JSON_OBJECT, "an object"))
		return;
	check_keys(x, v, "macros", macro_keys);
	for (size_t i = 0; macro_keys[i] != NULL; i++) {
		if ((m = json_object_get(v, macro_keys[i])) == NULL)
			continue;
		path = path_key("macros", macro_keys[i]);
		parse_macro_list(x, m, path,
		    proto_macro_stage_lookup(macro_keys[i]));
		free(path);
	}
}

static bool
is_upstream_name(const char *s)
{
	size_t	 n = strlen(s);

	if (n < 1 || n > UPSTREAM_NAME_MAX)
		return false;
	for (; *s != '\0'; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		    (*s >= '0' && *s <= '9') || *s == '_' || *s == '.' ||
		    *s == '-'))
			return false;
	return true;
}

/* count_phases - how many distinct phases the enabled upstreams use */
static void
count_phases(struct conf *c)
{
	c->nphases = 0;
	for (size_t i = 0; i < c->nupstreams; i++) {
		size_t	 j;

		if (!c->upstreams[i].enabled)
			continue;
		for (j = 0; j < i; j++)
			if (c->upstreams[j].enabled &&
			    c->upstreams[j].phase == c->upstreams[i].phase)
				break;
		if (j == i)
			c->nphases++;
	}
}

/* parse_replay - where a message is kept for later phases */
static void
parse_replay(struct ctx *x, json_t *v)
{
	struct conf	*c = x->c;
	json_t		*m;
	const char	*s;
	char		*q;

	if (!want_type(x, v, "replay", JSON_OBJECT, "an object"))
		return;
	check_keys(x, v, "replay", replay_keys);
	if ((m = json_object_get(v, "memory")) != NULL &&
	    want_type(x, m, "replay.memory", JSON_INTEGER, "an integer")) {
		if (json_integer_value(m) < 0 ||
		    json_integer_value(m) > REPLAY_MEMORY_MAX)
			bad_value(x, "replay.memory", "%" JSON_INTEGER_FORMAT
			    " is out of range 0..%lld bytes",
			    json_integer_value(m), REPLAY_MEMORY_MAX);
		else
			c->replay_memory = (size_t)json_integer_value(m);
	}
	if ((m = json_object_get(v, "directory")) != NULL &&
	    (s = want_string(x, m, "replay.directory")) != NULL) {
		q = quote(s, QUOTE_MAX);
		if (s[0] != '/')
			bad_value(x, "replay.directory", "%s is not an "
			    "absolute path", q);
		else {
			free(c->replay_dir);
			c->replay_dir = xstrdup(s);
		}
		free(q);
	}
}

/* parse_metrics - the HTTP listener of metrics and health: TCP only */
static void
parse_metrics(struct ctx *x, json_t *v)
{
	struct conf	*c = x->c;
	json_t		*m;
	const char	*s;
	char		*q;

	if (!want_type(x, v, "metrics", JSON_OBJECT, "an object"))
		return;
	check_keys(x, v, "metrics", metrics_keys);
	if ((m = json_object_get(v, "listen")) == NULL) {
		bad_value(x, "metrics", "has no \"listen\"; say where to "
		    "serve, e.g. \"inet:9899@127.0.0.1\", or remove "
		    "\"metrics\" to turn it off");
		return;
	}
	if ((s = want_string(x, m, "metrics.listen")) == NULL ||
	    !check_address(x, "metrics.listen", s, &c->metrics_addr, true))
		return;
	if (c->metrics_addr.sa.ss_family != AF_INET &&
	    c->metrics_addr.sa.ss_family != AF_INET6) {
		q = quote(s, QUOTE_MAX);
		bad_value(x, "metrics.listen", "%s: HTTP is served on TCP "
		    "only: use inet:PORT@HOST or inet6:PORT@HOST", q);
		free(q);
		return;
	}
	free(c->metrics_listen);
	c->metrics_listen = xstrdup(s);
}

/* parse_domains - a list of domains, lower-cased into *out */
static bool
parse_domains(struct ctx *x, json_t *v, const char *path, char ***out,
    size_t *n)
{
	json_t		*e;
	const char	*s;
	char		*ep, *q, *d;
	size_t		 i;

	if (!want_type(x, v, path, JSON_ARRAY, "an array of domains"))
		return false;
	if (json_array_size(v) == 0) {
		bad_value(x, path, "is empty: it would never match");
		return false;
	}
	*out = xcalloc(json_array_size(v), sizeof **out);
	json_array_foreach(v, i, e) {
		ep = path_index(path, i);
		if ((s = want_string(x, e, ep)) != NULL) {
			if (!cond_is_domain(s)) {
				q = quote(s, QUOTE_MAX);
				bad_value(x, ep, "%s is not a domain (such as "
				    "\"example.org\", or \".example.org\" for "
				    "the domains below it)", q);
				free(q);
			} else {
				d = xstrdup(s);
				for (char *p = d; *p != '\0'; p++)
					if (*p >= 'A' && *p <= 'Z')
						*p = (char)(*p - 'A' + 'a');
				(*out)[(*n)++] = d;
			}
		}
		free(ep);
	}
	return true;
}

/* parse_cond - an "apply_if" or "skip_if" object into *c */
static void
parse_cond(struct ctx *x, json_t *v, const char *path, struct cond *c)
{
	json_t		*m, *e;
	const char	*s, *key;
	char		*child, *ep, *q;
	size_t		 i;

	if (!want_type(x, v, path, JSON_OBJECT, "an object of conditions"))
		return;
	check_keys(x, v, path, cond_keys);
	c->set = true;
	if (json_object_size(v) == 0 ||
	    (json_object_size(v) == 1 && json_object_get(v, "comment") != NULL))
		bad_value(x, path, "has no condition: use one or more of "
		    "client, auth, sender_domain, rcpt_domain, macro, size_over");
	if ((m = json_object_get(v, "client")) != NULL) {
		child = path_key(path, "client");
		if (want_type(x, m, child, JSON_ARRAY, "an array of CIDRs")) {
			c->has_client = true;
			if (json_array_size(m) == 0)
				bad_value(x, child, "is empty: it would never "
				    "match");
			c->nets = xcalloc(json_array_size(m) + 1,
			    sizeof *c->nets);
			json_array_foreach(m, i, e) {
				ep = path_index(child, i);
				if ((s = want_string(x, e, ep)) != NULL &&
				    cond_parse_net(s, &c->nets[c->nnets]) != 0) {
					q = quote(s, QUOTE_MAX);
					bad_value(x, ep, "%s is not a CIDR (an "
					    "IPv4 or IPv6 address, then "
					    "/bits, with no bits set below "
					    "them: \"10.0.0.0/8\", \"::1/128\")",
					    q);
					free(q);
				} else if (s != NULL)
					c->nnets++;
				free(ep);
			}
		}
		free(child);
	}
	if ((m = json_object_get(v, "auth")) != NULL) {
		bool	 b;

		child = path_key(path, "auth");
		if (want_bool(x, m, child, &b))
			c->auth = b ? 1 : 0;
		free(child);
	}
	if ((m = json_object_get(v, "sender_domain")) != NULL) {
		child = path_key(path, "sender_domain");
		c->has_sender = parse_domains(x, m, child, &c->senders,
		    &c->nsenders);
		free(child);
	}
	if ((m = json_object_get(v, "rcpt_domain")) != NULL) {
		child = path_key(path, "rcpt_domain");
		c->has_rcpt = parse_domains(x, m, child, &c->rcpts,
		    &c->nrcpts);
		free(child);
	}
	if ((m = json_object_get(v, "macro")) != NULL) {
		child = path_key(path, "macro");
		if (want_type(x, m, child, JSON_OBJECT,
		    "an object of macro names and values")) {
			if (json_object_size(m) == 0)
				bad_value(x, child, "is empty");
			c->macros = xcalloc(json_object_size(m) + 1,
			    sizeof *c->macros);
			json_object_foreach(m, key, e) {
				ep = path_key(child, key);
				if (!is_macro_name(key)) {
					q = quote(key, QUOTE_MAX);
					report(x, at_key(x, ep), ep, "%s is not "
					    "a macro name: use printable ASCII "
					    "without spaces, such as "
					    "\"{daemon_name}\"", q);
					free(q);
				} else if ((s = want_string(x, e, ep)) != NULL) {
					c->macros[c->nmacros].name =
					    xstrdup(key);
					c->macros[c->nmacros++].value =
					    xstrdup(s);
				}
				free(ep);
			}
		}
		free(child);
	}
	if ((m = json_object_get(v, "size_over")) != NULL) {
		child = path_key(path, "size_over");
		if (want_type(x, m, child, JSON_INTEGER, "an integer")) {
			if (json_integer_value(m) < 0)
				bad_value(x, child, "%" JSON_INTEGER_FORMAT
				    " is negative: give bytes", 
				    json_integer_value(m));
			else
				c->size_over = (long long)json_integer_value(m);
		}
		free(child);
	}
}

/* parse_actions - the kinds of modification an upstream may make */
static void
parse_actions(struct ctx *x, json_t *v, const char *path,
    struct conf_upstream *u)
{
	json_t		*e;
	const char	*s;
	char		*ep, *q;
	size_t		 i;
	int		 k;

	if (!want_type(x, v, path, JSON_ARRAY, "an array of action names"))
		return;
	u->actions = 0;
	u->actions_set = true;
	json_array_foreach(v, i, e) {
		ep = path_index(path, i);
		if ((s = want_string(x, e, ep)) != NULL) {
			for (k = 0; k < MOD_KIND_COUNT; k++)
				if (strcmp(s, codec_mod_kind_name(
				    (enum mod_kind)k)) == 0)
					break;
			if (k == MOD_KIND_COUNT) {
				q = quote(s, QUOTE_MAX);
				bad_value(x, ep, "%s is not an action; expected "
				    "one of addheader, insheader, chgheader, "
				    "addrcpt, addrcpt_par, delrcpt, chgfrom, "
				    "replbody, quarantine", q);
				free(q);
			} else {
				u->actions |= 1u << k;
				/* Adding a recipient covers both forms. */
				if (k == MOD_ADDRCPT)
					u->actions |= 1u << MOD_ADDRCPT_PAR;
			}
		}
		free(ep);
	}
}

/* parse_verdicts - what an upstream's verdicts become */
static void
parse_verdicts(struct ctx *x, json_t *v, const char *path,
    struct conf_upstream *u)
{
	json_t		*e, *h;
	const char	*key, *s, *colon;
	char		*ep, *hp, *q;
	int		 from, to;

	if (!want_type(x, v, path, JSON_OBJECT, "an object"))
		return;
	check_keys(x, v, path, vmap_from);
	u->verdicts_set = true;
	json_object_foreach(v, key, e) {
		if (!in_list(key, vmap_from))
			continue;
		from = strcmp(key, "reject") == 0 ? VERDICT_REJECT :
		    strcmp(key, "tempfail") == 0 ? VERDICT_TEMPFAIL :
		    VERDICT_DISCARD;
		ep = path_key(path, key);
		if (json_is_string(e)) {
			s = json_string_value(e);
			to = strcmp(s, "continue") == 0 ? VERDICT_CONTINUE :
			    strcmp(s, "discard") == 0 ? VERDICT_DISCARD :
			    strcmp(s, "tempfail") == 0 ? VERDICT_TEMPFAIL :
			    strcmp(s, "reject") == 0 ? VERDICT_REJECT :
			    VERDICT_NONE;
			if (to == VERDICT_NONE) {
				q = quote(s, QUOTE_MAX);
				bad_value(x, ep, "%s is not a verdict; expected "
				    "continue, discard, tempfail, reject, or "
				    "{\"addheader\": \"Name: value\"}", q);
				free(q);
			} else if (to != from)
				u->verdicts[from].to = (enum verdict)to;
		} else if (json_is_object(e)) {
			check_keys(x, e, ep, (const char *const[]){
			    "addheader", NULL });
			if ((h = json_object_get(e, "addheader")) == NULL)
				missing(x, ep, "addheader");
			else {
				hp = path_key(ep, "addheader");
				if ((s = want_string(x, h, hp)) != NULL) {
					colon = strchr(s, ':');
					if (colon == NULL || colon == s ||
					    strcspn(s, " \t\r\n") <
					    (size_t)(colon - s) ||
					    strpbrk(s, "\r\n") != NULL) {
						q = quote(s, QUOTE_MAX);
						bad_value(x, hp, "%s is not a "
						    "header: write \"Name: "
						    "value\" on one line", q);
						free(q);
					} else {
						u->verdicts[from].to =
						    VERDICT_CONTINUE;
						u->verdicts[from].hname =
						    xstrndup(s,
						    (size_t)(colon - s));
						colon++;
						while (*colon == ' ' ||
						    *colon == '\t')
							colon++;
						u->verdicts[from].hvalue =
						    xstrdup(colon);
					}
				}
				free(hp);
			}
		} else
			bad_value(x, ep, "must be a verdict name or "
			    "{\"addheader\": \"Name: value\"}, not %s",
			    type_name(e));
		free(ep);
	}
}

/*
 * parse_shadow_queue - the bounds of a shadow upstream's queue; given
 * for another mode they would mean nothing, which is an error
 */
static void
parse_shadow_queue(struct ctx *x, json_t *v, const char *path,
    struct conf_upstream *u)
{
	static const char *const keys[] = { "shadow_queue",
	    "shadow_queue_bytes" };
	json_t		*m;
	char		*child;
	long long	 n;

	for (size_t k = 0; k < 2; k++) {
		if ((m = json_object_get(v, keys[k])) == NULL)
			continue;
		child = path_key(path, keys[k]);
		if (u->mode != MODE_SHADOW)
			bad_value(x, child, "applies only to an upstream "
			    "with \"mode\": \"shadow\"");
		else if (k == 0 && want_range(x, m, child, 1,
		    SHADOW_QUEUE_MAX, " messages", &n))
			u->shadow_queue = (unsigned)n;
		else if (k == 1 && want_range(x, m, child,
		    SHADOW_BYTES_MIN, SHADOW_BYTES_MAX, " bytes", &n))
			u->shadow_queue_bytes = (size_t)n;
		free(child);
	}
}

/* parse_upstream - fill c->upstreams[i] from v */
static void
parse_upstream(struct ctx *x, json_t *v, size_t i)
{
	struct conf		*c = x->c;
	struct conf_upstream	*u = &c->upstreams[i];
	json_t			*m;
	const char		*s;
	char			*path, *child, *q;
	size_t			 j;

	u->enabled = true;
	u->on_failure = c->on_failure;
	u->timeouts = c->timeouts;
	u->phase = CONF_DEFAULT_PHASE;
	u->failures = c->failures;
	u->retry_after = c->retry_after;
	u->max_mods = c->max_mods;
	u->actions = CONF_ACTIONS_ALL;
	cond_init(&u->apply_if);
	cond_init(&u->skip_if);
	u->mode = MODE_ENFORCE;
	u->shadow_queue = CONF_DEFAULT_SHADOW_QUEUE;
	u->shadow_queue_bytes = CONF_DEFAULT_SHADOW_BYTES;
	u->reuse = c->reuse;
	path = path_index("upstreams", i);
	if (!want_type(x, v, path, JSON_OBJECT, "an object"))
		goto out;
	check_keys(x, v, path, upstream_keys);

	if ((m = json_object_get(v, "enabled")) != NULL) {
		child = path_key(path, "enabled");
		want_bool(x, m, child, &u->enabled);
		free(child);
	}

	child = path_key(path, "name");
	if ((m = json_object_get(v, "name")) == NULL)
		missing(x, path, "name");
	else if ((s = want_string(x, m, child)) != NULL) {
		q = quote(s, QUOTE_MAX);
		for (j = 0; j < i; j++)
			if (c->upstreams[j].name != NULL &&
			    strcmp(c->upstreams[j].name, s) == 0)
				break;
		if (!is_upstream_name(s))
			bad_value(x, child, "%s is not a valid upstream name: "
			    "use 1 to %d letters, digits, \"_\", \".\" or \"-\"",
			    q, UPSTREAM_NAME_MAX);
		else if (j < i)
			bad_value(x, child, "%s is already the name of "
			    "upstreams[%zu]", q, j);
		else
			u->name = xstrdup(s);
		free(q);
	}
	free(child);

	child = path_key(path, "address");
	if ((m = json_object_get(v, "address")) == NULL)
		missing(x, path, "address");
	else
		parse_replicas(x, m, child, u);
	free(child);

	if ((m = json_object_get(v, "phase")) != NULL) {
		child = path_key(path, "phase");
		if (want_type(x, m, child, JSON_INTEGER, "an integer")) {
			if (json_integer_value(m) < 1 ||
			    json_integer_value(m) > PHASE_MAX)
				bad_value(x, child, "%" JSON_INTEGER_FORMAT
				    " is out of range 1..%d",
				    json_integer_value(m), PHASE_MAX);
			else
				u->phase = (unsigned)json_integer_value(m);
		}
		free(child);
	}
	if ((m = json_object_get(v, "on_failure")) != NULL) {
		child = path_key(path, "on_failure");
		want_on_failure(x, m, child, &u->on_failure);
		free(child);
	}
	if ((m = json_object_get(v, "failures")) != NULL) {
		child = path_key(path, "failures");
		want_failures(x, m, child, &u->failures);
		free(child);
	}
	if ((m = json_object_get(v, "retry_after")) != NULL) {
		child = path_key(path, "retry_after");
		want_seconds(x, m, child, &u->retry_after);
		free(child);
	}
	if ((m = json_object_get(v, "max_modifications")) != NULL) {
		child = path_key(path, "max_modifications");
		want_max_mods(x, m, child, &u->max_mods);
		free(child);
	}
	parse_reuse(x, v, path, &u->reuse);
	if ((m = json_object_get(v, "timeouts")) != NULL) {
		child = path_key(path, "timeouts");
		parse_timeouts(x, m, child, &u->timeouts);
		free(child);
	}
	if ((m = json_object_get(v, "apply_if")) != NULL) {
		child = path_key(path, "apply_if");
		parse_cond(x, m, child, &u->apply_if);
		free(child);
	}
	if ((m = json_object_get(v, "skip_if")) != NULL) {
		child = path_key(path, "skip_if");
		parse_cond(x, m, child, &u->skip_if);
		free(child);
	}
	u->cond_session = cond_has_session_key(&u->apply_if) ||
	    cond_has_session_key(&u->skip_if);
	u->cond_rcpt = (u->apply_if.set && u->apply_if.has_rcpt) ||
	    (u->skip_if.set && u->skip_if.has_rcpt);
	if ((m = json_object_get(v, "actions")) != NULL) {
		child = path_key(path, "actions");
		parse_actions(x, m, child, u);
		free(child);
	}
	if ((m = json_object_get(v, "verdicts")) != NULL) {
		child = path_key(path, "verdicts");
		parse_verdicts(x, m, child, u);
		free(child);
	}
	for (size_t r = 0; u->name != NULL && r < u->nreplicas; r++)
		u->replicas[r].label = u->pool ? xasprintf("%s[%s]", u->name,
		    u->replicas[r].address) : xstrdup(u->name);
	if ((m = json_object_get(v, "mode")) != NULL) {
		child = path_key(path, "mode");
		want_upstream_mode(x, m, child, &u->mode);
		free(child);
	}
	parse_shadow_queue(x, v, path, u);
out:
	free(path);
}

static void
parse_upstreams(struct ctx *x, json_t *v)
{
	struct conf	*c = x->c;
	json_t		*e, *en;
	size_t		 i, maybe = 0;

	if (v == NULL) {
		missing(x, "", "upstreams");
		return;
	}
	if (!want_type(x, v, "upstreams", JSON_ARRAY, "an array"))
		return;
	c->nupstreams = json_array_size(v);
	c->upstreams = xcalloc(c->nupstreams, sizeof *c->upstreams);
	json_array_foreach(v, i, e) {
		parse_upstream(x, e, i);
		if (c->upstreams[i].enabled)
			c->nenabled++;
		/* Not to pile a second error on a malformed entry. */
		en = json_is_object(e) ? json_object_get(e, "enabled") : NULL;
		if (en == NULL || !json_is_false(en))
			maybe++;
	}
	if (c->nupstreams == 0)
		bad_value(x, "upstreams", "is empty; at least one enabled "
		    "upstream is required");
	else if (maybe == 0)
		bad_value(x, "upstreams", "no upstream is enabled; at least "
		    "one enabled upstream is required");
}

static void
parse_top(struct ctx *x, json_t *root)
{
	struct conf		*c = x->c;
	struct conf_addr	 addr;
	json_t			*v;
	const char		*s;

	check_keys(x, root, "", top_keys);

	if ((v = json_object_get(root, "listen")) != NULL &&
	    (s = want_string(x, v, "listen")) != NULL &&
	    check_address(x, "listen", s, &addr, true)) {
		free(c->listen);
		c->listen = xstrdup(s);
	}
	if ((v = json_object_get(root, "socket_mode")) != NULL)
		want_mode(x, v, "socket_mode", &c->socket_mode);
	if ((v = json_object_get(root, "socket_group")) != NULL &&
	    want_group(x, v, "socket_group", &c->socket_gid))
		c->socket_group = xstrdup(json_string_value(v));

	if ((v = json_object_get(root, "threads")) != NULL &&
	    want_type(x, v, "threads", JSON_INTEGER, "an integer")) {
		if (json_integer_value(v) < THREADS_MIN ||
		    json_integer_value(v) > THREADS_MAX)
			bad_value(x, "threads", "%" JSON_INTEGER_FORMAT " is out "
			    "of range %d..%d", json_integer_value(v),
			    THREADS_MIN, THREADS_MAX);
		else
			c->threads = (unsigned)json_integer_value(v);
	}

	if ((v = json_object_get(root, "max_sessions")) != NULL &&
	    want_type(x, v, "max_sessions", JSON_INTEGER, "an integer")) {
		if (json_integer_value(v) < SESSIONS_MIN ||
		    json_integer_value(v) > SESSIONS_MAX)
			bad_value(x, "max_sessions", "%" JSON_INTEGER_FORMAT
			    " is out of range %d..%d", json_integer_value(v),
			    SESSIONS_MIN, SESSIONS_MAX);
		else
			c->max_sessions = (unsigned)json_integer_value(v);
	}

	if ((v = json_object_get(root, "log_format")) != NULL &&
	    (s = want_string(x, v, "log_format")) != NULL) {
		if (strcmp(s, "text") == 0)
			c->log_json = false;
		else if (strcmp(s, "json") == 0)
			c->log_json = true;
		else
			bad_value(x, "log_format", "\"%s\" is not a log "
			    "format; expected text or json", s);
	}

	/* Upstreams inherit these, so they come first. */
	if ((v = json_object_get(root, "timeouts")) != NULL)
		parse_timeouts(x, v, "timeouts", &c->timeouts);
	if ((v = json_object_get(root, "on_failure")) != NULL)
		want_on_failure(x, v, "on_failure", &c->on_failure);
	if ((v = json_object_get(root, "failures")) != NULL)
		want_failures(x, v, "failures", &c->failures);
	if ((v = json_object_get(root, "retry_after")) != NULL)
		want_seconds(x, v, "retry_after", &c->retry_after);
	if ((v = json_object_get(root, "max_modifications")) != NULL)
		want_max_mods(x, v, "max_modifications", &c->max_mods);
	if ((v = json_object_get(root, "shutdown_grace")) != NULL)
		want_grace(x, v, "shutdown_grace", &c->shutdown_grace);
	parse_reuse(x, root, "", &c->reuse);

	if ((v = json_object_get(root, "macros")) != NULL)
		parse_macros(x, v);
	if ((v = json_object_get(root, "replay")) != NULL)
		parse_replay(x, v);
	if ((v = json_object_get(root, "metrics")) != NULL)
		parse_metrics(x, v);
	parse_upstreams(x, json_object_get(root, "upstreams"));
	count_phases(c);
}

/*
 * Budget checks.  Each MTA reply costs miltermux at most one of its
 * timeouts (the longest among the upstreams): the answer to the option
 * negotiation the connect timeout, the answer to an envelope command,
 * header or body chunk the command timeout, and the end of message the
 * content timeout, during which progress packets go out every second.
 * A timeout that is not below what the MTA waits by default (CONF_*
 * in conf.h) is worth a warning, not an error: the MTA may be set to
 * wait longer.
 */

/* warned - was a warning already given about this path? */
static bool
warned(char **seen, size_t n, const char *path)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(seen[i], path) == 0)
			return true;
	return false;
}

/* budget_warn - warn about timeout key k at path if d does not fit */
static void
budget_warn(struct ctx *x, const char *path, size_t k, double d)
{
	static const char *const waits[] = {
		"the option negotiation", "a command, header or body chunk",
		"the end of message",
	};

	if (k == 2) {
		if (d >= CONF_SENDMAIL_EOM)
			warn_value(x, path, "warning: %g s is not less than "
			    "Sendmail's default wait for %s, %g s (T=E:5m); "
			    "Sendmail may give up before miltermux answers",
			    d, waits[k], CONF_SENDMAIL_EOM);
		return;
	}
	if (d >= CONF_POSTFIX_COMMAND)
		warn_value(x, path, "warning: %g s is not less than Sendmail's "
		    "default wait for the answer to %s, %g s (T=R:10s), nor "
		    "Postfix's, %g s (milter_command_timeout); the MTA may "
		    "give up before miltermux answers", d, waits[k],
		    CONF_SENDMAIL_READ, CONF_POSTFIX_COMMAND);
	else if (d >= CONF_SENDMAIL_READ)
		warn_value(x, path, "warning: %g s is not less than Sendmail's "
		    "default wait for the answer to %s, %g s (T=R:10s); "
		    "Sendmail may give up before miltermux answers", d,
		    waits[k], CONF_SENDMAIL_READ);
}

/*
 * check_phase_sum - each phase has its own content budget at end of
 * message and the MTA waits for them all: warn when the largest
 * content timeout of each phase, summed, reaches Sendmail's limit on
 * the whole end of message (one phase alone is budget_warn's)
 */
static void
check_phase_sum(struct ctx *x)
{
	struct conf	*c = x->c;
	double		 sum = 0, most;
	unsigned	 ph = 0, next, nph = 0;

	for (;;) {
		next = 0;
		for (size_t i = 0; i < c->nupstreams; i++)
			if (c->upstreams[i].enabled &&
			    c->upstreams[i].phase > ph &&
			    (next == 0 || c->upstreams[i].phase < next))
				next = c->upstreams[i].phase;
		if (next == 0)
			break;
		most = 0;
		for (size_t i = 0; i < c->nupstreams; i++)
			if (c->upstreams[i].enabled &&
			    c->upstreams[i].phase == next &&
			    c->upstreams[i].timeouts.content > most)
				most = c->upstreams[i].timeouts.content;
		sum += most;
		nph++;
		ph = next;
	}
	if (nph > 1 && sum >= CONF_SENDMAIL_EOM)
		warn_value(x, "upstreams", "warning: the end of message may "
		    "take %g s over %u phases (each phase's largest content "
		    "timeout, added up), not less than Sendmail's default wait "
		    "for it, %g s (T=E:5m); Sendmail may give up before "
		    "miltermux answers", sum, nph, CONF_SENDMAIL_EOM);
}

/*
 * check_budgets - warn about every timeout an enabled upstream uses
 * that does not fit the MTAs' defaults, once per place in the file
 * where it was set (an inherited top-level value is named as such)
 */
static void
check_budgets(struct ctx *x, json_t *root)
{
	struct conf	*c = x->c;
	json_t		*ups = json_object_get(root, "upstreams"), *t;
	char		**seen = NULL, *path;
	size_t		 nseen = 0;

	for (size_t i = 0; i < c->nupstreams; i++) {
		if (!c->upstreams[i].enabled)
			continue;
		t = json_object_get(json_array_get(ups, i), "timeouts");
		for (size_t k = 0; timeout_keys[k] != NULL; k++) {
			if (t != NULL &&
			    json_object_get(t, timeout_keys[k]) != NULL)
				path = xasprintf("upstreams[%zu].timeouts.%s",
				    i, timeout_keys[k]);
			else
				path = xasprintf("timeouts.%s",
				    timeout_keys[k]);
			if (warned(seen, nseen, path)) {
				free(path);
				continue;
			}
			seen = xreallocarray(seen, nseen + 1, sizeof *seen);
			seen[nseen++] = path;
			budget_warn(x, path, k,
			    timeout_get(&c->upstreams[i].timeouts, k));
		}
	}
	for (size_t i = 0; i < nseen; i++)
		free(seen[i]);
	free(seen);
	check_phase_sum(x);
}

/* flush_warnings - hand the warnings to the snapshot in file order */
static void
flush_warnings(struct ctx *x, struct conf *c)
{
	if (x->nwarns > 1)
		qsort(x->warns, x->nwarns, sizeof *x->warns, cerr_cmp);
	if (c != NULL && x->nwarns > 0)
		c->warnings = xcalloc(x->nwarns, sizeof *c->warnings);
	for (size_t i = 0; i < x->nwarns; i++) {
		if (c != NULL)
			c->warnings[c->nwarnings++] = x->warns[i].text;
		else
			free(x->warns[i].text);
		x->warns[i].text = NULL;
	}
	free(x->warns);
	x->warns = NULL;
	x->nwarns = 0;
}

/* conf_free - release a snapshot and every string in it */
static void
conf_free(struct conf *c)
{
	if (c == NULL)
		return;
	free(c->path); c->path = NULL;
	free(c->listen); c->listen = NULL;
	free(c->replay_dir); c->replay_dir = NULL;
	free(c->metrics_listen); c->metrics_listen = NULL;
	free(c->socket_group); c->socket_group = NULL;
	for (size_t i = 0; i < c->nwarnings; i++) {
		free(c->warnings[i]); c->warnings[i] = NULL;
	}
	free(c->warnings); c->warnings = NULL;
	for (int s = 0; s < MACRO_STAGE_COUNT; s++) {
		for (size_t i = 0; i < c->nmacros[s]; i++) {
			free(c->macros[s][i]); c->macros[s][i] = NULL;
		}
		free(c->macros[s]); c->macros[s] = NULL;
	}
	for (size_t i = 0; i < c->nupstreams; i++) {
		free(c->upstreams[i].name); c->upstreams[i].name = NULL;
		free(c->upstreams[i].address); c->upstreams[i].address = NULL;
		cond_fini(&c->upstreams[i].apply_if);
		cond_fini(&c->upstreams[i].skip_if);
		for (int v = 0; v < VERDICT_COUNT; v++) {
			free(c->upstreams[i].verdicts[v].hname);
			c->upstreams[i].verdicts[v].hname = NULL;
			free(c->upstreams[i].verdicts[v].hvalue);
			c->upstreams[i].verdicts[v].hvalue = NULL;
		}
		for (size_t r = 0; r < c->upstreams[i].nreplicas; r++) {
			free(c->upstreams[i].replicas[r].address);
			free(c->upstreams[i].replicas[r].label);
		}
		free(c->upstreams[i].replicas);
		c->upstreams[i].replicas = NULL;
	}
	free(c->upstreams); c->upstreams = NULL;
	free(c);
}

/* conf_new - a snapshot holding every default, one reference */
static struct conf *
conf_new(const char *name)
{
	struct conf	*c = xcalloc(1, sizeof *c);

	atomic_init(&c->refs, 1);
	c->path = xstrdup(name);
	c->listen = xstrdup(CONF_DEFAULT_LISTEN);
	c->socket_mode = -1;
	c->threads = CONF_DEFAULT_THREADS;
	c->timeouts.connect = CONF_DEFAULT_CONNECT;
	c->timeouts.command = CONF_DEFAULT_COMMAND;
	c->timeouts.content = CONF_DEFAULT_CONTENT;
	c->on_failure = ONFAIL_TEMPFAIL;
	c->replay_memory = CONF_DEFAULT_REPLAY_MEMORY;
	c->replay_dir = xstrdup(CONF_DEFAULT_REPLAY_DIR);
	c->failures = CONF_DEFAULT_FAILURES;
	c->retry_after = CONF_DEFAULT_RETRY;
	c->max_mods = CONF_DEFAULT_MAX_MODS;
	c->shutdown_grace = CONF_DEFAULT_GRACE;
	c->reuse.enabled = CONF_DEFAULT_REUSE;
	c->reuse.idle_max = CONF_DEFAULT_IDLE_MAX;
	c->reuse.idle_timeout = CONF_DEFAULT_IDLE_TIMEOUT;
	/* Lists are never NULL, so users can walk them unconditionally. */
	for (int s = 0; s < MACRO_STAGE_COUNT; s++)
		c->macros[s] = xcalloc(1, sizeof *c->macros[s]);
	return c;
}

static bool
is_blank(const char *text, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (strchr(" \t\r\n", text[i]) == NULL || text[i] == '\0')
			return false;
	return true;
}

int
conf_parse(const char *text, size_t len, const char *name, struct conf **out,
    struct conf_errors *errs)
{
	struct ctx	 x = { .name = name != NULL ? name : "-" };
	json_error_t	 jerr;
	json_t		*root;
	const char	*nul;
	int		 rc = -EINVAL;

	*out = NULL;
	/*
	 * JSON text holds no raw NUL, but jansson (2.14) ends a number at
	 * one and reads on after it, so that the text it accepts and the
	 * text the position scanner reads would part: refuse it first.
	 */
	if (len > 0 && (nul = memchr(text, '\0', len)) != NULL) {
		report(&x, pos_at(text, (size_t)(nul - text)), "(syntax)",
		    "NUL byte; a configuration file is text");
		goto out;
	}
	/* DECODE_ANY: a top level that is not an object gets a clear word. */
	root = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
	    &jerr);
	if (root == NULL) {
		/* jansson says "unexpected token near end of file" at 1:0. */
		if (is_blank(text, len))
			report(&x, (struct tpos){ 1, 1 }, "(syntax)", "the file "
			    "is empty; expected a JSON object");
		else
			report(&x, (struct tpos){ jerr.line > 0 ? jerr.line : 1,
			    jerr.column > 0 ? jerr.column : 1 }, "(syntax)",
			    "%s", jerr.text);
		goto out;
	}
	index_build(&x.ix, text, len);
	if (!json_is_object(root)) {
		bad_value(&x, "", "must be a JSON object, not %s",
		    type_name(root));
		json_decref(root);
		goto out;
	}
	x.c = conf_new(x.name);
	parse_top(&x, root);
	if (x.nerrs == 0)
		check_budgets(&x, root);
	json_decref(root);
	if (x.nerrs == 0) {
		flush_warnings(&x, x.c);
		*out = x.c;
		rc = 0;
	} else {
		flush_warnings(&x, NULL);
		conf_free(x.c);
	}
	x.c = NULL;
out:
	flush_errors(&x, errs);
	pindex_fini(&x.ix);
	return rc;
}

/* read_file - the whole file; caller owns *text */
static int
read_file(const char *path, char **text, size_t *len)
{
	char	*p = NULL;
	size_t	 n = 0, cap = 0;
	ssize_t	 r;
	int	 fd, rc;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return -errno;
	for (;;) {
		if (cap - n < 4096) {
			cap = cap == 0 ? 8192 : cap * 2;
			p = xreallocarray(p, cap, 1);
		}
		if ((r = read(fd, p + n, cap - n)) == -1) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			goto fail;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	*text = p;
	*len = n;
	return 0;

fail:
	close(fd);
	free(p);
	return rc;
}

int
conf_load(const char *path, struct conf **out, struct conf_errors *errs)
{
	char	*text = NULL, eb[256];
	size_t	 len = 0;
	int	 rc;

	*out = NULL;
	if ((rc = read_file(path, &text, &len)) != 0) {
		errors_add(errs, xasprintf("%s: cannot read: %s", path,
		    ERRNO_TEXT(-rc, eb)));
		return rc;
	}
	rc = conf_parse(text, len, path, out, errs);
	free(text);
	return rc;
}

/*
 * Socket addresses.
 */

static int	addr_err(char *, size_t, int, const char *, ...)
		    __attribute__((format(printf, 4, 5)));

/* addr_err - write the reason to errbuf and return rc */
static int
addr_err(char *errbuf, size_t errlen, int rc, const char *fmt, ...)
{
	va_list	 ap;

	if (errbuf != NULL && errlen > 0) {
		va_start(ap, fmt);
		vsnprintf(errbuf, errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

static int
addr_unix(const char *path, struct conf_addr *a, char *eb, size_t el)
{
	struct sockaddr_un	*su = (struct sockaddr_un *)(void *)&a->sa;
	size_t			 n = strlen(path);

	if (path[0] != '/')
		return addr_err(eb, el, -EINVAL, "socket path must be "
		    "absolute (start with \"/\")");
	if (n >= sizeof su->sun_path)
		return addr_err(eb, el, -EINVAL, "socket path is %zu bytes "
		    "long; at most %zu fit", n, sizeof su->sun_path - 1);
	su->sun_family = AF_UNIX;
	memcpy(su->sun_path, path, n + 1);
	a->salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	return 0;
}

static bool
all_digits(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

/*
 * addr_inet - PORT[@HOST] for family.  Service names and host names go
 * through getaddrinfo, which unlike getservbyname is thread-safe.
 * Returns -EINVAL (malformed) or -ENOENT (does not resolve).
 */
static int
addr_inet(int family, const char *rest, struct conf_addr *a, char *eb,
    size_t el)
{
	struct addrinfo	 hints, *res;
	const char	*at = strchr(rest, '@'), *host = NULL;
	const char	*fam = family == AF_INET ? "IPv4" : "IPv6";
	char		*port, *node = NULL, ebuf[128];
	unsigned char	 probe[sizeof(struct in6_addr)];
	size_t		 n;
	int		 rc, g;

	port = xstrndup(rest, at != NULL ? (size_t)(at - rest) : strlen(rest));
	if (*port == '\0') {
		rc = addr_err(eb, el, -EINVAL, "missing port; expected "
		    "PORT@HOST");
		goto out;
	}
	memset(&hints, 0, sizeof hints);
	hints.ai_family = family;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = RESOLVE_FLAGS;
	if (all_digits(port, strlen(port))) {
		if (strlen(port) > 5 || atoi(port) < 1 || atoi(port) > 65535) {
			rc = addr_err(eb, el, -EINVAL, "port %s is out of range "
			    "1..65535", port);
			goto out;
		}
		hints.ai_flags |= AI_NUMERICSERV;
	} else if ((g = getaddrinfo(NULL, port, &hints, &res)) != 0) {
		rc = addr_err(eb, el, -EINVAL, at == NULL ? "missing \"@\": "
		    "expected PORT@HOST, and \"%s\" is not a port number or "
		    "service name" : "\"%s\" is not a port number or service "
		    "name", port);
		goto out;
	} else
		freeaddrinfo(res);

	if (at == NULL)
		hints.ai_flags |= AI_PASSIVE;	/* the wildcard address */
	else if (*(host = at + 1) == '\0') {
		rc = addr_err(eb, el, -EINVAL, "missing host after \"@\"");
		goto out;
	} else if (host[0] == '[') {
		n = strlen(host);
		if (n < 3 || host[n - 1] != ']') {
			rc = addr_err(eb, el, -EINVAL, "unbalanced \"[\" in "
			    "host");
			goto out;
		}
		node = xstrndup(host + 1, n - 2);
		hints.ai_flags |= AI_NUMERICHOST;
	} else {
		node = xstrdup(host);
		if (inet_pton(family == AF_INET ? AF_INET6 : AF_INET, node,
		    probe) == 1) {
			rc = addr_err(eb, el, -EINVAL, "%s is an %s address; "
			    "use %s:", node, family == AF_INET ? "IPv6" :
			    "IPv4", family == AF_INET ? "inet6" : "inet");
			goto out;
		}
	}

	if ((g = getaddrinfo(node, port, &hints, &res)) != 0) {
		if (hints.ai_flags & AI_NUMERICHOST)
			rc = addr_err(eb, el, -EINVAL, "\"%s\" is not an %s "
			    "address", node, fam);
		else
			rc = addr_err(eb, el, -ENOENT, "cannot resolve \"%s\" "
			    "to an %s address: %s", node, fam,
			    g == EAI_SYSTEM ? ERRNO_TEXT(errno, ebuf) :
			    gai_strerror(g));
		goto out;
	}
	if (res->ai_addrlen > sizeof a->sa) {
		freeaddrinfo(res);
		rc = addr_err(eb, el, -EINVAL, "address too long");
		goto out;
	}
	memcpy(&a->sa, res->ai_addr, res->ai_addrlen);
	a->salen = res->ai_addrlen;
	freeaddrinfo(res);
	rc = 0;
out:
	free(node);
	free(port);
	return rc;
}

/*
 * addr_parse - as conf_parse_address, but tells a name that does not
 * resolve (-ENOENT) from a malformed spec (-EINVAL)
 */
static int
addr_parse(const char *spec, struct conf_addr *a, char *eb, size_t el)
{
	const char	*colon = strchr(spec, ':');
	size_t		 tl;

	memset(a, 0, sizeof *a);
	if (eb != NULL && el > 0)
		*eb = '\0';
	/* libmilter takes a bare path as a unix socket; so do we. */
	if (spec[0] == '/')
		return addr_unix(spec, a, eb, el);
	if (colon == NULL)
		return addr_err(eb, el, -EINVAL, "expected unix:/PATH, "
		    "local:/PATH, inet:PORT@HOST or inet6:PORT@HOST");
	tl = (size_t)(colon - spec);
	if ((tl == 4 && strncmp(spec, "unix", 4) == 0) ||
	    (tl == 5 && strncmp(spec, "local", 5) == 0))
		return addr_unix(colon + 1, a, eb, el);
	if (tl == 4 && strncmp(spec, "inet", 4) == 0)
		return addr_inet(AF_INET, colon + 1, a, eb, el);
	if (tl == 5 && strncmp(spec, "inet6", 5) == 0)
		return addr_inet(AF_INET6, colon + 1, a, eb, el);
	return addr_err(eb, el, -EINVAL, "unknown socket type \"%.*s\"; "
	    "expected unix, local, inet or inet6", (int)(tl > 32 ? 32 : tl),
	    spec);
}

int
conf_parse_address(const char *spec, struct conf_addr *a, char *errbuf,
    size_t errlen)
{
	return addr_parse(spec, a, errbuf, errlen) == 0 ? 0 : -EINVAL;
}

/*
 * Dump.
 */

/* jset - obj[key] = v, taking v; jansson fails only for want of memory */
static void
jset(json_t *obj, const char *key, json_t *v)
{
	if (v == NULL || json_object_set_new(obj, key, v) != 0)
		fatalx("%s: out of memory", __func__);
}

static void
jappend(json_t *arr, json_t *v)
{
	if (v == NULL || json_array_append_new(arr, v) != 0)
		fatalx("%s: out of memory", __func__);
}

static json_t *
jnew(json_t *v)
{
	if (v == NULL)
		fatalx("%s: out of memory", __func__);
	return v;
}

/* Whole seconds are written as integers, the way people write them. */
static json_t *
dump_seconds(double d)
{
	if (d >= 0 && d <= 1e15 && d == (double)(json_int_t)d)
		return json_integer((json_int_t)d);
	return json_real(d);
}

static json_t *
dump_timeouts(const struct conf_timeouts *t)
{
	json_t	*o = jnew(json_object());

	for (size_t i = 0; timeout_keys[i] != NULL; i++)
		jset(o, timeout_keys[i], dump_seconds(timeout_get(t, i)));
	return o;
}

/* digits_for - fewest significant digits that read back as d exactly */
static int
digits_for(double d)
{
	char	 s[64];

	for (int p = 1; p < 17; p++) {
		snprintf(s, sizeof s, "%.*g", p, d);
		if (strtod(s, NULL) == d)
			return p;
	}
	return 17;
}

static int
timeouts_digits(const struct conf_timeouts *t, int p)
{
	int	 q;

	for (size_t i = 0; timeout_keys[i] != NULL; i++)
		if ((q = digits_for(timeout_get(t, i))) > p)
			p = q;
	return p;
}

/* dump_domains, dump_cond - a condition as parse_cond reads it */
static json_t *
dump_domains(char *const *list, size_t n)
{
	json_t	*a = jnew(json_array());

	for (size_t i = 0; i < n; i++)
		jappend(a, json_string(list[i]));
	return a;
}

static json_t *
dump_cond(const struct cond *c)
{
	json_t	*o = jnew(json_object()), *a;

	if (c->has_client) {
		a = jnew(json_array());
		for (size_t i = 0; i < c->nnets; i++)
			jappend(a, json_string(c->nets[i].text));
		jset(o, "client", a);
	}
	if (c->auth >= 0)
		jset(o, "auth", json_boolean(c->auth == 1));
	if (c->has_sender)
		jset(o, "sender_domain", dump_domains(c->senders, c->nsenders));
	if (c->has_rcpt)
		jset(o, "rcpt_domain", dump_domains(c->rcpts, c->nrcpts));
	if (c->nmacros > 0) {
		a = jnew(json_object());
		for (size_t i = 0; i < c->nmacros; i++)
			jset(a, c->macros[i].name,
			    json_string(c->macros[i].value));
		jset(o, "macro", a);
	}
	if (c->size_over >= 0)
		jset(o, "size_over", json_integer((json_int_t)c->size_over));
	return o;
}

static json_t *
dump_actions(uint32_t actions)
{
	json_t	*a = jnew(json_array());

	for (int k = 0; k < MOD_KIND_COUNT; k++)
		if ((actions & (1u << k)) != 0)
			jappend(a, json_string(codec_mod_kind_name(
			    (enum mod_kind)k)));
	return a;
}

static json_t *
dump_verdicts(const struct conf_upstream *u)
{
	json_t	*o = jnew(json_object()), *h;
	char	*line;

	for (int v = VERDICT_COUNT - 1; v >= 0; v--) {
		const struct conf_vmap	*m = &u->verdicts[v];

		if (m->hname != NULL) {
			h = jnew(json_object());
			line = xasprintf("%s: %s", m->hname, m->hvalue);
			jset(h, "addheader", json_string(line));
			free(line);
			jset(o, proto_verdict_name((enum verdict)v), h);
		} else if (m->to != VERDICT_NONE)
			jset(o, proto_verdict_name((enum verdict)v),
			    json_string(proto_verdict_name(m->to)));
	}
	return o;
}

char *
conf_dump(const struct conf *c)
{
	const struct conf_upstream	*u;
	json_t				*root, *macros, *list, *ups, *o;
	char				*s, mode[16];
	int				 p, q, stage;

	/*
	 * All reals share one precision: the least that gives each value
	 * back exactly, so 0.1 stays "0.1" and conf_parse(conf_dump(c))
	 * still equals c.
	 */
	p = timeouts_digits(&c->timeouts, 1);
	if ((q = digits_for(c->retry_after)) > p)
		p = q;
	if ((q = digits_for(c->shutdown_grace)) > p)
		p = q;
	if ((q = digits_for(c->reuse.idle_timeout)) > p)
		p = q;
	root = jnew(json_object());
	jset(root, "listen", json_string(c->listen));
	jset(root, "threads", json_integer(c->threads));
	jset(root, "timeouts", dump_timeouts(&c->timeouts));
	jset(root, "on_failure", json_string(conf_on_failure_name(
	    c->on_failure)));
	macros = jnew(json_object());
	for (size_t i = 0; macro_keys[i] != NULL; i++) {
		stage = proto_macro_stage_lookup(macro_keys[i]);
		list = jnew(json_array());
		for (size_t j = 0; j < c->nmacros[stage]; j++)
			jappend(list, json_string(c->macros[stage][j]));
		jset(macros, macro_keys[i], list);
	}
	jset(root, "macros", macros);
	o = jnew(json_object());
	jset(o, "memory", json_integer((json_int_t)c->replay_memory));
	jset(o, "directory", json_string(c->replay_dir));
	jset(root, "replay", o);
	if (c->metrics_listen != NULL) {
		o = jnew(json_object());
		jset(o, "listen", json_string(c->metrics_listen));
		jset(root, "metrics", o);
	}
	ups = jnew(json_array());
	for (size_t i = 0; i < c->nupstreams; i++) {
		u = &c->upstreams[i];
		o = jnew(json_object());
		jset(o, "name", json_string(u->name));
		if (u->pool) {
			json_t	*a = jnew(json_array());

			for (size_t r = 0; r < u->nreplicas; r++)
				jappend(a, json_string(
				    u->replicas[r].address));
			jset(o, "address", a);
		} else
			jset(o, "address", json_string(u->address));
		jset(o, "enabled", json_boolean(u->enabled));
		jset(o, "phase", json_integer(u->phase));
		jset(o, "on_failure", json_string(conf_on_failure_name(
		    u->on_failure)));
		jset(o, "failures", json_integer(u->failures));
		jset(o, "retry_after", dump_seconds(u->retry_after));
		jset(o, "max_modifications", json_integer(u->max_mods));
		jset(o, "timeouts", dump_timeouts(&u->timeouts));
		if (u->apply_if.set)
			jset(o, "apply_if", dump_cond(&u->apply_if));
		if (u->skip_if.set)
			jset(o, "skip_if", dump_cond(&u->skip_if));
		if (u->actions_set)
			jset(o, "actions", dump_actions(u->actions));
		if (u->verdicts_set)
			jset(o, "verdicts", dump_verdicts(u));
		jset(o, "mode", json_string(conf_mode_name(u->mode)));
		if (u->mode == MODE_SHADOW) {
			jset(o, "shadow_queue", json_integer(u->shadow_queue));
			jset(o, "shadow_queue_bytes", json_integer(
			    (json_int_t)u->shadow_queue_bytes));
		}
		jset(o, "reuse", json_boolean(u->reuse.enabled));
		jset(o, "reuse_idle_max", json_integer(u->reuse.idle_max));
		jset(o, "reuse_idle_timeout",
		    dump_seconds(u->reuse.idle_timeout));
		jappend(ups, o);
		p = timeouts_digits(&u->timeouts, p);
		if ((q = digits_for(u->retry_after)) > p)
			p = q;
		if ((q = digits_for(u->reuse.idle_timeout)) > p)
			p = q;
	}
	jset(root, "upstreams", ups);
	jset(root, "failures", json_integer(c->failures));
	jset(root, "retry_after", dump_seconds(c->retry_after));
	jset(root, "max_modifications", json_integer(c->max_mods));
	jset(root, "shutdown_grace", dump_seconds(c->shutdown_grace));
	jset(root, "reuse", json_boolean(c->reuse.enabled));
	jset(root, "reuse_idle_max", json_integer(c->reuse.idle_max));
	jset(root, "reuse_idle_timeout", dump_seconds(c->reuse.idle_timeout));
	/* Unset, these two have no value to write: the socket keeps what
	 * the umask and the starting user give it. */
	if (c->socket_mode >= 0) {
		snprintf(mode, sizeof mode, "%04o", (unsigned)c->socket_mode);
		jset(root, "socket_mode", json_string(mode));
	}
	if (c->socket_group != NULL)
		jset(root, "socket_group", json_string(c->socket_group));
	/* Unset, it is derived at start from the descriptor limit. */
	if (c->max_sessions != 0)
		jset(root, "max_sessions", json_integer(c->max_sessions));
	jset(root, "log_format", json_string(c->log_json ? "json" : "text"));
	s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER |
	    JSON_REAL_PRECISION(p));
	json_decref(root);
	if (s == NULL)
		fatalx("%s: out of memory", __func__);
	return s;
}

/*
 * Publication.
 *
 * conf_current holds one reference of its own.  A connection pins the
 * snapshot it started with (front_connect -> conf_acquire, front_close
 * -> conf_release); a reload swaps the pointer and drops the old
 * reference, so the last user frees it.  (OpenDKIM does the same with
 * conf_refcnt under conf_lock.)  conf_lock protects only the
 * conf_current pointer: snapshots are immutable once published.
 */
static pthread_mutex_t	 conf_lock = PTHREAD_MUTEX_INITIALIZER;
static struct conf	*conf_current;

void
conf_publish(struct conf *c)
{
	struct conf	*old;

	pthread_mutex_lock(&conf_lock);
	old = conf_current;
	conf_current = c;
	pthread_mutex_unlock(&conf_lock);
	conf_release(old);	/* may free: not under the lock */
}

/* conf_acquire - returns NULL only before anything was published */
struct conf *
conf_acquire(void)
{
	struct conf	*c;

	pthread_mutex_lock(&conf_lock);
	c = conf_current;
	if (c != NULL)
		atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	pthread_mutex_unlock(&conf_lock);
	return c;
}

void
conf_release(struct conf *c)
{
	if (c != NULL &&
	    atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
		conf_free(c);
}

const char *
conf_mode_name(enum upstream_mode m)
{
	return (unsigned)m < MODE_COUNT ? mode_names[m] : "?";
}

const char *
conf_on_failure_name(enum on_failure f)
{
	return (unsigned)f < ONFAIL_COUNT ? on_failure_names[f] : "?";
}

/*
 * Start checks (-n): what the daemon needs from the system at start,
 * reported against the key that asks for it.
 */

/* check_replay_dir - the directory exists and a file can be made there */
static void
check_replay_dir(struct ctx *x, const char *dir)
{
	struct stat	 st;
	char		*tmp, eb[256];
	int		 fd;

	if (stat(dir, &st) == -1) {
		bad_value(x, "replay.directory", "\"%s\": %s", dir,
		    ERRNO_TEXT(errno, eb));
		return;
	}
	if (!S_ISDIR(st.st_mode)) {
		bad_value(x, "replay.directory", "\"%s\" is not a directory",
		    dir);
		return;
	}
	tmp = xasprintf("%s/.miltermux-check-XXXXXX", dir);
	if ((fd = mkstemp(tmp)) == -1)
		bad_value(x, "replay.directory", "\"%s\": cannot create a file "
		    "there: %s", dir, ERRNO_TEXT(errno, eb));
	else {
		close(fd);
		unlink(tmp);
	}
	free(tmp);
}

/* check_listen_unix - the socket's directory is there and writable,
 * and the path is free or a socket nobody answers on */
static void
check_listen_unix(struct ctx *x, const char *key, const struct conf_addr *a)
{
	const struct sockaddr_un *su = (const void *)&a->sa;
	char		 dir[sizeof su->sun_path], *slash, eb[256];
	struct stat	 st;
	int		 fd;

	snprintf(dir, sizeof dir, "%s", su->sun_path);
	if ((slash = strrchr(dir, '/')) != NULL)
		*slash = '\0';
	if (dir[0] == '\0')
		snprintf(dir, sizeof dir, "/");
	if (stat(dir, &st) == -1) {
		bad_value(x, key, "the socket's directory \"%s\": %s", dir,
		    ERRNO_TEXT(errno, eb));
		return;
	}
	if (!S_ISDIR(st.st_mode)) {
		bad_value(x, key, "\"%s\" is not a directory", dir);
		return;
	}
	if (access(dir, W_OK | X_OK) == -1) {
		bad_value(x, key, "cannot create the socket in \"%s\": %s",
		    dir, ERRNO_TEXT(errno, eb));
		return;
	}
	if (lstat(su->sun_path, &st) == -1)
		return;
	if (!S_ISSOCK(st.st_mode)) {
		bad_value(x, key, "\"%s\" exists and is not a socket",
		    su->sun_path);
		return;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd != -1 && connect(fd, (const struct sockaddr *)&a->sa,
	    a->salen) == 0)
		warn_value(x, key, "warning: \"%s\" is in use: something "
		    "accepts on it (a running miltermux?); starting would "
		    "take it over", su->sun_path);
	if (fd != -1)
		close(fd);
}

/* check_listen_inet - a test socket binds to the address */
static void
check_listen_inet(struct ctx *x, const char *key, const char *spec,
    const struct conf_addr *a)
{
	char	 eb[256];
	int	 fd, one = 1, err = 0;

	if ((fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC,
	    0)) == -1) {
		bad_value(x, key, "\"%s\": cannot make a socket: %s", spec,
		    ERRNO_TEXT(errno, eb));
		return;
	}
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (const struct sockaddr *)&a->sa, a->salen) == -1)
		err = errno;
	close(fd);
	if (err == EADDRINUSE)
		warn_value(x, key, "warning: \"%s\" is in use (a running "
		    "miltermux?): a new instance cannot listen there beside "
		    "it", spec);
	else if (err != 0)
		bad_value(x, key, "\"%s\": cannot listen there: %s", spec,
		    ERRNO_TEXT(err, eb));
}

int
conf_check_start(const struct conf *c, bool listen_from_cli,
    struct conf_errors *errs, struct conf_errors *warns)
{
	struct ctx		 x = { .name = c->path };
	struct conf_addr	 a;
	const char		*key = listen_from_cli ? "--listen" : "listen";
	char			*text = NULL, eb[256];
	size_t			 len = 0;
	int			 rc;

	if (x.name == NULL)
		x.name = "-";
	if (c->path != NULL && read_file(c->path, &text, &len) == 0)
		index_build(&x.ix, text, len);
	check_replay_dir(&x, c->replay_dir);
	if (addr_parse(c->listen, &a, eb, sizeof eb) != 0)
		bad_value(&x, key, "\"%s\": %s", c->listen, eb);
	else if (a.sa.ss_family == AF_UNIX)
		check_listen_unix(&x, key, &a);
	else
		check_listen_inet(&x, key, c->listen, &a);
	rc = x.nerrs == 0 ? 0 : -EINVAL;
	for (size_t i = 0; i < x.nwarns; i++) {
		if (warns != NULL)
			errors_add(warns, x.warns[i].text);
		else
			free(x.warns[i].text);
	}
	free(x.warns);
	flush_errors(&x, errs);
	pindex_fini(&x.ix);
	free(text);
	return rc;
}
