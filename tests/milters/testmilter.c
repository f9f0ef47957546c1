/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * testmilter - a libmilter filter that does exactly what its command
 * line says.
 *
 * The upstream milter of the tests, the quick start and the benchmark.
 * Verdicts, reply texts, delays, modifications and protocol options
 * are all chosen on the command line, and every callback can be logged
 * to a file that the tests read back.  It has no policy of its own and
 * never looks at the message beyond what it logs.
 *
 * Usage: testmilter -p SOCKSPEC [options]
 *
 *   -p SOCKSPEC               libmilter socket: unix:/path, local:/path,
 *                             inet:PORT[@HOST], inet6:PORT[@HOST]; a stale
 *                             unix socket is removed (smfi_opensocket(true))
 *   -n, --name NAME           name in logs and in the --tag header
 *                             (default "testmilter")
 *   --verdict STAGE=VERDICT   STAGE: connect helo envfrom envrcpt data unknown
 *                             header eoh body eom (and negotiate, where any
 *                             verdict but continue makes libmilter drop the
 *                             session); VERDICT: continue accept reject
 *                             tempfail discard skip.  skip is taken at
 *                             envrcpt, header and body only, and becomes
 *                             continue unless the MTA offered SMFIP_SKIP.
 *                             Default continue.  Repeatable; the last one
 *                             for a stage wins.
 *   --reply STAGE="CODE [XCODE] [TEXT]"
 *                             reply set right before a reject (5xx CODE) or
 *                             tempfail (4xx CODE) verdict at STAGE;
 *                             smfi_setreply, or smfi_setmlreply when TEXT
 *                             holds "\n" escapes (one line each, at most
 *                             32 lines of 980 bytes).  A reply whose class
 *                             does not match the verdict is not set, so it
 *                             cannot linger in libmilter.  Repeatable;
 *                             the last one for a stage wins.
 *   --reject-rcpt ADDR        at envrcpt, reject the recipient whose argv[0]
 *                             equals ADDR (case-insensitive, with or without
 *                             <>); uses --reply envrcpt=... .  Repeatable.
 *   --tempfail-rcpt ADDR      the same with tempfail (reject wins).
 *   --only-from ADDR          the --verdict of envfrom, envrcpt, data,
 *                             header, eoh, body and eom holds only for
 *                             messages whose sender (MAIL FROM argv[0],
 *                             compared as for --reject-rcpt) is ADDR;
 *                             the others get continue there.  Delays and
 *                             modifications stay as they are.  Repeatable.
 *   --delay STAGE=MS          sleep MS milliseconds in that callback before
 *                             answering (also negotiate and abort); at eom
 *                             the sleep comes before the modifications.
 *                             Repeatable; the last one for a stage wins.
 *   --serial-eom              hold one process-wide mutex across the eom
 *                             callback's --delay sleep, so that the filter
 *                             works on one message at a time however many
 *                             sessions it has (a benchmark's stand-in for
 *                             a single-threaded scanner)
 *   --progress-every MS       during the eom delay, call smfi_progress after
 *                             every full MS milliseconds.
 *
 *   Modifications, made at eom in command-line order whatever the verdict:
 *   --addheader "NAME:VALUE"        smfi_addheader
 *   --insheader "IDX:NAME:VALUE"    smfi_insheader
 *   --chgheader "IDX:NAME:VALUE"    smfi_chgheader; empty VALUE deletes
 *   --addrcpt ADDR                  smfi_addrcpt
 *   --addrcpt-par "ADDR [ARGS]"     smfi_addrcpt_par
 *   --delrcpt ADDR                  smfi_delrcpt
 *   --chgfrom "ADDR [ARGS]"         smfi_chgfrom
 *   --replbody TEXT                 smfi_replacebody; "\n" becomes CRLF
 *   --quarantine REASON             smfi_quarantine
 *   --tag                           add "X-Testmilter-NAME: seen"
 *   --repeat N                      make the whole list above N times
 *                                   over, in order (default 1), for
 *                                   tests that need a large edit set
 *   Header VALUEs are sent verbatim after the colon (the MTA adds one
 *   space unless HDR_LEADSPC was negotiated); in them "\n" becomes LF
 *   (for folding) and "\t" TAB.  Everywhere escapes are decoded, "\\" is
 *   a backslash and any other backslash stays as it is.
 *
 *   Protocol options, settled in xxfi_negotiate.  Only the actions the
 *   modifications above need (plus SETSYMLIST for --symlist) and only
 *   the protocol bits asked for here are requested, each only if the
 *   MTA offered it:
 *   --no STAGE                set SMFIP_NO* (connect helo envfrom envrcpt
 *                             data unknown header eoh body).  Repeatable.
 *   --nr STAGE                set SMFIP_NR_* for the same stages; that
 *                             callback then returns SMFIS_NOREPLY (its
 *                             verdict is lost).  Repeatable.
 *   --leadspc                 request SMFIP_HDR_LEADSPC
 *   --rcpt-rej                request SMFIP_RCPT_REJ: envrcpt is also
 *                             called for recipients the MTA rejected
 *                             (with {rcpt_mailer} "error"; log it with
 *                             --log-macros)
 *   --symlist STAGE="NAMES"   smfi_setsymlist for connect helo envfrom
 *                             envrcpt data eoh eom, if the MTA offered
 *                             SMFIF_SETSYMLIST.  Once per stage.
 *   SMFIP_SKIP is requested when some stage has the verdict skip.
 *
 *   --log FILE                append one line per callback to FILE with a
 *                             single write(2) under O_APPEND:
 *                             "<pid> <session> <stage>[ <details>]"
 *   --log-macros "NAMES"      also log these macros at every callback when
 *                             they have a value.  Repeatable.
 *   -h, --help
 *
 * Log details: negotiate "offered_actions=0x.. offered_proto=0x..
 * actions=0x.. proto=0x.." (requested); connect hostname and address;
 * helo the name; envfrom/envrcpt argv joined by spaces; header
 * "NAME: VALUE"; body the chunk's byte count; unknown the command;
 * data, eoh, eom, abort, close nothing.  envfrom and eom add
 * " macro:NAME=VALUE" for i, {auth_authen} and {mail_addr} when set,
 * then come the --log-macros.  Free text is escaped: \r \n \t \\ and
 * other bytes outside 0x20-0x7e as \xNN.  Sessions are numbered from 1
 * per process; 0 means close without a session.
 *
 * Exit status: 0 after SIGTERM/SIGHUP (libmilter stops), 64 (EX_USAGE)
 * on a bad command line, 73 (EX_CANTCREAT) if the log cannot be opened,
 * 70 (EX_SOFTWARE) if libmilter fails.  Nothing goes to stdout except
 * --help; diagnostics go to stderr as "NAME: ...".
 *
 * One file, longer than the house limit, because the build and the
 * quick start compile it alone; half of it is the command line.
 *
 * Concurrency: libmilter runs the callbacks of different connections at
 * the same time, and those of one connection one after the other on
 * different pool threads.  struct config is written by main() before
 * smfi_main() and only read afterwards; per-connection state lives
 * behind smfi_setpriv(); a log line is one write(2).  The one lock,
 * serial_lock, serialises eom delays with --serial-eom.
 * Ownership: struct session is allocated in negotiate (or in connect
 * after QUIT_NC, which closes the previous session) and freed in close.
 * Strings from libmilter are used only during the callback.
 */
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include <libmilter/mfapi.h>

#define REPLY_MAX_LINES	32		/* libmilter MAXREPLIES */
#define REPLY_MAX_LEN	980		/* libmilter MAXREPLYLEN, per line */
#define DELAY_MAX_MS	86400000L	/* one day */

enum stage {
	STAGE_NEGOTIATE = 0,
	STAGE_CONNECT,
	STAGE_HELO,
	STAGE_ENVFROM,
	STAGE_ENVRCPT,
	STAGE_DATA,
	STAGE_UNKNOWN,
	STAGE_HEADER,
	STAGE_EOH,
	STAGE_BODY,
	STAGE_EOM,
	STAGE_ABORT,
	STAGE_CLOSE,
	STAGE_COUNT
};

/* Which options accept a stage (struct stage_info.allow). */
#define ALLOW_VERDICT	0x01	/* --verdict */
#define ALLOW_SKIP	0x02	/* --verdict STAGE=skip */
#define ALLOW_REPLY	0x04	/* --reply */
#define ALLOW_DELAY	0x08	/* --delay */
#define ALLOW_PROTO	0x10	/* --no, --nr */
#define ALLOW_SMTP	(ALLOW_VERDICT | ALLOW_REPLY | ALLOW_DELAY)

