/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * miltermux-send - an MTA emulator: drives one milter through a whole
 * SMTP session built from an .eml file and envelope flags, and prints
 * every reply and the end-of-message modifications.
 *
 * It is built on miltermux's own upstream client (upstream.c over a
 * one-thread pool), so what it shows is exactly what miltermux would
 * see from that milter.  The tests use it to drive miltermux itself.
 *
 * Concurrency: the main thread submits one exchange at a time and
 * waits; the pool thread runs it.  Ownership: everything lives until
 * exit.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "conf.h"
#include "load.h"
#include "log.h"
#include "pool.h"
#include "upstream.h"
#include "xalloc.h"

/* Exit codes for the message's fate (sysexits.h codes mean errors). */
#define EXIT_PASSED	0
#define EXIT_REJECTED	1
#define EXIT_TEMPFAILED	2
#define EXIT_DISCARDED	3

/* Flags of the load mode; any of them selects it. */
enum {
	OPT_COUNT = 256,
	OPT_CONCURRENCY,
	OPT_PER_SESSION,
	OPT_SIZE,
	OPT_RCPTS,
	OPT_CHAIN,
	OPT_FANOUT,
	OPT_THREADS
};

static struct {
	const char	*server;
	const char	**servers;	/* every -s, in order */
	size_t		 nservers;
	const char	*from;
	const char	**rcpts;
	size_t		 nrcpts;
	const char	*helo;
	const char	*client_name;
	const char	*client_addr;
	unsigned	 client_port;
	struct load_macro *macros;
	size_t		 nmacros;
	double		 timeout;
	bool		 json;
	const char	*file;
	bool		 load;
	bool		 chain;
	bool		 fanout;
	unsigned long	 count;
	unsigned long	 concurrency;
	unsigned long	 per_session;
	unsigned long	 size;
	unsigned long	 nrcpts_gen;	/* --rcpts; 0: not given */
	unsigned long	 threads;
	bool		 size_set;
} opt = {
	.from = "<>",
	.helo = "localhost",
	.client_name = "localhost",
	.client_addr = "127.0.0.1",
	.client_port = 25000,
	.timeout = 60,
	.count = 1,
	.concurrency = 1,
	.per_session = 1,
	.size = 1024,
	.threads = 1,
};

struct waiter {
	pthread_mutex_t	 lock;
	pthread_cond_t	 cond;
	bool		 done;
};

struct expire_job {
	struct pool_job	 job;
	struct upstream	*up;
};

static struct waiter	 w = { PTHREAD_MUTEX_INITIALIZER,
			    PTHREAD_COND_INITIALIZER, false };
static FILE		*out;
static bool		 first_stage = true;
static char		 queueid[16];

static void
usage(FILE *f)
{
	fprintf(f,
"usage: miltermux-send -s SPEC --rcpt ADDR [options] [FILE.eml]\n"
"       miltermux-send -s SPEC [-s SPEC... --chain|--fanout] --count M\n"
"           [load options] [options] [FILE.eml]\n"
"\n"
"Drives the milter at SPEC through one SMTP session carrying the message\n"
"in FILE.eml (standard input when absent or \"-\"), and prints each reply\n"
"and the end-of-message modifications.\n"
"\n"
"  -s, --server SPEC        milter socket: unix:/path, inet:PORT@HOST,\n"
"                           inet6:PORT@HOST\n"
"  -f, --from ADDR          envelope sender (default <>)\n"
"  -r, --rcpt ADDR          envelope recipient (repeatable, at least one)\n"
"  -H, --helo NAME          HELO name (default localhost)\n"
"      --client-name NAME   client host name (default localhost)\n"
"      --client-addr ADDR   client IPv4 or IPv6 address (default 127.0.0.1)\n"
"      --client-port PORT   client port (default 25000)\n"
"  -m, --macro NAME=VALUE   a macro sent at every stage (repeatable)\n"
"  -t, --timeout SECONDS    per-stage timeout (default 60)\n"
"  -j, --json               print one JSON document instead of text\n"
"  -h, --help               print this help and exit\n"
"\n"
"Load mode, chosen by any of these: many sessions at once, and figures\n"
"(messages per second, latency percentiles, errors) instead of replies.\n"
"The message is FILE.eml if given, else one generated of --size bytes.\n"
"      --count M            messages in all (default 1)\n"
"      --concurrency K      sessions at once (default 1)\n"
"      --per-session N      messages per session, at most (default 1)\n"
"      --size BYTES         size of the generated message (default 1024)\n"
"      --rcpts N            recipients <rcpt1@example.net>... (default 1;\n"
"                           without it, the -r recipients)\n"
"      --chain              -s may be repeated: ask the milters one after\n"
"                           another at each stage, as Postfix and Sendmail\n"
"      --fanout             -s may be repeated: ask them all at once at each\n"
"                           stage and wait for every answer (no proxy)\n"
"      --threads N          event loop threads (default 1)\n"
"\n"
"Exit status: 0 the message passed, 1 rejected, 2 temporarily failed,\n"
"3 discarded; 64 usage, 66 no input, 69 the milter failed.  Load mode:\n"
"0 every message was answered, 69 some failed.\n");
}

