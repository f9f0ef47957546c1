/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * front - libmilter callbacks: the MTA-facing side of the proxy.
 *
 * Each callback turns its arguments into a fanout_event, lets fanout.c
 * ask every upstream, and returns the merged verdict.  A reply text is
 * set only right before the verdict it belongs to is returned: libmilter
 * keeps a text set earlier and would attach it to a later, unrelated
 * verdict (PROTOCOL.md fact 5).  Modifications are applied only in
 * xxfi_eom, on the callback's own thread, as libmilter requires.
 *
 * Sessions beyond the cap (front_session_cap) are refused: they get
 * no fanout, hence no upstream socket, and their connect callback
 * answers with the top-level on_failure; a refused session holds only
 * the MTA's socket, until the MTA closes it (at once, after a verdict
 * at connect).
 *
 * Concurrency: no state shared between connections except the pool
 * pointer and the descriptor budget (set once before smfi_main),
 * atomics (the connection counter, the count of open and of admitted
 * sessions, the draining flag), refuse_lock, which keeps the count of
 * refused sessions for the rate-limited log line, and the ring of
 * agreements parked for a session after QUIT_NC, under park_lock.
 * Ownership: struct conn is allocated in negotiate (the first callback),
 * or in connect for a session after QUIT_NC, and freed in close, which
 * may also run without either.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <libmilter/mfapi.h>

#include "conf.h"
#include "fanout.h"
#include "front.h"
#include "handover.h"
#include "log.h"
#include "metrics.h"
#include "netio.h"
#include "xalloc.h"

/* libmilter's limits on a reply text (MAXREPLIES, MAXREPLYLEN in its
 * libmilter.h, not installed): lines, and bytes in each line's text. */
#define MAX_REPLY_LINES	32
#define MAX_REPLY_LEN	980
/* The longest report of a cut: one entry per line kept, and the rest. */
#define CUT_REPORT	(MAX_REPLY_LINES * 48 + 160)

/*
 * The stages the MTA is asked not to wait for (SMFIP_NR_*).  Headers,
 * end of headers and body chunks are sent to the upstreams without
 * waiting for their answers anyway (fanout.c), so a reply of ours to
 * each of them would only say "continue" and cost a round trip: without
 * it the MTA streams them and libmilter handles them in one go, on one
 * thread.  A reject or tempfail known by then is held and given at end
 * of message.  The SMTP client hears the verdict only after the whole
 * message (the answer to its final dot) in any case; what is lost is
 * that the MTA stops passing us the rest of a rejected body, which we
 * then drop unread by the upstreams.  An MTA without NR support gets
 * "continue" from libmilter itself, as before.
 */
#ifdef HAVE_MI_SENDOK
#define FRONT_NR	(MP_NR_HDR | MP_NR_EOH | MP_NR_BODY)
#else
/* Without mi_sendok the body callback cannot tell BODYEOB data from a
 * body chunk (at_eom below); a body chunk is answered then. */
#define FRONT_NR	(MP_NR_HDR | MP_NR_EOH)
#endif

/* Descriptors kept free beyond the sessions' own: for refused MTA
 * connections until the MTA closes them, libmilter, the log, a reload;
 * plus FD_SPARE_DIV-th of the limit. */
#define FD_SPARE	16
#define FD_SPARE_DIV	16
/* At most one log line about refused sessions per this many seconds. */
#define REFUSE_LOG_EVERY	10.0

/*
 * While a large merged edit set is applied, the MTA hears progress
 * every FRONT_PROGRESS_MODS modifications and at least every
 * FRONT_PROGRESS_SECS seconds: each modification is a write that the
 * MTA may be slow to read, and Sendmail's end-of-message budget and a
 * Postfix that waits between two reads keep running (PROTOCOL.md 4.4).
 * A progress packet is 5 bytes against the tens each request takes.
 */
#define FRONT_PROGRESS_MODS	10000
#define FRONT_PROGRESS_SECS	1.0

struct conn {
	struct conf	*conf;
	struct fanout	*fo;
	uint32_t	 actions;	/* granted by the MTA */
	uint32_t	 proto;		/* asked for, without noreply */
	uint32_t	 noreply;	/* MP_NR_* bits asked for */
	bool		 refused;	/* over the cap: no fanout */
	enum verdict	 held;		/* reject or tempfail to give next */
	char		*held_text;
	char		*held_decider;
	char		 id[32];
};

#ifdef HAVE_MI_SENDOK
/*
 * libmilter's own test for "at end of message" (engine.c: with flag 0 it
 * only compares the context's state with ST_ENDM).  mfapi.h does not
 * declare it, but libmilter exports it: smfi.c calls it from another
 * file.  It returns the library's bool, a C99 _Bool in Debian's build.
 */
bool	mi_sendok(SMFICTX *, int);
#endif