struct stage_info {
	const char	*name;
	unsigned int	 allow;
	unsigned long	 no_bit;	/* SMFIP_NO* */
	unsigned long	 nr_bit;	/* SMFIP_NR_* */
};

static const struct stage_info stages[STAGE_COUNT] = {
	[STAGE_NEGOTIATE] = { "negotiate", ALLOW_VERDICT | ALLOW_DELAY, 0, 0 },
	[STAGE_CONNECT]	= { "connect", ALLOW_SMTP | ALLOW_PROTO,
			    SMFIP_NOCONNECT, SMFIP_NR_CONN },
	[STAGE_HELO]	= { "helo", ALLOW_SMTP | ALLOW_PROTO,
			    SMFIP_NOHELO, SMFIP_NR_HELO },
	[STAGE_ENVFROM]	= { "envfrom", ALLOW_SMTP | ALLOW_PROTO,
			    SMFIP_NOMAIL, SMFIP_NR_MAIL },
	[STAGE_ENVRCPT]	= { "envrcpt", ALLOW_SMTP | ALLOW_PROTO | ALLOW_SKIP,
			    SMFIP_NORCPT, SMFIP_NR_RCPT },
	[STAGE_DATA]	= { "data", ALLOW_SMTP | ALLOW_PROTO,
			    SMFIP_NODATA, SMFIP_NR_DATA },
	[STAGE_UNKNOWN]	= { "unknown", ALLOW_SMTP | ALLOW_PROTO,
			    SMFIP_NOUNKNOWN, SMFIP_NR_UNKN },
	[STAGE_HEADER]	= { "header", ALLOW_SMTP | ALLOW_PROTO | ALLOW_SKIP,
			    SMFIP_NOHDRS, SMFIP_NR_HDR },
	[STAGE_EOH]	= { "eoh", ALLOW_SMTP | ALLOW_PROTO,
			    SMFIP_NOEOH, SMFIP_NR_EOH },
	[STAGE_BODY]	= { "body", ALLOW_SMTP | ALLOW_PROTO | ALLOW_SKIP,
			    SMFIP_NOBODY, SMFIP_NR_BODY },
	[STAGE_EOM]	= { "eom", ALLOW_SMTP, 0, 0 },
	[STAGE_ABORT]	= { "abort", ALLOW_DELAY, 0, 0 },
	[STAGE_CLOSE]	= { "close", 0, 0, 0 },
};

/* Macro stages of smfi_setsymlist(); note SMFIM_EOM < SMFIM_EOH. */
static const char *const symlist_names[SMFIM_LAST + 1] = {
	[SMFIM_CONNECT]	= "connect",
	[SMFIM_HELO]	= "helo",
	[SMFIM_ENVFROM]	= "envfrom",
	[SMFIM_ENVRCPT]	= "envrcpt",
	[SMFIM_DATA]	= "data",
	[SMFIM_EOM]	= "eom",
	[SMFIM_EOH]	= "eoh",
};

enum verdict {
	VERDICT_CONTINUE = 0,
	VERDICT_ACCEPT,
	VERDICT_REJECT,
	VERDICT_TEMPFAIL,
	VERDICT_DISCARD,
	VERDICT_SKIP,
	VERDICT_COUNT
};

static const char *const verdict_names[VERDICT_COUNT] = {
	[VERDICT_CONTINUE]	= "continue",
	[VERDICT_ACCEPT]	= "accept",
	[VERDICT_REJECT]	= "reject",
	[VERDICT_TEMPFAIL]	= "tempfail",
	[VERDICT_DISCARD]	= "discard",
	[VERDICT_SKIP]		= "skip",
};

enum mod_kind {
	MOD_ADDHEADER = 0,
	MOD_INSHEADER,
	MOD_CHGHEADER,
	MOD_ADDRCPT,
	MOD_ADDRCPT_PAR,
	MOD_DELRCPT,
	MOD_CHGFROM,
	MOD_REPLBODY,
	MOD_QUARANTINE,
	MOD_TAG,
	MOD_KIND_COUNT
};

struct mod_info {
	const char	*name;		/* the option, without "--" */
	unsigned long	 action;	/* SMFIF_* it needs */
};

static const struct mod_info mod_infos[MOD_KIND_COUNT] = {
	[MOD_ADDHEADER]		= { "addheader", SMFIF_ADDHDRS },
	[MOD_INSHEADER]		= { "insheader", SMFIF_ADDHDRS },
	[MOD_CHGHEADER]		= { "chgheader", SMFIF_CHGHDRS },
	[MOD_ADDRCPT]		= { "addrcpt", SMFIF_ADDRCPT },
	[MOD_ADDRCPT_PAR]	= { "addrcpt-par", SMFIF_ADDRCPT_PAR },
	[MOD_DELRCPT]		= { "delrcpt", SMFIF_DELRCPT },
	[MOD_CHGFROM]		= { "chgfrom", SMFIF_CHGFROM },
	[MOD_REPLBODY]		= { "replbody", SMFIF_CHGBODY },
	[MOD_QUARANTINE]	= { "quarantine", SMFIF_QUARANTINE },
	[MOD_TAG]		= { "tag", SMFIF_ADDHDRS },
};

/* One modification, made at eom. */
struct mod {
	enum mod_kind	 kind;
	int		 idx;		/* insheader, chgheader */
	char		*a;		/* header name, address, body, reason */
	char		*b;		/* header value or ESMTP args; or NULL */
	size_t		 alen;		/* length of a (replbody) */
};

/* A reply text parsed at startup; lines[] is NULL-terminated. */
struct reply {
	char		 code[4];
	char		*xcode;		/* NULL: none */
	char		*lines[REPLY_MAX_LINES + 1];
	size_t		 nlines;	/* 0: code (and xcode) only */
};

struct strlist {
	char		**v;
	size_t		  n;
};

/*
 * The configuration: written by main() before smfi_main() starts any
 * thread, read-only afterwards, never freed (smfi_main() may return
 * while sessions still run: smfi_stop() does not wait for them).
 */
static struct config {
	char		*sockspec;
	char		*name;
	char		*tag_name;		/* "X-Testmilter-" NAME */
	enum verdict	 verdict[STAGE_COUNT];
	struct reply	*reply[STAGE_COUNT];
	long		 delay_ms[STAGE_COUNT];
	long		 progress_ms;		/* 0: no progress */
	bool		 serial_eom;		/* eom delays one at a time */
	struct strlist	 reject_rcpt;
	struct strlist	 tempfail_rcpt;
	struct strlist	 only_from;
	struct strlist	 log_macros;
	struct mod	*mods;
	size_t		 nmods;
	long		 repeat;		/* --repeat, default 1 */
	char		*symlist[SMFIM_LAST + 1];
	unsigned long	 want_actions;		/* SMFIF_* wanted */
	unsigned long	 want_proto;		/* SMFIP_* wanted */
	char		*log_path;
	int		 log_fd;		/* -1: no callback log */
	long		 pid;
} cfg = {
	.name = "testmilter",
	.log_fd = -1,
	.repeat = 1,
};

/* Per-connection state, behind smfi_setpriv(). */
struct session {
	unsigned long	 id;
	unsigned long	 offered_actions;	/* f0 of negotiate */
	unsigned long	 offered_proto;		/* f1, NR bits faked in */
	unsigned long	 actions;		/* what we requested */
	unsigned long	 proto;
	bool		 from_listed;	/* this message's sender: --only-from */
};

static atomic_ulong	 session_seq;

/* A growable string; p is NUL-terminated once anything was added. */
struct sbuf {
	char		*p;
	size_t		 len;
	size_t		 cap;
};

static _Noreturn void
oom(void)
{
	static const char	 msg[] = "testmilter: out of memory\n";
	ssize_t			 n;

	n = write(STDERR_FILENO, msg, sizeof msg - 1);
	(void)n;
	abort();
}

static void *
xmalloc(size_t n)
{
	void	*p;

	if ((p = malloc(n == 0 ? 1 : n)) == NULL)
		oom();
	return p;
}

static void *
xcalloc(size_t n, size_t size)
{
	void	*p;

	if ((p = calloc(n == 0 ? 1 : n, size == 0 ? 1 : size)) == NULL)
		oom();
	return p;
}

