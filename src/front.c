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
 * Concurrency: no state shared between connections except the pool
 * pointer (set once before smfi_main) and atomics: the connection
 * counter, the count of open sessions and the draining flag.
 * Ownership: struct conn is allocated in negotiate (the first callback)
 * and freed in close, which may also run without negotiate.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

#include <libmilter/mfapi.h>

#include "conf.h"
#include "fanout.h"
#include "front.h"
#include "log.h"
#include "netio.h"
#include "xalloc.h"

#define MAX_REPLY_LINES	32

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
#define FRONT_NR	(MP_NR_HDR | MP_NR_EOH | MP_NR_BODY)

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
	uint32_t	 noreply;	/* MP_NR_* bits asked for */
	enum verdict	 held;		/* reject or tempfail to give next */
	char		*held_text;
	char		 id[32];
};

static struct pool	*front_pool;
static atomic_ulong	 conn_counter;
/* Sessions between negotiate and close; main waits for them to end. */
static atomic_uint	 front_sessions;
/* Set once by front_drain(): refuse new sessions. */
static atomic_bool	 front_draining;
/* Written before front_draining is set, read after it was seen set. */
static front_idle_fn	*front_idle;

/* session_end - one session fewer; after front_drain(), the last one
 * tells main */
static void
session_end(void)
{
	if (atomic_fetch_sub(&front_sessions, 1) == 1 &&
	    atomic_load(&front_draining))
		front_idle();
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

/* set_reply - hand an upstream's SMTP reply to libmilter unchanged */
static void
set_reply(SMFICTX *ctx, struct conn *c, const char *text)
{
	char	 rcode[4], xcode[16];
	char	*lines[MAX_REPLY_LINES + 1] = { NULL };
	char	*storage = NULL;
	int	 n, rc;

	n = codec_split_replytext(text, rcode, xcode, lines,
	    MAX_REPLY_LINES, &storage);
	if (n <= 0) {
		free(storage);
		return;
	}
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
			set_reply(ctx, c, a->text);
		return SMFIS_REJECT;
	case VERDICT_TEMPFAIL:
		if (a->text != NULL && a->text[0] == '4')
			set_reply(ctx, c, a->text);
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
}

/* give_held - the verdict held since a stage without reply, now */
static sfsistat
give_held(SMFICTX *ctx, struct conn *c)
{
	struct fanout_answer	 a = { .verdict = c->held,
				    .text = c->held_text };
	sfsistat		 r = answer(ctx, c, &a);

	drop_held(c);
	return r;
}

/* run - one stage through the fanout; internal trouble means tempfail */
static sfsistat
run(SMFICTX *ctx, struct fanout_event *ev)
{
	struct conn		*c = conn_of(ctx);
	struct fanout_answer	 a;
	bool			 quiet;

	/* libmilter turns any verdict of a no-reply stage into silence;
	 * one other than continue would also make it ignore the rest of
	 * the message and leave the MTA waiting (PROTOCOL.md fact 4). */
	quiet = c != NULL && (c->noreply & proto_stage_nr[ev->stage]) != 0;
	if (c == NULL || c->fo == NULL)
		return quiet ? SMFIS_NOREPLY : SMFIS_TEMPFAIL;
	if (ev->stage == STAGE_ENVFROM)
		drop_held(c);
	else if (c->held != VERDICT_NONE && is_content(ev->stage))
		return quiet ? SMFIS_NOREPLY : give_held(ctx, c);
	ev->macro = macro;
	ev->macro_arg = ctx;
	fanout_event(c->fo, ev, &a);
	if (!quiet)
		return answer(ctx, c, &a);
	if (a.verdict == VERDICT_REJECT || a.verdict == VERDICT_TEMPFAIL) {
		c->held = a.verdict;
		c->held_text = a.text != NULL ? xstrdup(a.text) : NULL;
	}
	return SMFIS_NOREPLY;
}

static sfsistat
front_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
    unsigned long f2, unsigned long f3, unsigned long *pf0,
    unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
	struct conn	*c;
	const char	*lists[MACRO_STAGE_COUNT];
	uint32_t	 act, proto;

	/*
	 * Count first, then look at the flag: front_drain() sets the flag,
	 * then reads the count, so (both sequentially consistent) either
	 * this session is refused or main sees it and waits for it.  A
	 * verdict other than continue makes libmilter close the
	 * connection, and the MTA applies its default action for an
	 * unavailable milter, as it would with the socket closed.
	 */
	atomic_fetch_add(&front_sessions, 1);
	if (atomic_load(&front_draining)) {
		session_end();
		log_debug("new MTA connection refused: stopping");
		return SMFIS_TEMPFAIL;
	}
	c = xcalloc(1, sizeof *c);
	snprintf(c->id, sizeof c->id, "conn-%lu",
	    atomic_fetch_add(&conn_counter, 1) + 1);
	c->conf = conf_acquire();
	smfi_setpriv(ctx, c);
	c->fo = fanout_open(c->conf, front_pool, c->id, (uint32_t)f0,
	    (uint32_t)f1);
	fanout_options(c->fo, &act, &proto, lists);
	c->actions = act;
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

static sfsistat
front_envrcpt(SMFICTX *ctx, char **argv)
{
	struct fanout_event	 ev = { .stage = STAGE_ENVRCPT,
				    .argv = (const char *const *)argv,
				    .argc = count_args(argv) };

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

static sfsistat
front_body(SMFICTX *ctx, unsigned char *data, size_t len)
{
	struct fanout_event	 ev = { .stage = STAGE_BODY, .data = data,
				    .len = len };

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
apply_all(SMFICTX *ctx, struct conn *c, const struct merge_result *mods)
{
	double	 last = seconds(), t;
	size_t	 applied = 0, since = 0;

	for (size_t i = 0; i < mods->nops; i++) {
		if (apply(ctx, c, &mods->ops[i]) == 0)
			applied++;
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
	size_t			 applied = 0;

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
		applied = apply_all(ctx, c, a.mods);
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
	drop_held(c);
	fanout_close(c->fo);
	conf_release(c->conf);
	free(c);
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

	if (smfi_opensocket(1) != MI_SUCCESS)
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
	return 0;
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
front_drain(front_idle_fn *idle)
{
	front_idle = idle;
	atomic_store(&front_draining, true);
}

unsigned
front_active(void)
{
	return atomic_load(&front_sessions);
}