static struct pool	*front_pool;
/* The listening socket's address, to recognise the MTA's sockets. */
static struct sockaddr_storage	 front_lname;
static socklen_t		 front_lnamelen;
/* The listening socket (libmilter's), or -1. */
static int			 front_lfd = -1;
static atomic_ulong	 conn_counter;
static pthread_once_t	 instance_once = PTHREAD_ONCE_INIT;
static char		 instance[16];
/* Sessions between negotiate and close; main waits for them to end. */
static atomic_uint	 front_sessions;
/* Sessions admitted under the cap, between negotiate and close. */
static atomic_uint	 front_admitted;
/* The descriptor budget: set once before smfi_main. */
static unsigned long	 fd_limit, fd_base;
/* refuse_lock protects refuse_count and refuse_logged. */
static pthread_mutex_t	 refuse_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long	 refuse_count;
static double		 refuse_logged = -1e9;
/* Set once by front_drain(): refuse new sessions. */
static atomic_bool	 front_draining;
/* Set once by front_drain(): the last session to end calls front_idle. */
static atomic_bool	 front_stopping;
/* Written before front_stopping is set, read after it was seen set. */
static front_idle_fn	*front_idle;

/*
 * What a closed session had agreed with the MTA, kept for the next
 * session on the same connection.  After SMFIC_QUIT_NC libmilter calls
 * xxfi_close, and then xxfi_connect again on the same context for the
 * next session, which keeps the options negotiated at the start of the
 * connection (engine.c:st_quit; PROTOCOL.md 2.7).  xxfi_close cannot
 * tell that from the end of the connection, so every close parks its
 * agreement here, keyed by the context, and a session that starts
 * without a negotiation takes it back (reopen).  A negotiation drops
 * what was parked for its context's address: libmilter freed that
 * context, and this is a new one.  The ring holds the last PARK_SLOTS
 * closes, so a QUIT_NC whose next session comes after that many other
 * sessions closed finds nothing; that session is refused and logged.
 */
#define PARK_SLOTS	4096

struct park {
	const SMFICTX	*ctx;		/* NULL: a free slot */
	uint32_t	 actions;
	uint32_t	 proto;
	uint32_t	 noreply;
};

/* park_lock protects park_ring and park_next, nothing else. */
static pthread_mutex_t	 park_lock = PTHREAD_MUTEX_INITIALIZER;
static struct park	 park_ring[PARK_SLOTS];
static size_t		 park_next;

/* park_take - remove the agreement parked for ctx into *p (if p);
 * false when there is none */
static bool
park_take(const SMFICTX *ctx, struct park *p)
{
	bool	 found = false;

	pthread_mutex_lock(&park_lock);
	for (size_t i = 0; i < PARK_SLOTS && !found; i++) {
		if (park_ring[i].ctx != ctx)
			continue;
		if (p != NULL)
			*p = park_ring[i];
		park_ring[i].ctx = NULL;
		found = true;
	}
	pthread_mutex_unlock(&park_lock);
	return found;
}

/* park_put - keep what c agreed for a session after QUIT_NC on ctx */
static void
park_put(const SMFICTX *ctx, const struct conn *c)
{
	pthread_mutex_lock(&park_lock);
	park_ring[park_next] = (struct park){ .ctx = ctx,
	    .actions = c->actions, .proto = c->proto,
	    .noreply = c->noreply };
	park_next = (park_next + 1) % PARK_SLOTS;
	pthread_mutex_unlock(&park_lock);
}

/* session_end - one session fewer; after front_drain(), the last one
 * tells main */
static void
session_end(void)
{
	if (atomic_fetch_sub(&front_sessions, 1) == 1 &&
	    atomic_load(&front_stopping))
		front_idle();
}

static struct conn	*reopen(SMFICTX *);