static void *
xreallocarray(void *old, size_t n, size_t size)
{
	void	*p;

	if (size != 0 && n > SIZE_MAX / size)
		oom();
	if ((p = realloc(old, n * size == 0 ? 1 : n * size)) == NULL)
		oom();
	return p;
}

static char *
xstrndup(const char *s, size_t n)
{
	char	*p;

	p = xmalloc(n + 1);
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

static char *
xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

/* say - one diagnostic line on stderr, prefixed with our name */
static void __attribute__((format(printf, 1, 2)))
say(const char *fmt, ...)
{
	va_list	 ap;
	int	 saved = errno;

	flockfile(stderr);
	fprintf(stderr, "%s: ", cfg.name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	funlockfile(stderr);
	errno = saved;
}

/* usage_error - complain about the command line and exit EX_USAGE */
static _Noreturn void __attribute__((format(printf, 1, 2)))
usage_error(const char *fmt, ...)
{
	va_list	 ap;

	fputs("testmilter: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry 'testmilter --help'.\n", stderr);
	exit(EX_USAGE);
}

static void
sb_reserve(struct sbuf *sb, size_t more)
{
	size_t	 cap;

	if (more <= sb->cap - sb->len)
		return;
	if (more > SIZE_MAX / 2 - sb->len)
		oom();
	cap = sb->cap != 0 ? sb->cap : 128;
	while (cap - sb->len < more)
		cap *= 2;
	sb->p = xreallocarray(sb->p, cap, 1);
	sb->cap = cap;
}

static void
sb_addn(struct sbuf *sb, const char *s, size_t n)
{
	sb_reserve(sb, n + 1);
	memcpy(sb->p + sb->len, s, n);
	sb->len += n;
	sb->p[sb->len] = '\0';
}

static void
sb_adds(struct sbuf *sb, const char *s)
{
	sb_addn(sb, s, strlen(s));
}

static void __attribute__((format(printf, 2, 3)))
sb_addf(struct sbuf *sb, const char *fmt, ...)
{
	va_list	 ap;
	char	 tmp[256];
	int	 n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof tmp) {
		sb_addn(sb, tmp, (size_t)n);
		return;
	}
	sb_reserve(sb, (size_t)n + 1);
	va_start(ap, fmt);
	vsnprintf(sb->p + sb->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	sb->len += (size_t)n;
}

/* sb_addesc - append n bytes, escaped so a log line stays one line */
static void
sb_addesc(struct sbuf *sb, const char *s, size_t n)
{
	static const char	 hex[] = "0123456789abcdef";
	unsigned char		 c;
	char			*o;
	size_t			 i;

	sb_reserve(sb, 4 * n + 1);
	o = sb->p + sb->len;
	for (i = 0; i < n; i++) {
		c = (unsigned char)s[i];
		switch (c) {
		case '\r':
			*o++ = '\\';
			*o++ = 'r';
			break;
		case '\n':
			*o++ = '\\';
			*o++ = 'n';
			break;
		case '\t':
			*o++ = '\\';
			*o++ = 't';
			break;
		case '\\':
			*o++ = '\\';
			*o++ = '\\';
			break;
		default:
			if (c >= 0x20 && c < 0x7f) {
				*o++ = (char)c;
				break;
			}
			*o++ = '\\';
			*o++ = 'x';
			*o++ = hex[c >> 4];
			*o++ = hex[c & 0xf];
			break;
		}
	}
	*o = '\0';
	sb->len = (size_t)(o - sb->p);
}

static void
sb_addesc_str(struct sbuf *sb, const char *s)
{
	if (s != NULL)
		sb_addesc(sb, s, strlen(s));
}

/* log_open_line - start "<pid> <session> <stage>"; false if not logging */
static bool
log_open_line(struct sbuf *sb, const struct session *s, enum stage st)
{
	if (cfg.log_fd == -1)
		return false;
	memset(sb, 0, sizeof *sb);
	sb_addf(sb, "%ld %lu %s", cfg.pid, s != NULL ? s->id : 0UL,
	    stages[st].name);
	return true;
}

static void
log_macro(struct sbuf *sb, SMFICTX *ctx, char *name)
{
	const char	*v;

	if ((v = smfi_getsymval(ctx, name)) == NULL)
		return;
	sb_adds(sb, " macro:");
	sb_addesc_str(sb, name);
	sb_addn(sb, "=", 1);
	sb_addesc_str(sb, v);
}

/*
 * log_close_line - add the macros logged at this stage, then write the
 * line with one write(2): O_APPEND makes that atomic against the other
 * sessions' lines.
 */
static void
log_close_line(struct sbuf *sb, SMFICTX *ctx, enum stage st)
{
	static char *const	 envelope_macros[] = {
		"i", "{auth_authen}", "{mail_addr}"
	};
	const size_t		 nenv = sizeof envelope_macros /
				    sizeof envelope_macros[0];
	bool			 envelope;
	size_t			 i, j, off;
	ssize_t			 n;

	envelope = st == STAGE_ENVFROM || st == STAGE_EOM;
	if (ctx != NULL && envelope)
		for (i = 0; i < nenv; i++)
			log_macro(sb, ctx, envelope_macros[i]);
	for (i = 0; ctx != NULL && i < cfg.log_macros.n; i++) {
		for (j = 0; envelope && j < nenv; j++)
			if (strcmp(cfg.log_macros.v[i], envelope_macros[j]) == 0)
				break;
		if (!envelope || j == nenv)
			log_macro(sb, ctx, cfg.log_macros.v[i]);
	}
	sb_addn(sb, "\n", 1);

	/* A short write only happens when the disk is full. */
	for (off = 0; off < sb->len; off += (size_t)n) {
		n = write(cfg.log_fd, sb->p + off, sb->len - off);
		if (n == -1 && errno == EINTR) {
			n = 0;
			continue;
		}
		if (n == -1) {
			/* strerror() is not thread-safe; the number will do. */
			say("%s: write failed: errno %d", cfg.log_path, errno);
			break;
		}
	}
	free(sb->p);
	sb->p = NULL;
}

/* session_get - this connection's state; created if negotiate did not run */
static struct session *
session_get(SMFICTX *ctx)
{
	struct session	*s;

	if ((s = smfi_getpriv(ctx)) != NULL)
		return s;
	s = xcalloc(1, sizeof *s);
	s->id = atomic_fetch_add(&session_seq, 1) + 1;
	/*
	 * Without a negotiate callback for this session (after QUIT_NC)
	 * the flags are those negotiated for the socket.  NR bits are
	 * always granted (libmilter fakes them), SKIP is not known, so
	 * it is treated as not offered.
	 */
	s->proto = cfg.want_proto & ~(unsigned long)SMFIP_SKIP;
	if (smfi_setpriv(ctx, s) != MI_SUCCESS) {
		free(s);
		return NULL;
	}
	return s;
}

/* sleep_ms - sleep, resuming after signals */
static void
sleep_ms(long ms)
{
	struct timespec	 req, rem;

	req.tv_sec = ms / 1000;
	req.tv_nsec = (ms % 1000) * 1000000L;
	while (nanosleep(&req, &rem) == -1 && errno == EINTR)
		req = rem;
}

/* serial_lock - held across an eom delay with --serial-eom */
static pthread_mutex_t	 serial_lock = PTHREAD_MUTEX_INITIALIZER;

static void	delay_run(SMFICTX *, const struct session *, enum stage);

/* delay - the --delay of this stage; at eom with --progress-every, and
 * one session at a time with --serial-eom */
static void
delay(SMFICTX *ctx, const struct session *s, enum stage st)
{
	if (st != STAGE_EOM || !cfg.serial_eom) {
		delay_run(ctx, s, st);
		return;
	}
	pthread_mutex_lock(&serial_lock);
	delay_run(ctx, s, st);
	pthread_mutex_unlock(&serial_lock);
}

static void
delay_run(SMFICTX *ctx, const struct session *s, enum stage st)
{
	long	 left, step;

	left = cfg.delay_ms[st];
	if (left <= 0)
		return;
	if (st != STAGE_EOM || cfg.progress_ms <= 0) {
		sleep_ms(left);
		return;
	}
	while (left > 0) {
		step = left < cfg.progress_ms ? left : cfg.progress_ms;
		sleep_ms(step);
		left -= step;
		if (step == cfg.progress_ms && smfi_progress(ctx) != MI_SUCCESS)
			say("session %lu: eom: smfi_progress failed",
			    s != NULL ? s->id : 0UL);
	}
}

/* set_reply - the --reply of this stage, if its class fits the verdict */
static void
set_reply(SMFICTX *ctx, const struct session *s, enum stage st, char cls)
{
	struct reply	*r = cfg.reply[st];
	char		**l;
	int		 rc;

	if (r == NULL || r->code[0] != cls)
		return;
	if (r->nlines <= 1) {
		rc = smfi_setreply(ctx, r->code, r->xcode, r->lines[0]);
	} else {
		/* lines[] is NULL after the last line; libmilter stops there. */
		l = r->lines;
		rc = smfi_setmlreply(ctx, r->code, r->xcode,
		    l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7],
		    l[8], l[9], l[10], l[11], l[12], l[13], l[14], l[15],
		    l[16], l[17], l[18], l[19], l[20], l[21], l[22], l[23],
		    l[24], l[25], l[26], l[27], l[28], l[29], l[30], l[31],
		    (char *)NULL);
	}
	if (rc != MI_SUCCESS)
		say("session %lu: %s: setting the reply failed",
		    s != NULL ? s->id : 0UL, stages[st].name);
}

/* answer - turn a verdict into what libmilter expects at this stage */
static sfsistat
answer(SMFICTX *ctx, const struct session *s, enum stage st, enum verdict v)
{
	/* libmilter would turn any other answer into NOREPLY anyway. */
	if (s != NULL && (s->proto & stages[st].nr_bit) != 0)
		return SMFIS_NOREPLY;
	if (cfg.only_from.n > 0 && (s == NULL || !s->from_listed) &&
	    st >= STAGE_ENVFROM && st <= STAGE_EOM && st != STAGE_UNKNOWN &&
	    v == cfg.verdict[st])
		v = VERDICT_CONTINUE;

	switch (v) {
	case VERDICT_CONTINUE:
		return SMFIS_CONTINUE;
	case VERDICT_ACCEPT:
		return SMFIS_ACCEPT;
	case VERDICT_REJECT:
		set_reply(ctx, s, st, '5');
		return SMFIS_REJECT;
	case VERDICT_TEMPFAIL:
		set_reply(ctx, s, st, '4');
		return SMFIS_TEMPFAIL;
	case VERDICT_DISCARD:
		return SMFIS_DISCARD;
	case VERDICT_SKIP:
		/* libmilter sends 's' whether or not it was negotiated. */
		if (s != NULL && (s->proto & SMFIP_SKIP) != 0)
			return SMFIS_SKIP;
		return SMFIS_CONTINUE;
	case VERDICT_COUNT:
		break;
	}
	return SMFIS_CONTINUE;
}

/* finish - the stage's delay, then its answer */
static sfsistat
finish(SMFICTX *ctx, const struct session *s, enum stage st, enum verdict v)
{
	delay(ctx, s, st);
	return answer(ctx, s, st, v);
}

static sfsistat
cb_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
    unsigned long f2, unsigned long f3, unsigned long *pf0,
    unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
	struct session	*s;
	struct sbuf	 sb;
	int		 i;

	(void)f2;
	(void)f3;
	s = session_get(ctx);
	if (s == NULL)
		return SMFIS_REJECT;
	s->offered_actions = f0;
	s->offered_proto = f1;
	s->actions = cfg.want_actions & f0;
	s->proto = cfg.want_proto & f1;

	for (i = 0; i <= SMFIM_LAST; i++) {
		if (cfg.symlist[i] == NULL ||
		    (s->actions & SMFIF_SETSYMLIST) == 0)
			continue;
		if (smfi_setsymlist(ctx, i, cfg.symlist[i]) != MI_SUCCESS)
			say("session %lu: negotiate: smfi_setsymlist %s failed",
			    s->id, symlist_names[i]);
	}

	*pf0 = s->actions;
	*pf1 = s->proto;
	*pf2 = 0;
	*pf3 = 0;

	if (log_open_line(&sb, s, STAGE_NEGOTIATE)) {
		sb_addf(&sb, " offered_actions=0x%lx offered_proto=0x%lx"
		    " actions=0x%lx proto=0x%lx", f0, f1, s->actions, s->proto);
		log_close_line(&sb, NULL, STAGE_NEGOTIATE);
	}
	delay(ctx, s, STAGE_NEGOTIATE);
	/* Anything but CONTINUE (or ALL_OPTS) makes libmilter drop us. */
	if (cfg.verdict[STAGE_NEGOTIATE] != VERDICT_CONTINUE)
		return SMFIS_REJECT;
	return SMFIS_CONTINUE;
}