static void
add_macro(const char *name, const char *value)
{
	for (size_t i = 0; i < opt.nmacros; i++)
		if (strcmp(opt.macros[i].name, name) == 0) {
			free(opt.macros[i].value);
			opt.macros[i].value = xstrdup(value);
			return;
		}
	opt.macros = xreallocarray(opt.macros, opt.nmacros + 1,
	    sizeof *opt.macros);
	opt.macros[opt.nmacros].name = xstrdup(name);
	opt.macros[opt.nmacros].value = xstrdup(value);
	opt.nmacros++;
}

/* number - a decimal count from lo to hi, or a usage error */
static unsigned long
number(const char *flag, const char *arg, unsigned long lo, unsigned long hi)
{
	unsigned long	 v;
	char		*end;

	errno = 0;
	v = strtoul(arg, &end, 10);
	if (errno != 0 || end == arg || *end != '\0' || arg[0] == '-' ||
	    v < lo || v > hi) {
		fprintf(stderr, "miltermux-send: %s: \"%s\" is not a number "
		    "from %lu to %lu\n", flag, arg, lo, hi);
		exit(EX_USAGE);
	}
	return v;
}

static void
parse_args(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "server",	 required_argument, NULL, 's' },
		{ "from",	 required_argument, NULL, 'f' },
		{ "rcpt",	 required_argument, NULL, 'r' },
		{ "helo",	 required_argument, NULL, 'H' },
		{ "client-name", required_argument, NULL, 'N' },
		{ "client-addr", required_argument, NULL, 'A' },
		{ "client-port", required_argument, NULL, 'P' },
		{ "macro",	 required_argument, NULL, 'm' },
		{ "timeout",	 required_argument, NULL, 't' },
		{ "json",	 no_argument,	    NULL, 'j' },
		{ "help",	 no_argument,	    NULL, 'h' },
		{ "count",	 required_argument, NULL, OPT_COUNT },
		{ "concurrency", required_argument, NULL, OPT_CONCURRENCY },
		{ "per-session", required_argument, NULL, OPT_PER_SESSION },
		{ "size",	 required_argument, NULL, OPT_SIZE },
		{ "rcpts",	 required_argument, NULL, OPT_RCPTS },
		{ "chain",	 no_argument,	    NULL, OPT_CHAIN },
		{ "fanout",	 no_argument,	    NULL, OPT_FANOUT },
		{ "threads",	 required_argument, NULL, OPT_THREADS },
		{ NULL,		 0,		    NULL, 0 }
	};
	char	*end, *eq, *copy;
	int	 ch;

	while ((ch = getopt_long(argc, argv, "s:f:r:H:m:t:jh", longopts,
	    NULL)) != -1) {
		switch (ch) {
		case 's':
			opt.server = optarg;
			opt.servers = xreallocarray(opt.servers,
			    opt.nservers + 1, sizeof *opt.servers);
			opt.servers[opt.nservers++] = optarg;
			break;
		case 'f':
			opt.from = optarg;
			break;
		case 'r':
			opt.rcpts = xreallocarray(opt.rcpts, opt.nrcpts + 1,
			    sizeof *opt.rcpts);
			opt.rcpts[opt.nrcpts++] = optarg;
			break;
		case 'H':
			opt.helo = optarg;
			break;
		case 'N':
			opt.client_name = optarg;
			break;
		case 'A':
			opt.client_addr = optarg;
			break;
		case 'P':
			opt.client_port = (unsigned)strtoul(optarg, &end, 10);
			if (*end != '\0' || end == optarg ||
			    opt.client_port > 65535) {
				fprintf(stderr, "miltermux-send: --client-port: "
				    "\"%s\" is not a port\n", optarg);
				exit(EX_USAGE);
			}
			break;
		case 'm':
			copy = xstrdup(optarg);
			if ((eq = strchr(copy, '=')) == NULL || eq == copy) {
				fprintf(stderr, "miltermux-send: --macro: "
				    "\"%s\" is not NAME=VALUE\n", optarg);
				exit(EX_USAGE);
			}
			*eq = '\0';
			add_macro(copy, eq + 1);
			free(copy);
			break;
		case 't':
			opt.timeout = strtod(optarg, &end);
			if (*end != '\0' || !(opt.timeout > 0) ||
			    opt.timeout > 86400) {
				fprintf(stderr, "miltermux-send: --timeout: "
				    "\"%s\" is not a number of seconds from "
				    "0 to 86400\n", optarg);
				exit(EX_USAGE);
			}
			break;
		case 'j':
			opt.json = true;
			break;
		case 'h':
			usage(stdout);
			exit(EX_OK);
		case OPT_COUNT:
			opt.count = number("--count", optarg, 1, 100000000);
			opt.load = true;
			break;
		case OPT_CONCURRENCY:
			opt.concurrency = number("--concurrency", optarg, 1,
			    100000);
			opt.load = true;
			break;
		case OPT_PER_SESSION:
			opt.per_session = number("--per-session", optarg, 1,
			    1000000);
			opt.load = true;
			break;
		case OPT_SIZE:
			opt.size = number("--size", optarg, 0, 64 << 20);
			opt.size_set = true;
			opt.load = true;
			break;
		case OPT_RCPTS:
			opt.nrcpts_gen = number("--rcpts", optarg, 1, 10000);
			opt.load = true;
			break;
		case OPT_CHAIN:
			opt.chain = true;
			opt.load = true;
			break;
		case OPT_FANOUT:
			opt.fanout = true;
			opt.load = true;
			break;
		case OPT_THREADS:
			opt.threads = number("--threads", optarg, 1, 64);
			opt.load = true;
			break;
		default:
			usage(stderr);
			exit(EX_USAGE);
		}
	}
	if (optind + 1 < argc) {
		fprintf(stderr, "miltermux-send: one message file at most\n");
		exit(EX_USAGE);
	}
	opt.file = optind < argc ? argv[optind] : "-";
	if (opt.chain && opt.fanout) {
		fprintf(stderr, "miltermux-send: --chain or --fanout, not "
		    "both\n");
		exit(EX_USAGE);
	}
	if (opt.nservers > 1 && !opt.chain && !opt.fanout) {
		fprintf(stderr, "miltermux-send: -s given %zu times: several "
		    "milters need --chain or --fanout\n", opt.nservers);
		exit(EX_USAGE);
	}
	if (opt.load) {
		if (opt.server == NULL) {
			fprintf(stderr, "miltermux-send: --server is "
			    "required\n");
			usage(stderr);
			exit(EX_USAGE);
		}
		if (opt.nrcpts > 0 && opt.nrcpts_gen > 0) {
			fprintf(stderr, "miltermux-send: --rcpts and --rcpt "
			    "exclude each other\n");
			exit(EX_USAGE);
		}
		if (opt.size_set && optind < argc) {
			fprintf(stderr, "miltermux-send: --size is for the "
			    "generated message, not FILE\n");
			exit(EX_USAGE);
		}
		if (optind >= argc)
			opt.file = NULL;	/* generate one */
		return;
	}
	if (opt.server == NULL || opt.nrcpts == 0) {
		fprintf(stderr, "miltermux-send: --server and at least one "
		    "--rcpt are required\n");
		usage(stderr);
		exit(EX_USAGE);
	}
}