static double
mono(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* per_session - descriptors one admitted session may hold */
static unsigned long
per_session(const struct conf *c)
{
	/* The MTA's socket, one per upstream, and the replay file that
	 * later phases read the message from. */
	return 1 + c->nenabled + (c->nphases > 1 ? 1 : 0);
}

unsigned
front_session_cap(const struct conf *c)
{
	unsigned long	 spare, fit;

	if (fd_limit == 0)
		return c->max_sessions != 0 ? c->max_sessions : UINT_MAX;
	spare = fd_base + FD_SPARE + fd_limit / FD_SPARE_DIV;
	fit = fd_limit > spare ? (fd_limit - spare) / per_session(c) : 0;
	if (fit < 1)
		fit = 1;
	if (fit > UINT_MAX)
		fit = UINT_MAX;
	if (c->max_sessions != 0 && c->max_sessions < fit)
		return c->max_sessions;
	return (unsigned)fit;
}

/* admit - count a new session in, or say it is over the cap */
static bool
admit(const struct conf *c)
{
	unsigned	 cap = front_session_cap(c);

	if (atomic_fetch_add(&front_admitted, 1) < cap)
		return true;
	atomic_fetch_sub(&front_admitted, 1);
	return false;
}

/* refused - count a refused session; log the count now and then */
static void
refused(const struct conf *c)
{
	unsigned long	 n = 0;
	double		 t = mono();

	pthread_mutex_lock(&refuse_lock);
	refuse_count++;
	if (t - refuse_logged >= REFUSE_LOG_EVERY) {
		n = refuse_count;
		refuse_count = 0;
		refuse_logged = t;
	}
	pthread_mutex_unlock(&refuse_lock);
	if (n > 0)
		log_warnx("%u MTA sessions open, the most allowed: refused "
		    "%lu new one%s with on_failure=%s (counted since the "
		    "last such line; at most one every %g s)",
		    front_session_cap(c), n, n == 1 ? "" : "s",
		    conf_on_failure_name(c->on_failure), REFUSE_LOG_EVERY);
}

/* refusal - a refused session's answer at its first stage */
static sfsistat
refusal(const struct conn *c)
{
	switch (c->conf->on_failure) {
	case ONFAIL_ACCEPT:
		return SMFIS_ACCEPT;
	case ONFAIL_REJECT:
		return SMFIS_REJECT;
	default:
		return SMFIS_TEMPFAIL;
	}
}

static struct conn *
conn_of(SMFICTX *ctx)
{
	return smfi_getpriv(ctx);
}

static const char *
macro(void *arg, const char *name)
{
	return smfi_getsymval(arg, (char *)name);
}

static void
progress(void *arg)
{
	smfi_progress(arg);
}

/*
 * log_cut - say exactly what of a reply text did not fit libmilter's
 * limits, if anything
 */
static void
log_cut(const struct conn *c, const char *decider,
    const struct codec_linecut *cuts, int n, size_t nlines)
{
	char	 why[CUT_REPORT];
	size_t	 len = 0;
	bool	 any = false;

	why[0] = '\0';
	for (int i = 0; i < n && len < sizeof why; i++) {
		if (cuts[i].to == cuts[i].from)
			continue;
		len += (size_t)snprintf(why + len, sizeof why - len,
		    "%sline %d from %zu to %zu bytes", any ? ", " : "",
		    i + 1, cuts[i].from, cuts[i].to);
		any = true;
	}
	if (nlines > (size_t)n && len < sizeof why) {
		if (nlines == (size_t)n + 1)
			snprintf(why + len, sizeof why - len,
			    "%sline %zu of %zu dropped", any ? "; " : "",
			    nlines, nlines);
		else
			snprintf(why + len, sizeof why - len,
			    "%slines %d to %zu of %zu dropped",
			    any ? "; " : "", n + 1, nlines, nlines);
		any = true;
	}
	if (!any)
		return;
	log_warnx("%s: %s%s%sreply text cut to libmilter's limits (%d lines "
	    "of %d bytes): %s", c->id, decider != NULL ? "upstream " : "",
	    decider != NULL ? decider : "", decider != NULL ? ": " : "",
	    MAX_REPLY_LINES, MAX_REPLY_LEN, why);
}

/*
 * set_reply - hand an upstream's SMTP reply to libmilter as it was
 * written, cut to libmilter's limits (and saying so) where it is over
 */
static void
set_reply(SMFICTX *ctx, struct conn *c, const char *text,
    const char *decider)
{
	char			 rcode[4], xcode[16];
	char			*lines[MAX_REPLY_LINES + 1] = { NULL };
	char			*storage = NULL;
	struct codec_linecut	 cuts[MAX_REPLY_LINES];
	size_t			 nlines;
	int			 n, rc;

	n = codec_fit_replytext(text, rcode, xcode, lines, MAX_REPLY_LINES,
	    MAX_REPLY_LEN, &storage, cuts, &nlines);
	if (n <= 0) {
		free(storage);
		return;
	}
	log_cut(c, decider, cuts, n, nlines);
	if (n == 1)
		rc = smfi_setreply(ctx, rcode, xcode[0] != '\0' ? xcode :
		    NULL, lines[0]);
	else
		rc = smfi_setmlreply(ctx, rcode, xcode[0] != '\0' ? xcode :
		    NULL, lines[0], lines[1], lines[2], lines[3], lines[4],
		    lines[5], lines[6], lines[7], lines[8], lines[9],
		    lines[10], lines[11], lines[12], lines[13], lines[14],
		    lines[15], lines[16], lines[17], lines[18], lines[19],
		    lines[20], lines[21], lines[22], lines[23], lines[24],
		    lines[25], lines[26], lines[27], lines[28], lines[29],
		    lines[30], lines[31], (char *)NULL);
	if (rc != MI_SUCCESS)
		log_warnx("%s: libmilter refused the reply text of the "
		    "deciding upstream; the MTA's default text is used",
		    c->id);
	free(storage);
}

/* answer - the merged verdict as a libmilter status */
static sfsistat
answer(SMFICTX *ctx, struct conn *c, const struct fanout_answer *a)
{
	switch (a->verdict) {
	case VERDICT_ACCEPT:
		return SMFIS_ACCEPT;
	case VERDICT_REJECT:
		if (a->text != NULL && a->text[0] == '5')
			set_reply(ctx, c, a->text, a->decider);
		return SMFIS_REJECT;
	case VERDICT_TEMPFAIL:
		if (a->text != NULL && a->text[0] == '4')
			set_reply(ctx, c, a->text, a->decider);
		return SMFIS_TEMPFAIL;
	case VERDICT_DISCARD:
		return SMFIS_DISCARD;
	case VERDICT_SKIP:
		return SMFIS_SKIP;
	default:
		return SMFIS_CONTINUE;
	}
}

static bool
is_content(enum stage st)
{
	return st == STAGE_HEADER || st == STAGE_EOH || st == STAGE_BODY;
}

static void
drop_held(struct conn *c)
{
	c->held = VERDICT_NONE;
	free(c->held_text);
	c->held_text = NULL;
	free(c->held_decider);
	c->held_decider = NULL;
}

/* give_held - the verdict held since a stage without reply, now */
static sfsistat
give_held(SMFICTX *ctx, struct conn *c)
{
	struct fanout_answer	 a = { .verdict = c->held,
				    .text = c->held_text,
				    .decider = c->held_decider };
	sfsistat		 r = answer(ctx, c, &a);

	drop_held(c);
	return r;
}

/*
 * run_stage - one stage through the fanout; internal trouble means
 * tempfail
 *
 * When quiet, the stage gets no answer of its own: a reject or tempfail
 * is held for the next answered stage, and instead is returned.
 */
static sfsistat
run_stage(SMFICTX *ctx, struct fanout_event *ev, bool quiet,
    sfsistat instead)
{
	struct conn		*c = conn_of(ctx);
	struct fanout_answer	 a;

	/* Nothing but CONNECT or UNKNOWN may follow QUIT_NC (engine.c
	 * next_states[ST_Q_NC]). */
	if (c == NULL &&
	    (ev->stage == STAGE_CONNECT || ev->stage == STAGE_UNKNOWN))
		c = reopen(ctx);
	if (c != NULL && c->refused)
		return refusal(c);
	if (c == NULL || c->fo == NULL)
		return quiet ? instead : SMFIS_TEMPFAIL;
	if (ev->stage == STAGE_ENVFROM)
		drop_held(c);
	else if (c->held != VERDICT_NONE && is_content(ev->stage))
		return quiet ? instead : give_held(ctx, c);
	ev->macro = macro;
	ev->macro_arg = ctx;
	fanout_event(c->fo, ev, &a);
	if (!quiet)
		return answer(ctx, c, &a);
	if (a.verdict == VERDICT_REJECT || a.verdict == VERDICT_TEMPFAIL) {
		c->held = a.verdict;
		c->held_text = a.text != NULL ? xstrdup(a.text) : NULL;
		c->held_decider = a.decider != NULL ? xstrdup(a.decider) :
		    NULL;
	}
	return instead;
}

/* run - one stage, answered unless the MTA was told it gets no reply */
static sfsistat
run(SMFICTX *ctx, struct fanout_event *ev)
{
	struct conn	*c = conn_of(ctx);

	/* libmilter turns any verdict of a no-reply stage into silence;
	 * one other than continue would also make it ignore the rest of
	 * the message and leave the MTA waiting (PROTOCOL.md fact 4). */
	return run_stage(ctx, ev, c != NULL &&
	    (c->noreply & proto_stage_nr[ev->stage]) != 0, SMFIS_NOREPLY);
}

/*
 * make_instance - this start's tag, which prefixes every session id so
 * that ids stay unique across restarts (and between an old instance
 * draining and its successor): base 36 of the seconds since 2020 and
 * 12 bits of the process id
 */
static void
make_instance(void)
{
	static const char	 digits[] =
				    "0123456789abcdefghijklmnopqrstuvwxyz";
	uint64_t		 v = ((uint64_t)(time(NULL) - 1577836800) <<
				    12) | ((uint64_t)getpid() & 0xfff);
	char			 tmp[sizeof instance];
	size_t			 n = 0;

	do {
		tmp[n++] = digits[v % 36];
		v /= 36;
	} while (v != 0 && n < sizeof tmp - 1);
	for (size_t i = 0; i < n; i++)
		instance[i] = tmp[n - 1 - i];
	instance[n] = '\0';
}

const char *
front_instance(void)
{
	pthread_once(&instance_once, make_instance);
	return instance;
}

/*
 * session_begin - a new session, or NULL when stopping
 *
 * Count first, then look at the flag: front_drain() sets the flag, then
 * reads the count, so (both sequentially consistent) either this session
 * is refused or main sees it and waits for it.
 */
static struct conn *
session_begin(SMFICTX *ctx)
{
	struct conn	*c;

	atomic_fetch_add(&front_sessions, 1);
	if (atomic_load(&front_draining)) {
		session_end();
		return NULL;
	}
	c = xcalloc(1, sizeof *c);
	snprintf(c->id, sizeof c->id, "%s.conn-%lu", front_instance(),
	    atomic_fetch_add(&conn_counter, 1) + 1);
	c->conf = conf_acquire();
	smfi_setpriv(ctx, c);
	metrics_session_begin();
	return c;
}

/*
 * mta_socket - the MTA connection's socket, to watch while upstreams
 * work (fanout_watch_mta), or -1
 *
 * libmilter has no call for it.  Its context (struct smfi_str, private
 * to the library) starts with the id of the thread serving it, then
 * the socket (Debian 12's 8.17.1: seen there, next to the timeout of
 * 7210 s that follows).  The value found there is used only when it is
 * a connected socket accepted from our own listener, so a different
 * layout turns the watch off instead of watching a stranger.
 */
static int
mta_socket(SMFICTX *ctx)
{
	const struct {
		pthread_t	 id;
		int		 sd;
	}		*head = (const void *)ctx;

	if (front_lnamelen == 0 || !netio_accepted_from(head->sd,
	    &front_lname, front_lnamelen))
		return -1;
	return head->sd;
}

static sfsistat
front_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
    unsigned long f2, unsigned long f3, unsigned long *pf0,
    unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
	struct conn	*c;
	const char	*lists[MACRO_STAGE_COUNT];
	uint32_t	 act, proto;

	/* Whatever was parked for this address was another context's. */
	(void)park_take(ctx, NULL);
	/* An accepted connection began: a handover may end (main.c). */
	handover_begun_one();
	/* A verdict other than continue makes libmilter close the
	 * connection, and the MTA applies its default action for an
	 * unavailable milter, as it would with the socket closed. */
	if ((c = session_begin(ctx)) == NULL) {
		log_debug("new MTA connection refused: stopping");
		return SMFIS_TEMPFAIL;
	}
	if (!admit(c->conf)) {
		/* No upstream is asked, nor opened: the connect stage
		 * (asked for, with nothing else) gets the refusal. */
		c->refused = true;
		refused(c->conf);
		*pf0 = 0;
		*pf1 = 0;
		*pf2 = 0;
		*pf3 = 0;
		return SMFIS_CONTINUE;
	}
	c->fo = fanout_open(c->conf, front_pool, c->id, (uint32_t)f0,
	    (uint32_t)f1);
	fanout_watch_mta(c->fo, mta_socket(ctx));
	fanout_options(c->fo, &act, &proto, lists);
	c->actions = act;
	c->proto = proto;
	for (int m = 0; m < MACRO_STAGE_COUNT; m++)
		if (lists[m] != NULL && (act & SMFIF_SETSYMLIST) != 0 &&
		    smfi_setsymlist(ctx, m, (char *)lists[m]) != MI_SUCCESS)
			log_warnx("%s: cannot request the %s macros",
			    c->id, proto_macro_stage_name(m));
	/* libmilter offers every NR bit (it fakes those the MTA lacks). */
	c->noreply = FRONT_NR & (uint32_t)f1;
	*pf0 = act;
	*pf1 = proto | c->noreply;
	*pf2 = 0;
	*pf3 = 0;
	return SMFIS_CONTINUE;
}