/* log_address - the connecting client's address, or "unknown" */
static void
log_address(struct sbuf *sb, const struct sockaddr *sa)
{
	const struct sockaddr_in	*sin;
	const struct sockaddr_in6	*sin6;
	const struct sockaddr_un	*sun;
	char				 buf[INET6_ADDRSTRLEN];

	if (sa == NULL) {
		sb_adds(sb, "unknown");
		return;
	}
	/* libmilter passes its own union, large enough for each family. */
	switch (sa->sa_family) {
	case AF_INET:
		sin = (const void *)sa;
		if (inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf) != NULL)
			sb_adds(sb, buf);
		else
			sb_adds(sb, "unknown");
		break;
	case AF_INET6:
		sin6 = (const void *)sa;
		if (inet_ntop(AF_INET6, &sin6->sin6_addr, buf,
		    sizeof buf) != NULL)
			sb_adds(sb, buf);
		else
			sb_adds(sb, "unknown");
		break;
	case AF_UNIX:
		sun = (const void *)sa;
		sb_addesc(sb, sun->sun_path,
		    strnlen(sun->sun_path, sizeof sun->sun_path));
		break;
	default:
		sb_adds(sb, "unknown");
		break;
	}
}

static sfsistat
cb_connect(SMFICTX *ctx, char *hostname, _SOCK_ADDR *hostaddr)
{
	struct session	*s = session_get(ctx);
	struct sbuf	 sb;

	if (log_open_line(&sb, s, STAGE_CONNECT)) {
		sb_addn(&sb, " ", 1);
		sb_addesc_str(&sb, hostname);
		sb_addn(&sb, " ", 1);
		log_address(&sb, hostaddr);
		log_close_line(&sb, ctx, STAGE_CONNECT);
	}
	return finish(ctx, s, STAGE_CONNECT, cfg.verdict[STAGE_CONNECT]);
}

static sfsistat
cb_helo(SMFICTX *ctx, char *helohost)
{
	struct session	*s = session_get(ctx);
	struct sbuf	 sb;

	if (log_open_line(&sb, s, STAGE_HELO)) {
		sb_addn(&sb, " ", 1);
		sb_addesc_str(&sb, helohost);
		log_close_line(&sb, ctx, STAGE_HELO);
	}
	return finish(ctx, s, STAGE_HELO, cfg.verdict[STAGE_HELO]);
}

static void
log_argv(struct sbuf *sb, char **argv)
{
	for (; argv != NULL && *argv != NULL; argv++) {
		sb_addn(sb, " ", 1);
		sb_addesc_str(sb, *argv);
	}
}

static bool	addr_listed(const struct strlist *, const char *);

static sfsistat
cb_envfrom(SMFICTX *ctx, char **argv)
{
	struct session	*s = session_get(ctx);
	struct sbuf	 sb;

	if (log_open_line(&sb, s, STAGE_ENVFROM)) {
		log_argv(&sb, argv);
		log_close_line(&sb, ctx, STAGE_ENVFROM);
	}
	if (s != NULL)
		s->from_listed = argv != NULL && argv[0] != NULL &&
		    addr_listed(&cfg.only_from, argv[0]);
	return finish(ctx, s, STAGE_ENVFROM, cfg.verdict[STAGE_ENVFROM]);
}

/* bare_addr - s without one pair of enclosing angle brackets */
static const char *
bare_addr(const char *s, size_t *lenp)
{
	size_t	 n = strlen(s);

	if (n >= 2 && s[0] == '<' && s[n - 1] == '>') {
		*lenp = n - 2;
		return s + 1;
	}
	*lenp = n;
	return s;
}

