/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * randmilter - a libmilter filter whose answer and delay at every stage
 * are drawn from a seed, for the randomized interleaving test
 * (tests/test_interleave.c).
 *
 * What it answers is randplan.h's rp_plan() of (seed, its name, the
 * stage, and the session, message and item numbers the traffic names):
 * the test computes the same plan to know every upstream's answer, and
 * models the merge itself.  A reject or tempfail carries the reply
 * "550 5.7.1 NAME:STAGE:sSmMiI rejects" (451 4.7.1 ... tempfails), so
 * the test can tell whose text reached the MTA and for which exchange.
 *
 * Usage: randmilter -p SOCKSPEC [-n NAME] [--log FILE] [--seed N]
 *            [--mode random|zero|slowreject|noreject] [--delay-max MS]
 *            [--peers NAME,NAME...] [--late-ms MS]
 *
 * With --peers (the other upstreams' names, this one's may be among
 * them) and --late-ms, an answer that a peer's reject makes late to an
 * abandoned exchange (randplan.h rp_late) comes after MS ms, and so
 * does the abort miltermux sends next: an upstream still busy with the
 * abandoned message when the next one starts.
 *
 * --log appends one line per callback: "sS mM STAGE iI VERDICT DELAYms".
 *
 * Concurrency: libmilter runs each MTA connection on a thread of its
 * own; the configuration is written before smfi_main() and read-only
 * afterwards; per-connection state lives in smfi_setpriv.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include <libmilter/mfapi.h>

#include "randplan.h"

static struct {
	const char	*sockspec;
	const char	*name;
	uint64_t	 seed;
	enum rp_mode	 mode;
	unsigned	 dmax;
	int		 log_fd;
	const char	*peers[16];
	size_t		 npeers;
	unsigned	 late_ms;
} cfg = { .name = "randmilter", .seed = 1, .dmax = 20, .log_fd = -1 };

/* What the traffic said of the session and message so far. */
struct sess {
	unsigned	 sess;
	unsigned	 msg;
	bool		 late;		/* the last answer was very late */
};