/*
 * reopen - the next session on a connection after SMFIC_QUIT_NC, or NULL
 *
 * Fresh upstream sessions, offered what the MTA agreed to at the start
 * of the connection, which is all it will do: libmilter keeps that
 * negotiation and there is no other (st_quit).
 */
static struct conn *
reopen(SMFICTX *ctx)
{
	struct conn	*c;
	struct park	 p;
	const char	*lists[MACRO_STAGE_COUNT];
	uint32_t	 act, proto;

	if (!park_take(ctx, &p)) {
		log_warnx("a session without a negotiation, and none "
		    "parked for its connection (QUIT_NC after more than %d "
		    "other sessions?): refused", PARK_SLOTS);
		return NULL;
	}
	if ((c = session_begin(ctx)) == NULL) {
		log_debug("session after QUIT_NC refused: stopping");
		return NULL;
	}
	if (!admit(c->conf)) {
		c->refused = true;
		refused(c->conf);
		return c;
	}
	c->actions = p.actions;
	c->proto = p.proto;
	c->noreply = p.noreply;
	c->fo = fanout_open(c->conf, front_pool, c->id, p.actions & MA_ALL,
	    p.proto);
	fanout_watch_mta(c->fo, mta_socket(ctx));
	fanout_options(c->fo, &act, &proto, lists);
	if (act != p.actions || proto != p.proto)
		log_warnx("%s: after QUIT_NC the upstreams would ask for "
		    "actions 0x%x protocol 0x%x, but the MTA keeps 0x%x 0x%x "
		    "from the start of its connection", c->id, act, proto,
		    p.actions, p.proto);
	log_debug("%s: new session after QUIT_NC", c->id);
	return c;
}