static bool
addr_listed(const struct strlist *l, const char *addr)
{
	const char	*a, *b;
	size_t		 alen, blen, i;

	a = bare_addr(addr, &alen);
	for (i = 0; i < l->n; i++) {
		b = bare_addr(l->v[i], &blen);
		if (alen == blen && strncasecmp(a, b, alen) == 0)
			return true;
	}
	return false;
}

static sfsistat
cb_envrcpt(SMFICTX *ctx, char **argv)
{
	struct session	*s = session_get(ctx);
	struct sbuf	 sb;
	enum verdict	 v = cfg.verdict[STAGE_ENVRCPT];

	if (log_open_line(&sb, s, STAGE_ENVRCPT)) {
		log_argv(&sb, argv);
		log_close_line(&sb, ctx, STAGE_ENVRCPT);
	}
	if (argv != NULL && argv[0] != NULL) {
		if (addr_listed(&cfg.reject_rcpt, argv[0]))
			v = VERDICT_REJECT;
		else if (addr_listed(&cfg.tempfail_rcpt, argv[0]))
			v = VERDICT_TEMPFAIL;
	}
	return finish(ctx, s, STAGE_ENVRCPT, v);
}

static sfsistat
cb_data(SMFICTX *ctx)
{
	struct session	*s = session_get(ctx);
	struct sbuf	 sb;

	if (log_open_line(&sb, s, STAGE_DATA))
		log_close_line(&sb, ctx, STAGE_DATA);
	return finish(ctx, s, STAGE_DATA, cfg.verdict[STAGE_DATA]);
}

static sfsistat
cb_unknown(SMFICTX *ctx, const char *cmd)
{
	struct session	*s = session_get(ctx);
	struct sbuf	 sb;

	if (log_open_line(&sb, s, STAGE_UNKNOWN)) {
		sb_addn(&sb, " ", 1);
		sb_addesc_str(&sb, cmd);
		log_close_line(&sb, ctx, STAGE_UNKNOWN);
	}
	return finish(ctx, s, STAGE_UNKNOWN, cfg.verdict[STAGE_UNKNOWN]);
}

static sfsistat
cb_header(SMFICTX *ctx, char *name, char *value)
{
	struct session	*s = session_get(ctx);
	struct sbuf	 sb;

	if (log_open_line(&sb, s, STAGE_HEADER)) {
		sb_addn(&sb, " ", 1);
		sb_addesc_str(&sb, name);
		sb_addn(&sb, ": ", 2);
		sb_addesc_str(&sb, value);
		log_close_line(&sb, ctx, STAGE_HEADER);
	}
	return finish(ctx, s, STAGE_HEADER, cfg.verdict[STAGE_HEADER]);
}

static sfsistat
cb_eoh(SMFICTX *ctx)
{
	struct session	*s = session_get(ctx);
	struct sbuf	 sb;

	if (log_open_line(&sb, s, STAGE_EOH))
		log_close_line(&sb, ctx, STAGE_EOH);
	return finish(ctx, s, STAGE_EOH, cfg.verdict[STAGE_EOH]);
}

static sfsistat
cb_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
	struct session	*s = session_get(ctx);
	struct sbuf	 sb;

	(void)chunk;
	if (log_open_line(&sb, s, STAGE_BODY)) {
		sb_addf(&sb, " %zu", len);
		log_close_line(&sb, ctx, STAGE_BODY);
	}
	return finish(ctx, s, STAGE_BODY, cfg.verdict[STAGE_BODY]);
}

/* apply_mod - make one modification; libmilter writes it at once */
static void
apply_mod(SMFICTX *ctx, const struct session *s, const struct mod *m)
{
	static char	 seen[] = "seen", seen_leadspc[] = " seen";
	int		 rc = MI_FAILURE;

	switch (m->kind) {
	case MOD_ADDHEADER:
		rc = smfi_addheader(ctx, m->a, m->b);
		break;
	case MOD_INSHEADER:
		rc = smfi_insheader(ctx, m->idx, m->a, m->b);
		break;
	case MOD_CHGHEADER:
		rc = smfi_chgheader(ctx, m->a, m->idx, m->b);
		break;
	case MOD_ADDRCPT:
		rc = smfi_addrcpt(ctx, m->a);
		break;
	case MOD_ADDRCPT_PAR:
		rc = smfi_addrcpt_par(ctx, m->a, m->b);
		break;
	case MOD_DELRCPT:
		rc = smfi_delrcpt(ctx, m->a);
		break;
	case MOD_CHGFROM:
		rc = smfi_chgfrom(ctx, m->a, m->b);
		break;
	case MOD_REPLBODY:
		rc = smfi_replacebody(ctx, (unsigned char *)m->a,
		    (int)m->alen);
		break;
	case MOD_QUARANTINE:
		rc = smfi_quarantine(ctx, m->a);
		break;
	case MOD_TAG:
		/* With HDR_LEADSPC the MTA adds no space: supply it. */
		rc = smfi_addheader(ctx, cfg.tag_name,
		    s != NULL && (s->proto & SMFIP_HDR_LEADSPC) != 0 ?
		    seen_leadspc : seen);
		break;
	case MOD_KIND_COUNT:
		break;
	}
	if (rc != MI_SUCCESS)
		say("session %lu: eom: --%s %s failed%s",
		    s != NULL ? s->id : 0UL, mod_infos[m->kind].name,
		    m->kind == MOD_TAG ? cfg.tag_name :
		    m->kind == MOD_REPLBODY ? "(body)" : m->a,
		    s != NULL && (s->actions & mod_infos[m->kind].action) == 0 ?
		    " (action not negotiated)" : "");
}

static sfsistat
cb_eom(SMFICTX *ctx)
{
	struct session	*s = session_get(ctx);
	struct sbuf	 sb;
	size_t		 i;
	long		 r;

	if (log_open_line(&sb, s, STAGE_EOM))
		log_close_line(&sb, ctx, STAGE_EOM);
	delay(ctx, s, STAGE_EOM);
	for (r = 0; r < cfg.repeat; r++)
		for (i = 0; i < cfg.nmods; i++)
			apply_mod(ctx, s, &cfg.mods[i]);
	return answer(ctx, s, STAGE_EOM, cfg.verdict[STAGE_EOM]);
}

static sfsistat
cb_abort(SMFICTX *ctx)
{
	struct session	*s = smfi_getpriv(ctx);
	struct sbuf	 sb;

	if (log_open_line(&sb, s, STAGE_ABORT))
		log_close_line(&sb, ctx, STAGE_ABORT);
	delay(ctx, s, STAGE_ABORT);
	return SMFIS_CONTINUE;
}

/*
 * cb_close - must not block: the pool's idle reaper calls it under the
 * pool lock.  Runs once per connection, also without negotiate.
 */
static sfsistat
cb_close(SMFICTX *ctx)
{
	struct session	*s = smfi_getpriv(ctx);
	struct sbuf	 sb;

	if (log_open_line(&sb, s, STAGE_CLOSE))
		log_close_line(&sb, ctx, STAGE_CLOSE);
	free(s);
	(void)smfi_setpriv(ctx, NULL);
	return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
	.xxfi_name	= "testmilter",
	.xxfi_version	= SMFI_VERSION,
	.xxfi_flags	= SMFIF_NONE,
	.xxfi_connect	= cb_connect,
	.xxfi_helo	= cb_helo,
	.xxfi_envfrom	= cb_envfrom,
	.xxfi_envrcpt	= cb_envrcpt,
	.xxfi_header	= cb_header,
	.xxfi_eoh	= cb_eoh,
	.xxfi_body	= cb_body,
	.xxfi_eom	= cb_eom,
	.xxfi_abort	= cb_abort,
	.xxfi_close	= cb_close,
	.xxfi_unknown	= cb_unknown,
	.xxfi_data	= cb_data,
	.xxfi_negotiate	= cb_negotiate,
};

/* ------------------------------------------------------------------ */
/* Command line.                                                       */