/* JSON string output, escaping what JSON requires. */
static void
json_str(const char *s, size_t len)
{
	fputc('"', out);
	for (size_t i = 0; i < len; i++) {
		unsigned char	 c = (unsigned char)s[i];

		if (c == '"' || c == '\\')
			fprintf(out, "\\%c", c);
		else if (c == '\n')
			fputs("\\n", out);
		else if (c == '\r')
			fputs("\\r", out);
		else if (c == '\t')
			fputs("\\t", out);
		else if (c < 0x20 || c == 0x7f)
			fprintf(out, "\\u%04x", c);
		else
			fputc(c, out);
	}
	fputc('"', out);
}

static void
json_cstr(const char *s)
{
	if (s == NULL)
		fputs("null", out);
	else
		json_str(s, strlen(s));
}

/* Text output: control characters shown as escapes. */
static void
text_str(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char	 c = (unsigned char)s[i];

		if (c == '\n')
			fputs("\\n", out);
		else if (c == '\r')
			fputs("\\r", out);
		else if (c == '\t')
			fputs("\\t", out);
		else if (c < 0x20 || c == 0x7f)
			fprintf(out, "\\x%02x", c);
		else
			fputc(c, out);
	}
}

static void
sync_done(struct upstream_xchg *x)
{
	pthread_mutex_lock(&w.lock);
	w.done = true;
	pthread_cond_signal(&w.cond);
	pthread_mutex_unlock(&w.lock);
}

static void
expire_run(struct pool_job *job)
{
	upstream_expire(((struct expire_job *)job)->up, -ETIMEDOUT);
}