static sfsistat
front_connect(SMFICTX *ctx, char *host, struct sockaddr *sa)
{
	struct fanout_event	 ev = { .stage = STAGE_CONNECT };
	const char		*argv[2] = { host, NULL };
	char			 addr[INET6_ADDRSTRLEN + 1] = "";

	ev.argv = argv;
	ev.argc = 2;
	ev.family = 'U';
	if (sa != NULL && sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;

		inet_ntop(AF_INET, &in->sin_addr, addr, sizeof addr);
		ev.family = '4';
		ev.port = ntohs(in->sin_port);
		argv[1] = addr;
	} else if (sa != NULL && sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;

		inet_ntop(AF_INET6, &in6->sin6_addr, addr, sizeof addr);
		ev.family = '6';
		ev.port = ntohs(in6->sin6_port);
		argv[1] = addr;
	} else if (sa != NULL && sa->sa_family == AF_UNIX) {
		ev.family = 'L';
		argv[1] = ((const struct sockaddr_un *)(const void *)sa)
		    ->sun_path;
	}
	if (host == NULL)
		argv[0] = addr[0] != '\0' ? addr : "unknown";
	return run(ctx, &ev);
}

static sfsistat
front_helo(SMFICTX *ctx, char *helo)
{
	const char		*argv[1] = { helo != NULL ? helo : "" };
	struct fanout_event	 ev = { .stage = STAGE_HELO, .argv = argv,
				    .argc = 1 };

	return run(ctx, &ev);
}