static const char usage_text[] =
"Usage: testmilter -p SOCKSPEC [options]\n"
"A milter that does exactly what its command line says.\n"
"\n"
"  -p SOCKSPEC               unix:/path, inet:PORT[@HOST] or\n"
"                            inet6:PORT[@HOST]; a stale unix socket\n"
"                            is removed\n"
"  -n, --name NAME           name in logs and in the --tag header\n"
"                            (default testmilter)\n"
"  --verdict STAGE=VERDICT   STAGE: connect helo envfrom envrcpt data unknown\n"
"                            header eoh body eom, or negotiate (anything but\n"
"                            continue drops the session); VERDICT: continue\n"
"                            accept reject tempfail discard skip (skip at\n"
"                            envrcpt/header/body only, sent only if the MTA\n"
"                            offered SMFIP_SKIP, else continue)\n"
"  --reply STAGE=\"CODE [XCODE] [TEXT]\"\n"
"                            reply for a reject (5xx) or tempfail (4xx) at\n"
"                            STAGE; \"\\n\" in TEXT makes a multi-line reply\n"
"  --reject-rcpt ADDR        reject this recipient at envrcpt (no case, <>\n"
"                            optional); uses --reply envrcpt=...\n"
"  --tempfail-rcpt ADDR      tempfail this recipient at envrcpt\n"
"  --only-from ADDR          stage verdicts (envfrom..eom) only for messages\n"
"                            from ADDR; continue for the others\n"
"  --delay STAGE=MS          sleep in that callback before answering (also\n"
"                            negotiate, abort)\n"
"  --progress-every MS       during the eom delay, smfi_progress every MS\n"
"  --serial-eom              one eom delay at a time in the whole process\n"
"\n"
"Modifications, made at eom in command-line order whatever the verdict:\n"
"  --addheader \"NAME:VALUE\"       --insheader \"IDX:NAME:VALUE\"\n"
"  --chgheader \"IDX:NAME:VALUE\"   (empty VALUE deletes)\n"
"  --addrcpt ADDR    --addrcpt-par \"ADDR [ARGS]\"    --delrcpt ADDR\n"
"  --chgfrom \"ADDR [ARGS]\"        --replbody TEXT (\"\\n\" becomes CRLF)\n"
"  --quarantine REASON            --tag (adds X-Testmilter-NAME: seen)\n"
"  --repeat N                     make them all N times over (default 1)\n"
"  Header VALUEs are sent verbatim (\"\\n\" = LF for folding, \"\\t\" = TAB).\n"
"\n"
"Protocol options (requested only if the MTA offered them; the actions\n"
"requested are exactly those the modifications need):\n"
"  --no STAGE                SMFIP_NO* for connect helo envfrom envrcpt data\n"
"                            unknown header eoh body\n"
"  --nr STAGE                SMFIP_NR_* for the same; the callback returns\n"
"                            NOREPLY\n"
"  --leadspc                 SMFIP_HDR_LEADSPC\n"
"  --rcpt-rej                SMFIP_RCPT_REJ: see recipients the MTA rejected\n"
"  --symlist STAGE=\"NAMES\"   smfi_setsymlist (connect helo envfrom envrcpt\n"
"                            data eoh eom)\n"
"\n"
"Logging:\n"
"  --log FILE                one line per callback, appended with one\n"
"                            write(2): \"<pid> <session> <stage> <details>\"\n"
"  --log-macros \"NAMES\"      macros to log at every callback when set\n"
"  -h, --help                this text\n"
"\n"
"Exit: 0 on SIGTERM, 64 bad usage, 73 log not writable, 70 libmilter error.\n";

enum {
	LONG_VERDICT = 256,
	LONG_REPLY,
	LONG_REJECT_RCPT,
	LONG_TEMPFAIL_RCPT,
	LONG_ONLY_FROM,
	LONG_DELAY,
	LONG_PROGRESS_EVERY,
	LONG_SERIAL_EOM,
	LONG_ADDHEADER,
	LONG_INSHEADER,
	LONG_CHGHEADER,
	LONG_ADDRCPT,
	LONG_ADDRCPT_PAR,
	LONG_DELRCPT,
	LONG_CHGFROM,
	LONG_REPLBODY,
	LONG_QUARANTINE,
	LONG_TAG,
	LONG_REPEAT,
	LONG_NO,
	LONG_NR,
	LONG_LEADSPC,
	LONG_RCPT_REJ,
	LONG_SYMLIST,
	LONG_LOG,
	LONG_LOG_MACROS
};

/* parse_args maps LONG_ADDHEADER..LONG_TAG onto enum mod_kind. */
_Static_assert(LONG_INSHEADER - LONG_ADDHEADER == MOD_INSHEADER &&
    LONG_CHGHEADER - LONG_ADDHEADER == MOD_CHGHEADER &&
    LONG_ADDRCPT - LONG_ADDHEADER == MOD_ADDRCPT &&
    LONG_ADDRCPT_PAR - LONG_ADDHEADER == MOD_ADDRCPT_PAR &&
    LONG_DELRCPT - LONG_ADDHEADER == MOD_DELRCPT &&
    LONG_CHGFROM - LONG_ADDHEADER == MOD_CHGFROM &&
    LONG_REPLBODY - LONG_ADDHEADER == MOD_REPLBODY &&
    LONG_QUARANTINE - LONG_ADDHEADER == MOD_QUARANTINE &&
    LONG_TAG - LONG_ADDHEADER == MOD_TAG, "LONG_ and MOD_ orders differ");

static const struct option long_opts[] = {
	{ "name",		required_argument,	NULL, 'n' },
	{ "help",		no_argument,		NULL, 'h' },
	{ "verdict",		required_argument,	NULL, LONG_VERDICT },
	{ "reply",		required_argument,	NULL, LONG_REPLY },
	{ "reject-rcpt",	required_argument,	NULL, LONG_REJECT_RCPT },
	{ "tempfail-rcpt",	required_argument,	NULL,
	    LONG_TEMPFAIL_RCPT },
	{ "only-from",		required_argument,	NULL, LONG_ONLY_FROM },
	{ "delay",		required_argument,	NULL, LONG_DELAY },
	{ "progress-every",	required_argument,	NULL,
	    LONG_PROGRESS_EVERY },
	{ "serial-eom",		no_argument,		NULL, LONG_SERIAL_EOM },
	{ "addheader",		required_argument,	NULL, LONG_ADDHEADER },
	{ "insheader",		required_argument,	NULL, LONG_INSHEADER },
	{ "chgheader",		required_argument,	NULL, LONG_CHGHEADER },
	{ "addrcpt",		required_argument,	NULL, LONG_ADDRCPT },
	{ "addrcpt-par",	required_argument,	NULL, LONG_ADDRCPT_PAR },
	{ "delrcpt",		required_argument,	NULL, LONG_DELRCPT },
	{ "chgfrom",		required_argument,	NULL, LONG_CHGFROM },
	{ "replbody",		required_argument,	NULL, LONG_REPLBODY },
	{ "quarantine",		required_argument,	NULL, LONG_QUARANTINE },
	{ "tag",		no_argument,		NULL, LONG_TAG },
	{ "repeat",		required_argument,	NULL, LONG_REPEAT },
	{ "no",			required_argument,	NULL, LONG_NO },
	{ "nr",			required_argument,	NULL, LONG_NR },
	{ "leadspc",		no_argument,		NULL, LONG_LEADSPC },
	{ "rcpt-rej",		no_argument,		NULL, LONG_RCPT_REJ },
	{ "symlist",		required_argument,	NULL, LONG_SYMLIST },
	{ "log",		required_argument,	NULL, LONG_LOG },
	{ "log-macros",		required_argument,	NULL, LONG_LOG_MACROS },
	{ NULL,			0,			NULL, 0 }
};

static void
strlist_add(struct strlist *l, const char *s)
{
	l->v = xreallocarray(l->v, l->n + 1, sizeof *l->v);
	l->v[l->n++] = xstrdup(s);
}

/* parse_num - a decimal integer in [min, max], digits only */
static bool
parse_num(const char *s, long min, long max, long *out)
{
	char	*end;
	long	 v;

	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return false;
	*out = v;
	return true;
}

/* stage_list - the stages an option accepts, for error messages */
static const char *
stage_list(unsigned int allow)
{
	static char	 buf[256];
	size_t		 off = 0;
	int		 i;

	buf[0] = '\0';
	for (i = 0; i < STAGE_COUNT; i++)
		if ((stages[i].allow & allow) != 0 && off < sizeof buf)
			off += (size_t)snprintf(buf + off, sizeof buf - off,
			    "%s%s", off != 0 ? " " : "", stages[i].name);
	return buf;
}

/*
 * parse_stage - the STAGE of "STAGE" (valuep NULL) or "STAGE=VALUE";
 * *valuep points into arg.  Exits on error.
 */