/* exchange - run x on up and wait for it, at most opt.timeout */
static void
exchange(struct upstream *up, struct upstream_xchg *x)
{
	struct expire_job	 ej = { .up = up };
	struct timespec		 ts;
	bool			 expired = false;

	x->done = sync_done;
	pthread_mutex_lock(&w.lock);
	w.done = false;
	pthread_mutex_unlock(&w.lock);
	upstream_submit(up, x);
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)opt.timeout;
	ts.tv_nsec += (long)((opt.timeout - (double)(time_t)opt.timeout) *
	    1e9);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&w.lock);
	while (!w.done) {
		if (!expired && pthread_cond_timedwait(&w.cond, &w.lock, &ts)
		    == ETIMEDOUT) {
			expired = true;
			ej.job.run = expire_run;
			pool_post(upstream_loop(up), &ej.job);
		} else if (expired)
			pthread_cond_wait(&w.cond, &w.lock);
	}
	pthread_mutex_unlock(&w.lock);
}

static double
ms_of(const struct upstream_xchg *x)
{
	return (double)(x->finished.tv_sec - x->started.tv_sec) * 1e3 +
	    (double)(x->finished.tv_nsec - x->started.tv_nsec) / 1e6;
}

static void
print_mod(const struct mod *m)
{
	const char	*k = codec_mod_kind_name(m->kind);

	if (opt.json) {
		fprintf(out, "{\"kind\": \"%s\"", k);
		if (m->kind == MOD_INSHEADER || m->kind == MOD_CHGHEADER)
			fprintf(out, ", \"index\": %u", m->index);
		if (m->kind == MOD_REPLBODY) {
			fputs(", \"body\": ", out);
			json_str((const char *)m->body, m->bodylen);
		} else {
			fputs(", \"name\": ", out);
			json_cstr(m->name);
			fputs(", \"value\": ", out);
			json_cstr(m->value);
		}
		fputc('}', out);
		return;
	}
	fprintf(out, "  %s", k);
	if (m->kind == MOD_INSHEADER || m->kind == MOD_CHGHEADER)
		fprintf(out, " %u", m->index);
	if (m->kind == MOD_REPLBODY) {
		fprintf(out, " (%zu bytes) ", m->bodylen);
		text_str((const char *)m->body, m->bodylen);
	} else {
		fputc(' ', out);
		text_str(m->name, strlen(m->name));
		if (m->kind == MOD_CHGHEADER && m->value != NULL &&
		    m->value[0] == '\0')
			fputs(" (delete)", out);
		else if (m->value != NULL) {
			fputs(m->kind == MOD_ADDHEADER ||
			    m->kind == MOD_INSHEADER ||
			    m->kind == MOD_CHGHEADER ? ": " : " ", out);
			text_str(m->value, strlen(m->value));
		}
	}
	fputc('\n', out);
}

/* report - print one stage's outcome */
static void
report(const char *what, const char *arg, const struct upstream_xchg *x)
{
	const char	*v = x->error != 0 ? "failed" :
			    proto_verdict_name(x->verdict);

	if (opt.json) {
		fprintf(out, "%s\n    {\"stage\": \"%s\"", first_stage ?
		    "" : ",", what);
		if (arg != NULL) {
			fputs(", \"arg\": ", out);
			json_cstr(arg);
		}
		fprintf(out, ", \"reply\": \"%s\"", x->verdict == VERDICT_NONE
		    && x->error == 0 ? "none" : v);
		fputs(", \"text\": ", out);
		json_cstr(x->text);
		if (x->error != 0) {
			fputs(", \"error\": ", out);
			json_cstr(strerror(-x->error));
		}
		fprintf(out, ", \"ms\": %.3f", ms_of(x));
		if (x->nprogress > 0)
			fprintf(out, ", \"progress\": %u", x->nprogress);
		if (x->kind == XCHG_STAGE && x->stage == STAGE_EOM) {
			fputs(", \"modifications\": [", out);
			for (size_t i = 0; i < x->nmods; i++) {
				fputs(i > 0 ? ", " : "", out);
				print_mod(&x->mods[i]);
			}
			fputc(']', out);
		}
		fputc('}', out);
		first_stage = false;
		return;
	}
	fprintf(out, "%s", what);
	if (arg != NULL) {
		fputc(' ', out);
		text_str(arg, strlen(arg));
	}
	fprintf(out, ": %s", x->verdict == VERDICT_NONE && x->error == 0 ?
	    "(no reply)" : v);
	if (x->text != NULL) {
		fputs(" \"", out);
		text_str(x->text, strlen(x->text));
		fputc('"', out);
	}
	if (x->error != 0)
		fprintf(out, " (%s)", strerror(-x->error));
	if (x->nprogress > 0)
		fprintf(out, " (%u progress)", x->nprogress);
	fprintf(out, " [%.1f ms]\n", ms_of(x));
	if (x->kind == XCHG_STAGE && x->stage == STAGE_EOM && x->nmods > 0) {
		fprintf(out, "modifications:\n");
		for (size_t i = 0; i < x->nmods; i++)
			print_mod(&x->mods[i]);
	}
}

static bool
user_macro(const char *name)
{
	for (size_t i = 0; i < opt.nmacros; i++)
		if (strcmp(opt.macros[i].name, name) == 0)
			return true;
	return false;
}