static void
say(const char *fmt, ...)
{
	va_list	 ap;

	fprintf(stderr, "randmilter: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void
log_line(const struct sess *s, enum rp_stage st, unsigned idx,
    const struct rp_plan *p)
{
	char	 line[160];
	int	 n;

	if (cfg.log_fd == -1)
		return;
	n = snprintf(line, sizeof line, "s%u m%u %s i%u %s %ums\n",
	    s != NULL ? s->sess : 0, s != NULL ? s->msg : 0,
	    rp_stage_names[st], idx, rp_verdict_names[p->verdict],
	    p->delay_ms);
	if (n > 0 && (size_t)n < sizeof line)
		(void)!write(cfg.log_fd, line, (size_t)n);
}

/* answer - the planned delay, then the planned verdict and its text */
static sfsistat
answer(SMFICTX *ctx, enum rp_stage st, unsigned idx)
{
	struct sess	*s = smfi_getpriv(ctx);
	struct rp_plan	 p;
	char		 tok[128], text[192];
	struct timespec	 ts;
	bool		 late;

	p = rp_plan(cfg.seed, cfg.name, st, s != NULL ? s->sess : 0,
	    s != NULL ? s->msg : 0, idx, cfg.mode, cfg.dmax);
	if (s != NULL && cfg.late_ms > 0) {
		late = st == RP_ABORT ? s->late : rp_late(cfg.seed, cfg.name,
		    cfg.peers, cfg.npeers, st, s->sess, s->msg, idx, cfg.mode);
		s->late = late && st != RP_ABORT;
		if (late)
			p.delay_ms = cfg.late_ms;
	}
	log_line(s, st, idx, &p);
	if (p.delay_ms > 0) {
		ts.tv_sec = p.delay_ms / 1000;
		ts.tv_nsec = (long)(p.delay_ms % 1000) * 1000000L;
		while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
			continue;
	}
	if (st == RP_ABORT)
		return SMFIS_CONTINUE;
	rp_token(tok, sizeof tok, cfg.name, st, s != NULL ? s->sess : 0,
	    s != NULL ? s->msg : 0, idx);
	switch (p.verdict) {
	case RP_ACCEPT:
		return SMFIS_ACCEPT;
	case RP_DISCARD:
		return SMFIS_DISCARD;
	case RP_TEMPFAIL:
		snprintf(text, sizeof text, "%s tempfails", tok);
		(void)smfi_setreply(ctx, "451", "4.7.1", text);
		return SMFIS_TEMPFAIL;
	case RP_REJECT:
		snprintf(text, sizeof text, "%s rejects", tok);
		(void)smfi_setreply(ctx, "550", "5.7.1", text);
		return SMFIS_REJECT;
	case RP_CONTINUE:
	case RP_VERDICT_COUNT:
		break;
	}
	return SMFIS_CONTINUE;
}

/* num_after - the number that follows prefix in s, or 0 */
static unsigned
num_after(const char *s, const char *prefix)
{
	const char	*p;

	if (s == NULL || (p = strstr(s, prefix)) == NULL)
		return 0;
	return (unsigned)strtoul(p + strlen(prefix), NULL, 10);
}

static sfsistat
cb_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *sa)
{
	struct sess	*s = smfi_getpriv(ctx);

	(void)sa;
	if (s == NULL) {
		if ((s = calloc(1, sizeof *s)) == NULL)
			return SMFIS_TEMPFAIL;
		(void)smfi_setpriv(ctx, s);
	}
	s->sess = num_after(host, "s");
	s->msg = 0;
	return answer(ctx, RP_CONNECT, 0);
}

static sfsistat
cb_helo(SMFICTX *ctx, char *name)
{
	(void)name;
	return answer(ctx, RP_HELO, 0);
}

static sfsistat
cb_envfrom(SMFICTX *ctx, char **argv)
{
	struct sess	*s = smfi_getpriv(ctx);

	if (s != NULL && argv[0] != NULL)
		s->msg = num_after(strchr(argv[0], 'm'), "m");
	return answer(ctx, RP_MAIL, 0);
}

static sfsistat
cb_envrcpt(SMFICTX *ctx, char **argv)
{
	return answer(ctx, RP_RCPT, num_after(argv[0], "<r"));
}

static sfsistat
cb_data(SMFICTX *ctx)
{
	return answer(ctx, RP_DATA, 0);
}

static sfsistat
cb_header(SMFICTX *ctx, char *name, char *value)
{
	(void)value;
	return answer(ctx, RP_HEADER, num_after(name, "X-Idx"));
}

static sfsistat
cb_eoh(SMFICTX *ctx)
{
	return answer(ctx, RP_EOH, 0);
}

static sfsistat
cb_body(SMFICTX *ctx, unsigned char *p, size_t len)
{
	char	 head[32];
	size_t	 n = len < sizeof head - 1 ? len : sizeof head - 1;

	memcpy(head, p, n);
	head[n] = '\0';
	return answer(ctx, RP_BODY, num_after(head, "chunk "));
}

static sfsistat
cb_eom(SMFICTX *ctx)
{
	return answer(ctx, RP_EOM, 0);
}

static sfsistat
cb_abort(SMFICTX *ctx)
{
	return answer(ctx, RP_ABORT, 0);
}

static sfsistat
cb_close(SMFICTX *ctx)
{
	free(smfi_getpriv(ctx));
	(void)smfi_setpriv(ctx, NULL);
	return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
	.xxfi_name	= "randmilter",
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
	.xxfi_data	= cb_data,
};

static void
usage(void)
{
	say("usage: randmilter -p SOCKSPEC [-n NAME] [--log FILE] "
	    "[--seed N] [--mode random|zero|slowreject|noreject] "
	    "[--delay-max MS] [--peers NAME,...] [--late-ms MS]");
	exit(EX_USAGE);
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "name", required_argument, NULL, 'n' },
		{ "log", required_argument, NULL, 'l' },
		{ "seed", required_argument, NULL, 's' },
		{ "mode", required_argument, NULL, 'm' },
		{ "delay-max", required_argument, NULL, 'd' },
		{ "peers", required_argument, NULL, 'P' },
		{ "late-ms", required_argument, NULL, 'L' },
		{ NULL, 0, NULL, 0 }
	};
	const char	*log_path = NULL;
	char		*end;
	int		 c, i;

	while ((c = getopt_long(argc, argv, "p:n:", opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			cfg.sockspec = optarg;
			break;
		case 'n':
			cfg.name = optarg;
			break;
		case 'l':
			log_path = optarg;
			break;
		case 's':
			errno = 0;
			cfg.seed = strtoull(optarg, &end, 0);
			if (errno != 0 || *end != '\0')
				usage();
			break;
		case 'm':
			for (i = 0; i < RP_MODE_COUNT; i++)
				if (strcmp(optarg, rp_mode_names[i]) == 0)
					break;
			if (i == RP_MODE_COUNT)
				usage();
			cfg.mode = (enum rp_mode)i;
			break;
		case 'd':
			errno = 0;
			cfg.dmax = (unsigned)strtoul(optarg, &end, 10);
			if (errno != 0 || *end != '\0' || cfg.dmax > 10000)
				usage();
			break;
		case 'P':
			for (char *save = NULL, *t = strtok_r(optarg, ",",
			    &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
				if (cfg.npeers == sizeof cfg.peers /
				    sizeof cfg.peers[0])
					usage();
				cfg.peers[cfg.npeers++] = t;
			}
			break;
		case 'L':
			errno = 0;
			cfg.late_ms = (unsigned)strtoul(optarg, &end, 10);
			if (errno != 0 || *end != '\0' || cfg.late_ms > 60000)
				usage();
			break;
		default:
			usage();
		}
	}
	if (optind < argc || cfg.sockspec == NULL)
		usage();
	if (log_path != NULL && (cfg.log_fd = open(log_path,
	    O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) == -1) {
		say("%s: %s", log_path, strerror(errno));
		return EX_CANTCREAT;
	}
	desc.xxfi_name = (char *)cfg.name;
	if (smfi_setconn((char *)cfg.sockspec) != MI_SUCCESS ||
	    smfi_register(desc) != MI_SUCCESS ||
	    smfi_opensocket(true) != MI_SUCCESS) {
		say("cannot listen on %s", cfg.sockspec);
		return EX_SOFTWARE;
	}
	if (smfi_main() != MI_SUCCESS) {
		say("smfi_main failed");
		return EX_SOFTWARE;
	}
	/* As testmilter: libmilter's exit handlers race its own threads. */
	_exit(0);
}