static enum stage
parse_stage(const char *opt, const char *arg, unsigned int allow,
    const char **valuep)
{
	const char	*eq;
	size_t		 n;
	int		 i;

	eq = valuep != NULL ? strchr(arg, '=') : NULL;
	if (valuep != NULL && eq == NULL)
		usage_error("--%s: expected STAGE=VALUE, got '%s'", opt, arg);
	n = eq != NULL ? (size_t)(eq - arg) : strlen(arg);
	for (i = 0; i < STAGE_COUNT; i++) {
		if (strlen(stages[i].name) != n ||
		    strncmp(stages[i].name, arg, n) != 0)
			continue;
		if ((stages[i].allow & allow) == 0)
			break;
		if (valuep != NULL)
			*valuep = eq + 1;
		return (enum stage)i;
	}
	usage_error("--%s: bad stage '%.*s' (one of: %s)", opt, (int)n, arg,
	    stage_list(allow));
}

static void
parse_verdict(const char *arg)
{
	const char	*val;
	enum stage	 st;
	int		 v;

	st = parse_stage("verdict", arg, ALLOW_VERDICT, &val);
	for (v = 0; v < VERDICT_COUNT; v++)
		if (strcmp(verdict_names[v], val) == 0)
			break;
	if (v == VERDICT_COUNT)
		usage_error("--verdict: bad verdict '%s' (one of: continue "
		    "accept reject tempfail discard skip)", val);
	if (v == VERDICT_SKIP && (stages[st].allow & ALLOW_SKIP) == 0)
		usage_error("--verdict: skip is only for %s",
		    stage_list(ALLOW_SKIP));
	if (st == STAGE_NEGOTIATE && v != VERDICT_CONTINUE &&
	    v != VERDICT_REJECT)
		usage_error("--verdict: negotiate takes continue or reject");
	cfg.verdict[st] = (enum verdict)v;
}

/* unescape - copy s: "\n" becomes nl, "\t" TAB, "\\" one backslash */
static char *
unescape(const char *s, const char *nl, size_t *lenp)
{
	size_t	 nllen = strlen(nl), len = 0;
	char	*out;

	out = xmalloc(strlen(s) * (nllen > 1 ? nllen : 1) + 1);
	while (*s != '\0') {
		if (s[0] == '\\' && s[1] == 'n') {
			memcpy(out + len, nl, nllen);
			len += nllen;
			s += 2;
		} else if (s[0] == '\\' && s[1] == 't') {
			out[len++] = '\t';
			s += 2;
		} else if (s[0] == '\\' && s[1] == '\\') {
			out[len++] = '\\';
			s += 2;
		} else {
			out[len++] = *s++;
		}
	}
	out[len] = '\0';
	if (lenp != NULL)
		*lenp = len;
	return out;
}