/* put_all_macros - our defaults plus the user's, for every stage */
static void
put_all_macros(struct buf *b, enum stage st, const char *extra_name,
    const char *extra_value)
{
	const char	*pairs[2 * 64];
	size_t		 n = 0;

	if (proto_stage_macro[st] < 0)
		return;
	/* The user's macros first: a default of the same name is left
	 * out, so -m can override it. */
	for (size_t i = 0; i < opt.nmacros && n < 62; i++, n++) {
		pairs[2 * n] = opt.macros[i].name;
		pairs[2 * n + 1] = opt.macros[i].value;
	}
	if (st >= STAGE_ENVFROM && !user_macro("i")) {
		pairs[2 * n] = "i";
		pairs[2 * n + 1] = queueid;
		n++;
	}
	if (extra_name != NULL && !user_macro(extra_name)) {
		pairs[2 * n] = extra_name;
		pairs[2 * n + 1] = extra_value;
		n++;
	}
	codec_put_macros(b, proto_stage_cmd[st], pairs, n);
}

static char *
read_input(const char *path, size_t *len)
{
	FILE	*f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	char	*data = NULL;
	size_t	 cap = 0, n;

	*len = 0;
	if (f == NULL) {
		fprintf(stderr, "miltermux-send: %s: %s\n", path,
		    strerror(errno));
		exit(EX_NOINPUT);
	}
	for (;;) {
		if (cap - *len < 65536) {
			cap = cap == 0 ? 65536 : cap * 2;
			data = xreallocarray(data, cap, 1);
		}
		n = fread(data + *len, 1, cap - *len, f);
		*len += n;
		if (n == 0)
			break;
	}
	if (ferror(f)) {
		fprintf(stderr, "miltermux-send: %s: read error\n", path);
		exit(EX_NOINPUT);
	}
	if (f != stdin)
		fclose(f);
	return data;
}

/*
 * split_message - headers as an MTA hands them to milters (folded lines
 * joined with a bare LF, one space after the colon removed unless the
 * milter wants it kept) and the body with CRLF line ends.
 */
static size_t
split_message(const char *m, size_t len, struct load_header **hdrs,
    struct buf *body)
{
	size_t		 i = 0, n = 0, cap = 0;
	const char	*line, *eol, *colon;

	*hdrs = NULL;
	while (i < len) {
		line = m + i;
		eol = memchr(line, '\n', len - i);
		size_t ll = eol != NULL ? (size_t)(eol - line) : len - i;
		size_t raw = ll;

		if (ll > 0 && line[ll - 1] == '\r')
			ll--;
		i += raw + (eol != NULL ? 1 : 0);
		if (ll == 0)
			break;		/* end of headers */
		if ((line[0] == ' ' || line[0] == '\t') && n > 0) {
			char	*v = xasprintf("%s\n%.*s", (*hdrs)[n - 1].value,
			    (int)ll, line);

			free((*hdrs)[n - 1].value);
			(*hdrs)[n - 1].value = v;
			continue;
		}
		colon = memchr(line, ':', ll);
		if (colon == NULL) {
			/* Not a header line: the header block ends here and
			 * this line starts the body. */
			i = (size_t)(line - m);
			break;
		}
		if (n == cap) {
			cap = cap == 0 ? 16 : cap * 2;
			*hdrs = xreallocarray(*hdrs, cap, sizeof **hdrs);
		}
		(*hdrs)[n].name = xstrndup(line, (size_t)(colon - line));
		(*hdrs)[n].value = xstrndup(colon + 1,
		    ll - (size_t)(colon + 1 - line));
		n++;
	}
	for (; i < len; i++) {
		if (m[i] == '\n' && (i == 0 || m[i - 1] != '\r'))
			buf_add_u8(body, '\r');
		buf_add_u8(body, (uint8_t)m[i]);
	}
	return n;
}

static int
fate(enum verdict v)
{
	switch (v) {
	case VERDICT_REJECT:
		return EXIT_REJECTED;
	case VERDICT_TEMPFAIL:
		return EXIT_TEMPFAILED;
	case VERDICT_DISCARD:
		return EXIT_DISCARDED;
	default:
		return EXIT_PASSED;
	}
}

/* stage - a new exchange for one command */
static struct upstream_xchg *
stage(enum stage st)
{
	struct upstream_xchg	*x = xcalloc(1, sizeof *x);

	upstream_xchg_init(x, XCHG_STAGE, st);
	return x;
}

/*
 * generate - a message of about opt.size bytes as stored in an .eml
 * (CRLF line ends): five headers and a body of 76-character lines.
 */