static size_t
count_args(char **argv)
{
	size_t	 n = 0;

	while (argv != NULL && argv[n] != NULL)
		n++;
	return n;
}

static sfsistat
front_envfrom(SMFICTX *ctx, char **argv)
{
	struct fanout_event	 ev = { .stage = STAGE_ENVFROM,
				    .argv = (const char *const *)argv,
				    .argc = count_args(argv) };

	return run(ctx, &ev);
}

/*
 * front_envrcpt - a recipient; with SMFIP_RCPT_REJ asked of the MTA
 * (some upstream wanted it), also one the MTA rejected itself, which
 * it marks with {rcpt_mailer} "error": fanout_event shows that one only
 * to the upstreams that asked, and answers continue, as the MTA
 * ignores what a filter says of it (Postfix) or should not act on it.
 */
static sfsistat
front_envrcpt(SMFICTX *ctx, char **argv)
{
	struct conn		*c = conn_of(ctx);
	struct fanout_event	 ev = { .stage = STAGE_ENVRCPT,
				    .argv = (const char *const *)argv,
				    .argc = count_args(argv) };
	const char		*mailer;

	if (c != NULL && (c->proto & MP_RCPT_REJ) != 0 &&
	    (mailer = smfi_getsymval(ctx, "{rcpt_mailer}")) != NULL &&
	    strcmp(mailer, "error") == 0)
		ev.rejected = true;
	return run(ctx, &ev);
}

static sfsistat
front_data(SMFICTX *ctx)
{
	struct fanout_event	 ev = { .stage = STAGE_DATA };

	return run(ctx, &ev);
}

static sfsistat
front_unknown(SMFICTX *ctx, const char *cmd)
{
	const char		*argv[1] = { cmd != NULL ? cmd : "" };
	struct fanout_event	 ev = { .stage = STAGE_UNKNOWN, .argv = argv,
				    .argc = 1 };

	return run(ctx, &ev);
}

static sfsistat
front_header(SMFICTX *ctx, char *name, char *value)
{
	struct fanout_event	 ev = { .stage = STAGE_HEADER, .name = name,
				    .value = value != NULL ? value : "" };

	return run(ctx, &ev);
}

static sfsistat
front_eoh(SMFICTX *ctx)
{
	struct fanout_event	 ev = { .stage = STAGE_EOH };

	return run(ctx, &ev);
}

/*
 * at_eom - is this body callback the data of an SMFIC_BODYEOB?
 *
 * libmilter passes the data of a BODYEOB that carries some to xxfi_body
 * first, in state ST_ENDM, and calls xxfi_eom only if that returned
 * continue; any other status it sends as the answer to the BODYEOB, and
 * a no-reply is sent as nothing, so the MTA waits for ever
 * (engine.c:st_bodyend, PROTOCOL.md 1.2).
 */
static bool
at_eom(SMFICTX *ctx)
{
#ifdef HAVE_MI_SENDOK
	return mi_sendok(ctx, 0);
#else
	(void)ctx;
	return false;
#endif
}