/* enhanced_len - length of a [245].d{1,3}.d{1,3} code at s, or 0 */
static size_t
enhanced_len(const char *s)
{
	size_t	 i = 2, d;

	if ((s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return 0;
	for (d = 0; d < 3 && s[i] >= '0' && s[i] <= '9'; d++)
		i++;
	if (d == 0 || s[i] != '.')
		return 0;
	i++;
	for (d = 0; d < 3 && s[i] >= '0' && s[i] <= '9'; d++)
		i++;
	if (d == 0 || (s[i] != ' ' && s[i] != '\0'))
		return 0;
	return i;
}

static void
reply_free(struct reply *r)
{
	size_t	 i;

	if (r == NULL)
		return;
	for (i = 0; i < r->nlines; i++)
		free(r->lines[i]);
	free(r->xcode);
	free(r);
}

static void
parse_reply(const char *arg)
{
	struct reply	*r;
	const char	*p;
	enum stage	 st;
	size_t		 n;
	char		*text, *line, *nl;

	st = parse_stage("reply", arg, ALLOW_REPLY, &p);
	if ((p[0] != '4' && p[0] != '5') || p[1] < '0' || p[1] > '9' ||
	    p[2] < '0' || p[2] > '9' || (p[3] != ' ' && p[3] != '\0'))
		usage_error("--reply: '%s' does not start with a 4xx or 5xx "
		    "code", p);
	r = xcalloc(1, sizeof *r);
	memcpy(r->code, p, 3);
	p += 3;
	if (*p == ' ')
		p++;
	if ((n = enhanced_len(p)) != 0) {
		r->xcode = xstrndup(p, n);
		p += n;
		if (*p == ' ')
			p++;
	}
	if (*p != '\0') {
		text = unescape(p, "\n", NULL);
		for (line = text; line != NULL; line = nl) {
			if ((nl = strchr(line, '\n')) != NULL)
				*nl++ = '\0';
			if (r->nlines == REPLY_MAX_LINES)
				usage_error("--reply: more than %d lines",
				    REPLY_MAX_LINES);
			if (strlen(line) > REPLY_MAX_LEN)
				usage_error("--reply: a line is longer than "
				    "%d bytes", REPLY_MAX_LEN);
			if (strchr(line, '\r') != NULL)
				usage_error("--reply: CR in the text");
			r->lines[r->nlines++] = xstrdup(line);
		}
		free(text);
	}
	reply_free(cfg.reply[st]);
	cfg.reply[st] = r;
}

static void
parse_delay(const char *arg)
{
	const char	*val;
	enum stage	 st;
	long		 ms;

	st = parse_stage("delay", arg, ALLOW_DELAY, &val);
	if (!parse_num(val, 0, DELAY_MAX_MS, &ms))
		usage_error("--delay: bad milliseconds '%s'", val);
	cfg.delay_ms[st] = ms;
}

static struct mod *
mod_new(enum mod_kind kind)
{
	struct mod	*m;

	cfg.mods = xreallocarray(cfg.mods, cfg.nmods + 1, sizeof *cfg.mods);
	m = &cfg.mods[cfg.nmods++];
	memset(m, 0, sizeof *m);
	m->kind = kind;
	return m;
}

/* parse_header_mod - [IDX:]NAME:VALUE into m */
static void
parse_header_mod(struct mod *m, const char *arg, bool with_idx)
{
	const char	*opt = mod_infos[m->kind].name, *p = arg, *colon;
	char		*num;
	long		 idx;

	if (with_idx) {
		if ((colon = strchr(p, ':')) == NULL)
			usage_error("--%s: expected IDX:NAME:VALUE, got '%s'",
			    opt, arg);
		num = xstrndup(p, (size_t)(colon - p));
		if (!parse_num(num, 0, INT_MAX, &idx))
			usage_error("--%s: bad index '%s'", opt, num);
		free(num);
		m->idx = (int)idx;
		p = colon + 1;
	}
	if ((colon = strchr(p, ':')) == NULL || colon == p)
		usage_error("--%s: expected %sNAME:VALUE, got '%s'", opt,
		    with_idx ? "IDX:" : "", arg);
	m->a = xstrndup(p, (size_t)(colon - p));
	m->b = unescape(colon + 1, "\n", NULL);
	/* An empty value deletes; libmilter sends NULL as "". */
	if (m->kind == MOD_CHGHEADER && m->b[0] == '\0') {
		free(m->b);
		m->b = NULL;
	}
}

/* parse_addr_mod - "ADDR" or "ADDR ARGS" into m */
static void
parse_addr_mod(struct mod *m, const char *arg, bool with_args)
{
	const char	*opt = mod_infos[m->kind].name, *sp;

	sp = with_args ? strchr(arg, ' ') : NULL;
	if (sp == NULL) {
		m->a = xstrdup(arg);
	} else {
		m->a = xstrndup(arg, (size_t)(sp - arg));
		if (sp[1] != '\0')
			m->b = xstrdup(sp + 1);
	}
	if (m->a[0] == '\0')
		usage_error("--%s: empty address", opt);
}

static void
parse_mod(enum mod_kind kind, const char *arg)
{
	struct mod	*m = mod_new(kind);

	switch (kind) {
	case MOD_ADDHEADER:
		parse_header_mod(m, arg, false);
		break;
	case MOD_INSHEADER:
	case MOD_CHGHEADER:
		parse_header_mod(m, arg, true);
		break;
	case MOD_ADDRCPT:
	case MOD_DELRCPT:
		parse_addr_mod(m, arg, false);
		break;
	case MOD_ADDRCPT_PAR:
	case MOD_CHGFROM:
		parse_addr_mod(m, arg, true);
		break;
	case MOD_REPLBODY:
		m->a = unescape(arg, "\r\n", &m->alen);
		if (m->alen > INT_MAX)
			usage_error("--replbody: body too long");
		break;
	case MOD_QUARANTINE:
		if (arg[0] == '\0')
			usage_error("--quarantine: empty reason");
		m->a = xstrdup(arg);
		break;
	case MOD_TAG:
	case MOD_KIND_COUNT:
		break;
	}
}

/* add_words - the space-separated names in arg onto l */
static void
add_words(struct strlist *l, const char *arg)
{
	const char	*p = arg, *end;
	char		*w;

	for (;;) {
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0')
			break;
		for (end = p; *end != '\0' && *end != ' ' && *end != '\t';)
			end++;
		w = xstrndup(p, (size_t)(end - p));
		strlist_add(l, w);
		free(w);
		p = end;
	}
}

static void
parse_symlist(const char *arg)
{
	const char	*eq;
	size_t		 n;
	int		 i;

	if ((eq = strchr(arg, '=')) == NULL)
		usage_error("--symlist: expected STAGE=\"NAMES\", got '%s'",
		    arg);
	n = (size_t)(eq - arg);
	for (i = 0; i <= SMFIM_LAST; i++)
		if (strlen(symlist_names[i]) == n &&
		    strncmp(symlist_names[i], arg, n) == 0)
			break;
	if (i > SMFIM_LAST)
		usage_error("--symlist: bad stage '%.*s' (one of: connect "
		    "helo envfrom envrcpt data eoh eom)", (int)n, arg);
	if (cfg.symlist[i] != NULL)
		usage_error("--symlist: stage %s given twice",
		    symlist_names[i]);
	cfg.symlist[i] = xstrdup(eq + 1);
}

static void
check_name(const char *name)
{
	const char	*p;

	if (name[0] == '\0')
		usage_error("--name: empty");
	for (p = name; *p != '\0'; p++)
		if (*p <= ' ' || *p >= 0x7f || *p == ':')
			usage_error("--name: '%s' cannot go in a header name "
			    "(printable ASCII, no space or colon)", name);
}

/* check_config - what the options mean together; warns, never fails */
static void
check_config(void)
{
	const struct reply	*r;
	enum verdict		 v;
	int			 i;

	for (i = 0; i < STAGE_COUNT; i++) {
		v = cfg.verdict[i];
		if ((cfg.want_proto & stages[i].nr_bit) != 0 &&
		    v != VERDICT_CONTINUE)
			say("warning: --nr %s: the verdict %s is never sent",
			    stages[i].name, verdict_names[v]);
		if ((r = cfg.reply[i]) == NULL || i == STAGE_ENVRCPT)
			continue;
		if ((v == VERDICT_REJECT && r->code[0] != '5') ||
		    (v == VERDICT_TEMPFAIL && r->code[0] != '4'))
			say("warning: --reply %s: code %s does not fit the "
			    "verdict %s and is not used", stages[i].name,
			    r->code, verdict_names[v]);
	}
	if (cfg.progress_ms > 0 && cfg.delay_ms[STAGE_EOM] == 0)
		say("warning: --progress-every without --delay eom=MS");
}

static void
parse_args(int argc, char **argv)
{
	enum mod_kind	 kind;
	enum stage	 st;
	int		 c, i;
	bool		 skip = false;

	while ((c = getopt_long(argc, argv, "p:n:h", long_opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			cfg.sockspec = optarg;
			break;
		case 'n':
			check_name(optarg);
			cfg.name = optarg;
			break;
		case 'h':
			fputs(usage_text, stdout);
			exit(0);
		case LONG_VERDICT:
			parse_verdict(optarg);
			break;
		case LONG_REPLY:
			parse_reply(optarg);
			break;
		case LONG_REJECT_RCPT:
			strlist_add(&cfg.reject_rcpt, optarg);
			break;
		case LONG_TEMPFAIL_RCPT:
			strlist_add(&cfg.tempfail_rcpt, optarg);
			break;
		case LONG_ONLY_FROM:
			strlist_add(&cfg.only_from, optarg);
			break;
		case LONG_DELAY:
			parse_delay(optarg);
			break;
		case LONG_SERIAL_EOM:
			cfg.serial_eom = true;
			break;
		case LONG_PROGRESS_EVERY:
			if (!parse_num(optarg, 1, DELAY_MAX_MS,
			    &cfg.progress_ms))
				usage_error("--progress-every: bad "
				    "milliseconds '%s'", optarg);
			break;
		case LONG_ADDHEADER:
		case LONG_INSHEADER:
		case LONG_CHGHEADER:
		case LONG_ADDRCPT:
		case LONG_ADDRCPT_PAR:
		case LONG_DELRCPT:
		case LONG_CHGFROM:
		case LONG_REPLBODY:
		case LONG_QUARANTINE:
		case LONG_TAG:
			/* The LONG_ mod options follow enum mod_kind's order. */
			kind = (enum mod_kind)(c - LONG_ADDHEADER);
			parse_mod(kind, optarg);
			break;
		case LONG_REPEAT:
			if (!parse_num(optarg, 1, 10000000L, &cfg.repeat))
				usage_error("--repeat: bad count '%s'", optarg);
			break;
		case LONG_NO:
			st = parse_stage("no", optarg, ALLOW_PROTO, NULL);
			cfg.want_proto |= stages[st].no_bit;
			break;
		case LONG_NR:
			st = parse_stage("nr", optarg, ALLOW_PROTO, NULL);
			cfg.want_proto |= stages[st].nr_bit;
			break;
		case LONG_LEADSPC:
			cfg.want_proto |= SMFIP_HDR_LEADSPC;
			break;
		case LONG_RCPT_REJ:
			cfg.want_proto |= SMFIP_RCPT_REJ;
			break;
		case LONG_SYMLIST:
			parse_symlist(optarg);
			break;
		case LONG_LOG:
			cfg.log_path = optarg;
			break;
		case LONG_LOG_MACROS:
			add_words(&cfg.log_macros, optarg);
			break;
		default:
			/* getopt_long has said what is wrong. */
			fputs("Try 'testmilter --help'.\n", stderr);
			exit(EX_USAGE);
		}
	}
	if (optind < argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	if (cfg.sockspec == NULL || cfg.sockspec[0] == '\0')
		usage_error("-p SOCKSPEC is required");

	for (i = 0; i < STAGE_COUNT; i++)
		if (cfg.verdict[i] == VERDICT_SKIP)
			skip = true;
	if (skip)
		cfg.want_proto |= SMFIP_SKIP;
	for (i = 0; (size_t)i < cfg.nmods; i++)
		cfg.want_actions |= mod_infos[cfg.mods[i].kind].action;
	for (i = 0; i <= SMFIM_LAST; i++)
		if (cfg.symlist[i] != NULL)
			cfg.want_actions |= SMFIF_SETSYMLIST;
}

int
main(int argc, char **argv)
{
	struct sbuf	 sb;

	parse_args(argc, argv);
	check_config();

	memset(&sb, 0, sizeof sb);
	sb_addf(&sb, "X-Testmilter-%s", cfg.name);
	cfg.tag_name = sb.p;
	cfg.pid = (long)getpid();

	if (cfg.log_path != NULL) {
		cfg.log_fd = open(cfg.log_path,
		    O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (cfg.log_fd == -1) {
			say("%s: %s", cfg.log_path, strerror(errno));
			return EX_CANTCREAT;
		}
	}

	desc.xxfi_name = cfg.name;
	desc.xxfi_flags = cfg.want_actions;
	if (smfi_setconn(cfg.sockspec) != MI_SUCCESS) {
		say("smfi_setconn %s failed", cfg.sockspec);
		return EX_SOFTWARE;
	}
	if (smfi_register(desc) != MI_SUCCESS) {
		say("smfi_register failed");
		return EX_SOFTWARE;
	}
	if (smfi_opensocket(true) != MI_SUCCESS) {
		say("cannot listen on %s", cfg.sockspec);
		return EX_SOFTWARE;
	}
	/* smfi_main blocks SIGTERM/SIGHUP/SIGINT and stops on them. */
	if (smfi_main() != MI_SUCCESS) {
		say("smfi_main failed");
		return EX_SOFTWARE;
	}
	/* libmilter's exit handler destroys mutexes its own threads may
	 * still hold (ThreadSanitizer reports it); nothing of ours needs
	 * atexit, and the log is written with write(2). */
	_exit(0);
}