static size_t
generate(struct load_header **hdrs, struct buf *body)
{
	static const char *const names[] = {
		"From", "To", "Subject", "Date", "Message-ID"
	};
	const char	*values[] = {
		" <sender@example.org>", " <rcpt1@example.net>",
		" miltermux-send load test", " Thu, 1 Jan 2026 00:00:00 +0000",
		" <load@miltermux-send.example.org>"
	};
	size_t		 n = sizeof names / sizeof names[0], used = 2;
	size_t		 line;

	*hdrs = xcalloc(n, sizeof **hdrs);
	for (size_t i = 0; i < n; i++) {
		(*hdrs)[i].name = xstrdup(names[i]);
		(*hdrs)[i].value = xstrdup(values[i]);
		used += strlen(names[i]) + 1 + strlen(values[i]) + 2;
	}
	for (size_t left = opt.size > used ? opt.size - used : 0, k = 0;
	    left > 0; left -= line) {
		line = left > 78 ? 78 : left;
		for (size_t i = 0; i + 2 < line; i++, k++)
			buf_add_u8(body, (uint8_t)('a' + k % 26));
		if (line >= 2)
			buf_add(body, "\r\n", 2);
		else
			buf_add_u8(body, '.');
	}
	return n;
}

/* run_load - the load mode: build the message and the milter list */
static int
run_load(void)
{
	struct load_opts	 lo;
	struct conf_upstream	*ups;
	struct load_header	*hdrs;
	struct buf		 body = BUF_INIT;
	char			 why[256], *msg = NULL, **gen = NULL;
	size_t			 len = 0, nhdrs;
	int			 status;

	ups = xcalloc(opt.nservers, sizeof *ups);
	for (size_t i = 0; i < opt.nservers; i++) {
		ups[i].name = (char *)opt.servers[i];
		ups[i].address = (char *)opt.servers[i];
		ups[i].enabled = true;
		ups[i].on_failure = ONFAIL_TEMPFAIL;
		ups[i].max_mods = UINT_MAX;
		if (conf_parse_address(opt.servers[i], &ups[i].addr, why,
		    sizeof why) != 0) {
			fprintf(stderr, "miltermux-send: --server: %s\n", why);
			return EX_USAGE;
		}
	}
	if (opt.file != NULL) {
		msg = read_input(opt.file, &len);
		nhdrs = split_message(msg, len, &hdrs, &body);
	} else {
		nhdrs = generate(&hdrs, &body);
		len = opt.size;
	}
	memset(&lo, 0, sizeof lo);
	if (opt.nrcpts == 0) {
		size_t	 n = opt.nrcpts_gen > 0 ? opt.nrcpts_gen : 1;

		gen = xcalloc(n, sizeof *gen);
		for (size_t i = 0; i < n; i++)
			gen[i] = xasprintf("<rcpt%zu@example.net>", i + 1);
		lo.rcpts = (const char *const *)gen;
		lo.nrcpts = n;
	} else {
		lo.rcpts = opt.rcpts;
		lo.nrcpts = opt.nrcpts;
	}
	lo.ups = ups;
	lo.nups = opt.nservers;
	lo.fanout = opt.fanout;
	lo.count = opt.count;
	lo.concurrency = (unsigned)opt.concurrency;
	lo.per_session = (unsigned)opt.per_session;
	lo.threads = (unsigned)opt.threads;
	lo.timeout = opt.timeout;
	lo.json = opt.json;
	lo.helo = opt.helo;
	lo.client_name = opt.client_name;
	lo.client_addr = opt.client_addr;
	lo.client_port = opt.client_port;
	lo.from = opt.from;
	lo.macros = opt.macros;
	lo.nmacros = opt.nmacros;
	lo.hdrs = hdrs;
	lo.nhdrs = nhdrs;
	lo.body = buf_head(&body);
	lo.bodylen = buf_avail(&body);
	lo.size = len;
	status = load_run(&lo, out);
	for (size_t i = 0; i < nhdrs; i++) {
		free(hdrs[i].name);
		free(hdrs[i].value);
	}
	free(hdrs);
	for (size_t i = 0; gen != NULL && i < lo.nrcpts; i++)
		free(gen[i]);
	free(gen);
	buf_fini(&body);
	free(msg);
	free(ups);
	return status;
}