static sfsistat
front_body(SMFICTX *ctx, unsigned char *data, size_t len)
{
	struct fanout_event	 ev = { .stage = STAGE_BODY, .data = data,
				    .len = len };

	/* The upstreams get the data as a body chunk; its verdict is
	 * given by front_eom, which libmilter calls next. */
	if (at_eom(ctx))
		return run_stage(ctx, &ev, true, SMFIS_CONTINUE);
	return run(ctx, &ev);
}

/* apply - one modification through libmilter; 0 or -EIO */
static int
apply(SMFICTX *ctx, struct conn *c, const struct mod *m)
{
	int	 rc;

	switch (m->kind) {
	case MOD_ADDHEADER:
		/* Without ADDHDRS (the MTA did not offer it) the append can
		 * only come from a change of a header that was not there:
		 * say it the same way.  An index no header reaches makes
		 * Postfix append; Sendmail may instead change one of its
		 * own default headers of that name, as it would have for
		 * the upstream. */
		if ((c->actions & SMFIF_ADDHDRS) == 0 &&
		    (c->actions & SMFIF_CHGHDRS) != 0)
			rc = smfi_chgheader(ctx, m->name, INT32_MAX,
			    m->value);
		else
			rc = smfi_addheader(ctx, m->name, m->value);
		break;
	case MOD_INSHEADER:
		rc = smfi_insheader(ctx, (int)m->index, m->name, m->value);
		break;
	case MOD_CHGHEADER:
		rc = smfi_chgheader(ctx, m->name, (int)m->index,
		    m->value != NULL && m->value[0] != '\0' ? m->value : NULL);
		break;
	case MOD_ADDRCPT:
		rc = smfi_addrcpt(ctx, m->name);
		break;
	case MOD_ADDRCPT_PAR:
		if ((c->actions & SMFIF_ADDRCPT_PAR) != 0)
			rc = smfi_addrcpt_par(ctx, m->name, m->value);
		else
			rc = smfi_addrcpt(ctx, m->name);
		break;
	case MOD_DELRCPT:
		rc = smfi_delrcpt(ctx, m->name);
		break;
	case MOD_CHGFROM:
		rc = smfi_chgfrom(ctx, m->name, m->value);
		break;
	case MOD_REPLBODY:
		rc = smfi_replacebody(ctx, m->body, (int)m->bodylen);
		break;
	case MOD_QUARANTINE:
		rc = smfi_quarantine(ctx, m->name);
		break;
	default:
		rc = MI_FAILURE;
		break;
	}
	return rc == MI_SUCCESS ? 0 : -EIO;
}

/* seconds - CLOCK_MONOTONIC in seconds */
static double
seconds(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * apply_all - the merged edit script through libmilter, in order, with
 * progress to the MTA while it takes long; returns how many the MTA took
 */
static size_t
apply_all(SMFICTX *ctx, struct conn *c, const struct merge_result *mods,
    size_t kinds[MOD_KIND_COUNT])
{
	double	 last = seconds(), t;
	size_t	 applied = 0, since = 0;

	for (size_t i = 0; i < mods->nops; i++) {
		if (apply(ctx, c, &mods->ops[i]) == 0) {
			applied++;
			if (mods->ops[i].kind < MOD_KIND_COUNT)
				kinds[mods->ops[i].kind]++;
		}
		else
			log_warnx("%s: the MTA refused %s", c->id,
			    codec_mod_kind_name(mods->ops[i].kind));
		if (i + 1 == mods->nops)
			break;
		t = seconds();
		if (++since >= FRONT_PROGRESS_MODS ||
		    t - last >= FRONT_PROGRESS_SECS) {
			smfi_progress(ctx);
			since = 0;
			last = t;
		}
	}
	return applied;
}

static sfsistat
front_eom(SMFICTX *ctx)
{
	struct conn		*c = conn_of(ctx);
	struct fanout_event	 ev = { .stage = STAGE_EOM };
	struct fanout_answer	 a;
	size_t			 applied = 0, kinds[MOD_KIND_COUNT] = { 0 };

	if (c != NULL && c->refused)
		return refusal(c);
	if (c == NULL || c->fo == NULL)
		return SMFIS_TEMPFAIL;
	if (c->held != VERDICT_NONE)
		return give_held(ctx, c);
	ev.macro = macro;
	ev.macro_arg = ctx;
	ev.progress = progress;
	ev.progress_arg = ctx;
	fanout_event(c->fo, &ev, &a);
	if (a.mods != NULL &&
	    (a.verdict == VERDICT_CONTINUE || a.verdict == VERDICT_ACCEPT))
		applied = apply_all(ctx, c, a.mods, kinds);
	fanout_message_applied(c->fo, kinds);
	fanout_message_done(c->fo, a.verdict, applied);
	return answer(ctx, c, &a);
}

static sfsistat
front_abort(SMFICTX *ctx)
{
	struct conn	*c = conn_of(ctx);

	if (c != NULL)
		drop_held(c);
	if (c != NULL && c->fo != NULL)
		fanout_abort(c->fo);
	return SMFIS_CONTINUE;
}

static sfsistat
front_close(SMFICTX *ctx)
{
	struct conn	*c = conn_of(ctx);

	/* May run on libmilter's pool controller under its lock, and
	 * without negotiate: never block, accept NULL. */
	if (c == NULL)
		return SMFIS_CONTINUE;
	smfi_setpriv(ctx, NULL);
	park_put(ctx, c);
	drop_held(c);
	fanout_close(c->fo);
	if (!c->refused)
		atomic_fetch_sub(&front_admitted, 1);
	conf_release(c->conf);
	free(c);
	metrics_session_end();
	session_end();
	return SMFIS_CONTINUE;
}

static struct smfiDesc front_desc = {
	.xxfi_name	= "miltermux",
	.xxfi_version	= SMFI_VERSION,
	.xxfi_flags	= SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_CHGBODY |
			  SMFIF_ADDRCPT | SMFIF_ADDRCPT_PAR | SMFIF_DELRCPT |
			  SMFIF_QUARANTINE | SMFIF_CHGFROM | SMFIF_SETSYMLIST,
	.xxfi_connect	= front_connect,
	.xxfi_helo	= front_helo,
	.xxfi_envfrom	= front_envfrom,
	.xxfi_envrcpt	= front_envrcpt,
	.xxfi_header	= front_header,
	.xxfi_eoh	= front_eoh,
	.xxfi_body	= front_body,
	.xxfi_eom	= front_eom,
	.xxfi_abort	= front_abort,
	.xxfi_close	= front_close,
	.xxfi_unknown	= front_unknown,
	.xxfi_data	= front_data,
	.xxfi_negotiate	= front_negotiate,
};

void
front_set_pool(struct pool *pool)
{
	front_pool = pool;
}

void
front_set_fd_budget(unsigned long limit, unsigned long base)
{
	fd_limit = limit;
	fd_base = base;
}

int
front_init(const char *listen)
{
	if (smfi_register(front_desc) != MI_SUCCESS)
		return -EINVAL;
	if (smfi_setconn((char *)listen) != MI_SUCCESS)
		return -EINVAL;
	/* Postfix may send headers up to header_size_limit (100 KiB);
	 * libmilter would drop the whole session over one (fact 2).
	 * Upstream packets stay within 64 KiB regardless (fanout.c). */
	smfi_setmaxdatasize(1024 * 1024);
	return 0;
}

int
front_open_socket(void)
{
	int	 rc;

	/* SO_REUSEPORT on an inet listener: a new instance can listen
	 * while this one drains (handover.c). */
	handover_binding_set(true);
	rc = smfi_opensocket(1);
	handover_binding_set(false);
	if (rc != MI_SUCCESS)
		return -EADDRNOTAVAIL;
	/*
	 * libmilter writes each modification and then the verdict in
	 * separate writes; with Nagle's algorithm on, the second one waits
	 * for the MTA's ACK of the first, which the MTA delays by 40 ms as
	 * it has nothing to send.  libmilter owns the accepted sockets and
	 * keeps the listening fd to itself, but on Linux they inherit
	 * TCP_NODELAY from the listening socket: set it there.
	 */
	if ((rc = netio_nodelay_listeners()) < 0)
		log_warnc(rc, "cannot set TCP_NODELAY on the listening socket");
	if ((rc = netio_listener_name(&front_lname, &front_lnamelen)) != 0) {
		front_lnamelen = 0;
		log_warnc(rc, "cannot find the listening socket: an MTA that "
		    "gives up while the upstreams work is noticed only when "
		    "they have answered");
	}
	front_lfd = handover_listener_fd();
	if (front_lfd >= 0 && front_lnamelen != 0 &&
	    front_lname.ss_family != AF_UNIX &&
	    (rc = handover_steer(front_lfd)) != 0)
		log_warnc(rc, "cannot steer new connections to the newest "
		    "listener: a restart may refuse connections");
	return 0;
}

int
front_listen_fd(void)
{
	return front_lfd;
}

bool
front_listen_addr(struct sockaddr_storage *ss)
{
	if (front_lnamelen == 0)
		return false;
	*ss = front_lname;
	return true;
}

int
front_run(void)
{
	return smfi_main() == MI_SUCCESS ? 0 : -EIO;
}

void
front_stop(void)
{
	smfi_stop();
}

void
front_drain(front_idle_fn *idle, bool refuse)
{
	front_idle = idle;
	metrics_set_draining();
	atomic_store(&front_stopping, true);
	if (refuse)
		atomic_store(&front_draining, true);
}

unsigned
front_active(void)
{
	return atomic_load(&front_sessions);
}