int
main(int argc, char **argv)
{
	struct conf_upstream	 cfg;
	struct pool		*pool;
	struct upstream		*up;
	struct upstream_xchg	*x;
	struct load_header		*hdrs;
	struct buf		 body = BUF_INIT;
	char			 why[256], *msg, *rcptv[2];
	size_t			 len, nhdrs, accepted = 0;
	enum verdict		 final = VERDICT_CONTINUE;
	enum verdict		 refused = VERDICT_NONE;
	bool			 leadspc, done = false;
	int			 rc, status = EXIT_PASSED;

	out = stdout;
	parse_args(argc, argv);
	log_init("miltermux-send", true);
	if (opt.load) {
		status = run_load();
		for (size_t i = 0; i < opt.nmacros; i++) {
			free(opt.macros[i].name);
			free(opt.macros[i].value);
		}
		free(opt.macros);
		free(opt.rcpts);
		free(opt.servers);
		return status;
	}
	memset(&cfg, 0, sizeof cfg);
	cfg.name = (char *)opt.server;
	cfg.on_failure = ONFAIL_TEMPFAIL;
	/* It shows whatever the milter sends. */
	cfg.max_mods = UINT_MAX;
	if (conf_parse_address(opt.server, &cfg.addr, why, sizeof why) != 0) {
		fprintf(stderr, "miltermux-send: --server: %s\n", why);
		return EX_USAGE;
	}
	msg = read_input(opt.file, &len);
	nhdrs = split_message(msg, len, &hdrs, &body);
	snprintf(queueid, sizeof queueid, "S%08lX",
	    (unsigned long)getpid() ^ (unsigned long)time(NULL));
	if ((rc = pool_new(1, &pool)) != 0) {
		fprintf(stderr, "miltermux-send: %s\n", strerror(-rc));
		return EX_OSERR;
	}
	up = upstream_new(&cfg, 0, false, "miltermux-send",
	    pool_pick(pool));
	if (opt.json) {
		fputs("{\n  \"server\": ", out);
		json_cstr(opt.server);
		fputs(",\n  \"stages\": [", out);
	}

	/* Offer everything, as Postfix and Sendmail do. */
	x = stage(STAGE_CONNECT);
	x->kind = XCHG_OPEN;
	x->offer_actions = MA_ALL;
	x->offer_proto = MP_ALL_V6;
	exchange(up, x);
	if (x->error != 0) {
		report("negotiate", NULL, x);
		status = EX_UNAVAILABLE;
		upstream_xchg_fini(x);
		free(x);
		goto end;
	}
	leadspc = (upstream_proto(up) & MP_HDR_LEADSPC) != 0;
	if (opt.json) {
		fprintf(out, "%s\n    {\"stage\": \"negotiate\", \"version\": "
		    "%u, \"actions\": %u, \"protocol\": %u, \"ms\": %.3f}",
		    "", upstream_version(up), upstream_actions(up),
		    upstream_proto(up), ms_of(x));
		first_stage = false;
	} else
		fprintf(out, "negotiate: version %u, actions 0x%03x, protocol "
		    "0x%06x [%.1f ms]\n", upstream_version(up),
		    upstream_actions(up), upstream_proto(up), ms_of(x));
	upstream_xchg_fini(x);
	free(x);

#define RUN(st, label, argstr, build) do {				\
	x = stage(st);				\
	build;								\
	exchange(up, x);						\
	report((label), (argstr), x);					\
	if (x->error != 0) {						\
		status = EX_UNAVAILABLE;				\
		upstream_xchg_fini(x);					\
		free(x);						\
		goto end;						\
	}								\
} while (0)

	RUN(STAGE_CONNECT, "connect", opt.client_addr, {
		put_all_macros(&x->macros, STAGE_CONNECT, NULL, NULL);
		codec_put_connect(&x->cmd, opt.client_name,
		    strchr(opt.client_addr, ':') != NULL ? '6' : '4',
		    (uint16_t)opt.client_port, opt.client_addr);
	});
	if (x->verdict != VERDICT_CONTINUE && x->verdict != VERDICT_NONE)
		done = true, final = x->verdict;
	upstream_xchg_fini(x), free(x);
	if (!done) {
		RUN(STAGE_HELO, "helo", opt.helo, {
			put_all_macros(&x->macros, STAGE_HELO, NULL, NULL);
			codec_put_str(&x->cmd, MC_HELO, opt.helo);
		});
		if (x->verdict != VERDICT_CONTINUE &&
		    x->verdict != VERDICT_NONE)
			done = true, final = x->verdict;
		upstream_xchg_fini(x), free(x);
	}
	if (!done) {
		const char	*fv[1] = { opt.from };

		RUN(STAGE_ENVFROM, "envfrom", opt.from, {
			put_all_macros(&x->macros, STAGE_ENVFROM,
			    "{mail_addr}", opt.from);
			codec_put_argv(&x->cmd, MC_MAIL, fv, 1);
		});
		if (x->verdict != VERDICT_CONTINUE &&
		    x->verdict != VERDICT_NONE)
			done = true, final = x->verdict;
		upstream_xchg_fini(x), free(x);
	}
	for (size_t i = 0; !done && i < opt.nrcpts; i++) {
		rcptv[0] = (char *)opt.rcpts[i];
		RUN(STAGE_ENVRCPT, "envrcpt", opt.rcpts[i], {
			put_all_macros(&x->macros, STAGE_ENVRCPT,
			    "{rcpt_addr}", opt.rcpts[i]);
			codec_put_argv(&x->cmd, MC_RCPT,
			    (const char *const *)rcptv, 1);
		});
		if (x->verdict == VERDICT_ACCEPT ||
		    x->verdict == VERDICT_DISCARD)
			done = true, final = x->verdict;
		else if (x->verdict == VERDICT_REJECT ||
		    x->verdict == VERDICT_TEMPFAIL)
			refused = x->verdict == VERDICT_REJECT ||
			    refused == VERDICT_REJECT ? VERDICT_REJECT :
			    VERDICT_TEMPFAIL;
		else
			accepted++;
		upstream_xchg_fini(x), free(x);
	}
	if (!done && accepted == 0) {
		/* Every recipient refused: the MTA would not go on. */
		done = true;
		final = refused;
	}
	if (!done) {
		RUN(STAGE_DATA, "data", NULL, {
			put_all_macros(&x->macros, STAGE_DATA, NULL, NULL);
			codec_put_packet(&x->cmd, MC_DATA, NULL, 0);
		});
		if (x->verdict != VERDICT_CONTINUE &&
		    x->verdict != VERDICT_NONE)
			done = true, final = x->verdict;
		upstream_xchg_fini(x), free(x);
	}
	for (size_t i = 0; !done && i < nhdrs; i++) {
		const char	*v = hdrs[i].value;

		/* MTAs strip one space after the colon unless the
		 * filter asked for the exact bytes (HDR_LEADSPC). */
		if (!leadspc && v[0] == ' ')
			v++;
		RUN(STAGE_HEADER, "header", hdrs[i].name, {
			codec_put_header(&x->cmd, hdrs[i].name, v);
		});
		if (x->verdict != VERDICT_CONTINUE &&
		    x->verdict != VERDICT_NONE && x->verdict != VERDICT_SKIP)
			done = true, final = x->verdict;
		upstream_xchg_fini(x), free(x);
	}
	if (!done) {
		RUN(STAGE_EOH, "eoh", NULL, {
			put_all_macros(&x->macros, STAGE_EOH, NULL, NULL);
			codec_put_packet(&x->cmd, MC_EOH, NULL, 0);
		});
		if (x->verdict != VERDICT_CONTINUE &&
		    x->verdict != VERDICT_NONE)
			done = true, final = x->verdict;
		upstream_xchg_fini(x), free(x);
	}
	for (size_t off = 0; !done && off < buf_avail(&body);
	    off += PROTO_MAX_DATA) {
		size_t	 n = buf_avail(&body) - off;
		char	 label[32];

		n = n > PROTO_MAX_DATA ? PROTO_MAX_DATA : n;
		snprintf(label, sizeof label, "%zu bytes", n);
		RUN(STAGE_BODY, "body", label, {
			codec_put_packet(&x->cmd, MC_BODY,
			    buf_head(&body) + off, n);
		});
		if (x->verdict == VERDICT_SKIP) {
			upstream_xchg_fini(x), free(x);
			break;
		}
		if (x->verdict != VERDICT_CONTINUE &&
		    x->verdict != VERDICT_NONE)
			done = true, final = x->verdict;
		upstream_xchg_fini(x), free(x);
	}
	if (!done) {
		RUN(STAGE_EOM, "eom", NULL, {
			put_all_macros(&x->macros, STAGE_EOM, NULL, NULL);
			codec_put_packet(&x->cmd, MC_BODYEOB, NULL, 0);
		});
		final = x->verdict;
		upstream_xchg_fini(x), free(x);
	} else if (final != VERDICT_NONE) {
		x = stage(STAGE_ABORT);
		codec_put_packet(&x->cmd, MC_ABORT, NULL, 0);
		exchange(up, x);
		upstream_xchg_fini(x), free(x);
	}
	status = fate(final);
end:
	if (opt.json)
		fprintf(out, "\n  ],\n  \"result\": \"%s\",\n  \"exit\": %d\n}\n",
		    status == EX_UNAVAILABLE ? "failed" :
		    final == VERDICT_NONE || final == VERDICT_CONTINUE ?
		    "accept" : proto_verdict_name(final), status);
	else
		fprintf(out, "result: %s\n", status == EX_UNAVAILABLE ?
		    "failed" : final == VERDICT_NONE ||
		    final == VERDICT_CONTINUE ? "accept" :
		    proto_verdict_name(final));
	fflush(out);
	x = stage(STAGE_QUIT);
	x->kind = XCHG_CLOSE;
	exchange(up, x);
	upstream_xchg_fini(x);
	free(x);
	pool_free(pool);
	for (size_t i = 0; i < nhdrs; i++) {
		free(hdrs[i].name);
		free(hdrs[i].value);
	}
	free(hdrs);
	buf_fini(&body);
	free(msg);
	for (size_t i = 0; i < opt.nmacros; i++) {
		free(opt.macros[i].name);
		free(opt.macros[i].value);
	}
	free(opt.macros);
	free(opt.rcpts);
	free(opt.servers);
	return status;
}
