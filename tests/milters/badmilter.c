/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * badmilter - a milter that breaks the protocol on purpose.
 *
 * The hostile upstream of tests/test_hostile.c.  It is not built on
 * libmilter, which would never send what it sends: it speaks the filter
 * side of the wire protocol itself, with codec.c, over a unix socket.
 * It negotiates like a plain filter (the version and actions it is
 * offered, no protocol bits), answers continue to every command, and
 * breaks exactly one rule, chosen on the command line, at one stage.
 * It has no policy and never looks at what it is sent.
 *
 * Usage: badmilter -p unix:PATH --mode MODE [options]
 *
 *   -p unix:PATH        where to listen (also local:PATH); a stale socket
 *                       file is removed
 *   --mode MODE         the misbehaviour, at the --stage:
 *     none              none at all (a well-behaved filter)
 *     garbage           send the --text bytes (default: a line of ASCII,
 *                       whose first four bytes make a huge length)
 *     len-zero          a packet header with length 0
 *     len-huge          a packet header announcing 65536 data bytes
 *     unknown-code      a packet with the reply code 'Z'
 *     mod-early         an add-header request, then continue, before
 *                       end of message
 *     undeclared-action negotiate no SMFIF_ADDHDRS, then add a header at
 *                       end of message (the stage must be eom)
 *     nr-reply          negotiate SMFIP_NR_* for the stage, offered or
 *                       not, then answer every command of that stage
 *                       all the same
 *     optneg-actions    ask for one action bit that was not offered
 *     optneg-proto      ask for one protocol bit that was not offered,
 *                       other than a no-reply one
 *     optneg-version    answer with protocol version --version
 *     drip              send the answer one byte per second
 *     close             close the connection instead of answering
 *     reply-text        answer 'y' with --text (then the connection
 *                       goes on as after a reject)
 *     extra-reply       answer continue twice, in one write
 *     rspamd-like       negotiate as rspamd's milter mode does: every
 *                       SMFIP_NR_* bit (protocol 0xff080), whatever it
 *                       is offered; answer nothing before end of
 *                       message, then add the header X-Spam: no and
 *                       accept
 *     rspamd-reject     the same, but reject at end of message with
 *                       --text (default "554 5.7.1 Gtube pattern")
 *     qnc-close         close the connection on QUIT_NC (a filter that
 *                       does not take it); --stage is ignored
 *     qnc-stale         take QUIT_NC, but close the connection without
 *                       answering at the first command after the
 *                       second QUIT_NC on it (an idle connection gone
 *                       stale under the proxy); --stage is ignored
 *   --stage STAGE       negotiate connect helo envfrom envrcpt data header
 *                       eoh body eom unknown (default envfrom; eom for
 *                       undeclared-action; optneg-* ignore it).  A stage
 *                       met several times (envrcpt, header, body)
 *                       misbehaves at its first command, except nr-reply.
 *   --text TEXT         bytes for garbage and reply-text; escapes \r \n
 *                       \t \0 \\ \% and \xHH are decoded (a reply-text
 *                       gets its terminating NUL added)
 *   --version N         for optneg-version
 *   --sessions N        misbehave in the first N sessions only, then
 *                       behave (default 0: in every session); a session
 *                       is a connection that negotiated, so that probes
 *                       which only connect do not count
 *   --log FILE          append one line per misbehaviour, with a single
 *                       write(2) under O_APPEND
 *
 * Design: one process per connection (fork), at most MAX_CHILDREN at a
 * time; the listener waits for one to end before it accepts more.
 * Every connection process ends by itself: on EOF, on QUIT, on a failed
 * write, or after SESSION_LIFETIME seconds.  SIGTERM (or SIGINT) ends
 * the listener and its process group, which it leads.
 *
 * Concurrency: single-threaded processes.  Ownership: everything lives
 * until exit.
 */
/* MAP_ANONYMOUS is not POSIX. */
#define _DEFAULT_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "codec.h"
#include "proto.h"

#define MAX_CHILDREN		64
#define SESSION_LIFETIME	120	/* seconds */
#define MAX_IN			(1024 * 1024)	/* data bytes of one command */
#define READ_CHUNK		65536

enum mode {
	MODE_NONE = 0,
	MODE_GARBAGE,
	MODE_LEN_ZERO,
	MODE_LEN_HUGE,
	MODE_UNKNOWN_CODE,
	MODE_MOD_EARLY,
	MODE_UNDECLARED_ACTION,
	MODE_NR_REPLY,
	MODE_OPTNEG_ACTIONS,
	MODE_OPTNEG_PROTO,
	MODE_OPTNEG_VERSION,
	MODE_DRIP,
	MODE_CLOSE,
	MODE_REPLY_TEXT,
	MODE_EXTRA_REPLY,
	MODE_RSPAMD_LIKE,
	MODE_RSPAMD_REJECT,
	MODE_QNC_CLOSE,
	MODE_QNC_STALE,
	MODE_COUNT
};

static const char *const mode_names[MODE_COUNT] = {
	[MODE_NONE]		= "none",
	[MODE_GARBAGE]		= "garbage",
	[MODE_LEN_ZERO]		= "len-zero",
	[MODE_LEN_HUGE]		= "len-huge",
	[MODE_UNKNOWN_CODE]	= "unknown-code",
	[MODE_MOD_EARLY]	= "mod-early",
	[MODE_UNDECLARED_ACTION] = "undeclared-action",
	[MODE_NR_REPLY]		= "nr-reply",
	[MODE_OPTNEG_ACTIONS]	= "optneg-actions",
	[MODE_OPTNEG_PROTO]	= "optneg-proto",
	[MODE_OPTNEG_VERSION]	= "optneg-version",
	[MODE_DRIP]		= "drip",
	[MODE_CLOSE]		= "close",
	[MODE_REPLY_TEXT]	= "reply-text",
	[MODE_EXTRA_REPLY]	= "extra-reply",
	[MODE_RSPAMD_LIKE]	= "rspamd-like",
	[MODE_RSPAMD_REJECT]	= "rspamd-reject",
	[MODE_QNC_CLOSE]	= "qnc-close",
	[MODE_QNC_STALE]	= "qnc-stale",
};

/* The stages --stage names: the command that starts each, its NR bit. */
struct stage_info {
	const char	*name;
	char		 cmd;
	uint32_t	 nr;
};

static const struct stage_info stages[] = {
	{ "negotiate",	MC_OPTNEG,	0 },
	{ "connect",	MC_CONNECT,	MP_NR_CONN },
	{ "helo",	MC_HELO,	MP_NR_HELO },
	{ "envfrom",	MC_MAIL,	MP_NR_MAIL },
	{ "envrcpt",	MC_RCPT,	MP_NR_RCPT },
	{ "data",	MC_DATA,	MP_NR_DATA },
	{ "header",	MC_HEADER,	MP_NR_HDR },
	{ "eoh",	MC_EOH,		MP_NR_EOH },
	{ "body",	MC_BODY,	MP_NR_BODY },
	{ "eom",	MC_BODYEOB,	0 },
	{ "unknown",	MC_UNKNOWN,	MP_NR_UNKN },
	{ NULL,		0,		0 }
};

static struct {
	const char		*path;
	enum mode		 mode;
	const struct stage_info	*stage;
	char			*text;
	size_t			 textlen;
	bool			 has_text;
	long			 version;
	bool			 has_version;
	unsigned long		 sessions;
	const char		*log;
} opt;

static volatile sig_atomic_t	 listener_pid;
/* Sessions so far, shared by the connection processes (mmap). */
static atomic_ulong		*session_count;

static _Noreturn void
usage_error(const char *fmt, ...)
{
	va_list	 ap;

	fputs("badmilter: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nusage: badmilter -p unix:PATH --mode MODE [--stage STAGE] "
	    "[--text TEXT]\n                 [--version N] [--sessions N] "
	    "[--log FILE]\n", stderr);
	exit(EX_USAGE);
}

/* unescape - decode \r \n \t \0 \\ \% \xHH; other backslashes stay */
static char *
unescape(const char *s, size_t *len)
{
	char		*out = malloc(strlen(s) + 1);
	size_t		 o = 0;
	unsigned	 v;

	if (out == NULL)
		abort();
	while (*s != '\0') {
		if (s[0] != '\\' || s[1] == '\0') {
			out[o++] = *s++;
			continue;
		}
		switch (s[1]) {
		case 'r':	out[o++] = '\r'; break;
		case 'n':	out[o++] = '\n'; break;
		case 't':	out[o++] = '\t'; break;
		case '0':	out[o++] = '\0'; break;
		case '\\':	out[o++] = '\\'; break;
		case '%':	out[o++] = '%'; break;
		case 'x':
			if (isxdigit((unsigned char)s[2]) &&
			    isxdigit((unsigned char)s[3])) {
				sscanf(s + 2, "%2x", &v);
				out[o++] = (char)v;
				s += 2;
				break;
			}
			/* FALLTHROUGH */
		default:
			out[o++] = s[0];
			out[o++] = s[1];
			break;
		}
		s += 2;
	}
	out[o] = '\0';		/* reply-text sends it */
	*len = o;
	return out;
}

static const struct stage_info *
find_stage(const char *name)
{
	for (const struct stage_info *st = stages; st->name != NULL; st++)
		if (strcmp(st->name, name) == 0)
			return st;
	return NULL;
}

static void
parse_args(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "mode",	required_argument, NULL, 'm' },
		{ "stage",	required_argument, NULL, 's' },
		{ "text",	required_argument, NULL, 't' },
		{ "version",	required_argument, NULL, 'V' },
		{ "sessions",	required_argument, NULL, 'S' },
		{ "log",	required_argument, NULL, 'l' },
		{ NULL,		0,		   NULL, 0 }
	};
	const char	*mode = NULL;
	char		*end;
	int		 ch, i;

	while ((ch = getopt_long(argc, argv, "p:", longopts, NULL)) != -1) {
		switch (ch) {
		case 'p':
			if (strncmp(optarg, "unix:", 5) == 0)
				opt.path = optarg + 5;
			else if (strncmp(optarg, "local:", 6) == 0)
				opt.path = optarg + 6;
			else
				usage_error("-p: only unix:PATH, got '%s'",
				    optarg);
			break;
		case 'm':
			mode = optarg;
			break;
		case 's':
			if ((opt.stage = find_stage(optarg)) == NULL)
				usage_error("--stage: unknown stage '%s'",
				    optarg);
			break;
		case 't':
			free(opt.text);
			opt.text = unescape(optarg, &opt.textlen);
			opt.has_text = true;
			break;
		case 'V':
			opt.version = strtol(optarg, &end, 10);
			if (*end != '\0' || end == optarg)
				usage_error("--version: '%s' is not a number",
				    optarg);
			opt.has_version = true;
			break;
		case 'S':
			opt.sessions = strtoul(optarg, &end, 10);
			if (*end != '\0' || end == optarg)
				usage_error("--sessions: '%s' is not a number",
				    optarg);
			break;
		case 'l':
			opt.log = optarg;
			break;
		default:
			usage_error("bad option");
		}
	}
	if (optind != argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	if (opt.path == NULL || mode == NULL)
		usage_error("-p and --mode are required");
	if (strlen(opt.path) >= sizeof ((struct sockaddr_un *)0)->sun_path)
		usage_error("-p: path too long");
	for (i = 0; i < MODE_COUNT; i++)
		if (strcmp(mode_names[i], mode) == 0)
			break;
	if (i == MODE_COUNT)
		usage_error("--mode: unknown mode '%s'", mode);
	opt.mode = (enum mode)i;
	if (opt.stage == NULL)
		opt.stage = find_stage(opt.mode == MODE_UNDECLARED_ACTION ?
		    "eom" : "envfrom");
	if (opt.mode == MODE_UNDECLARED_ACTION && opt.stage->cmd != MC_BODYEOB)
		usage_error("undeclared-action needs --stage eom");
	if (opt.mode == MODE_MOD_EARLY && (opt.stage->cmd == MC_BODYEOB ||
	    opt.stage->cmd == MC_OPTNEG))
		usage_error("mod-early needs a stage before eom");
	if (opt.mode == MODE_NR_REPLY && opt.stage->nr == 0)
		usage_error("nr-reply: %s has no NR bit", opt.stage->name);
	if (opt.mode == MODE_REPLY_TEXT && (!opt.has_text ||
	    opt.stage->cmd == MC_OPTNEG))
		usage_error("reply-text needs --text and a stage after "
		    "negotiate");
	if (opt.mode == MODE_OPTNEG_VERSION && !opt.has_version)
		usage_error("optneg-version needs --version");
	if (opt.mode == MODE_RSPAMD_REJECT && !opt.has_text) {
		opt.text = unescape("554 5.7.1 Gtube pattern", &opt.textlen);
		opt.has_text = true;
	}
	if (opt.mode == MODE_GARBAGE && !opt.has_text) {
		opt.text = unescape("this is not a milter reply\\r\\n",
		    &opt.textlen);
		opt.has_text = true;
	}
}

/* note - one line to --log, if any */
static void
note(unsigned long session, const char *what)
{
	char	 line[256];
	int	 fd, n;

	if (opt.log == NULL)
		return;
	n = snprintf(line, sizeof line, "session %lu: %s %s at %s\n",
	    session, what, mode_names[opt.mode], opt.stage->name);
	if (n < 0 || (size_t)n >= sizeof line)
		return;
	if ((fd = open(opt.log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
	    0644)) == -1)
		return;
	(void)!write(fd, line, (size_t)n);
	close(fd);
}

/* send_all - write b whole, or end the session (the proxy left) */
static void
send_all(int fd, struct buf *b)
{
	ssize_t	 n;

	while (buf_avail(b) > 0) {
		n = send(fd, buf_head(b), buf_avail(b), MSG_NOSIGNAL);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			_exit(0);
		buf_consume(b, (size_t)n);
	}
}

/* drip - write b one byte per second; the proxy's deadline must end it */
static void
drip(int fd, struct buf *b)
{
	struct timespec	 one = { 1, 0 };
	struct buf	 byte = BUF_INIT;

	while (buf_avail(b) > 0) {
		buf_add(&byte, buf_head(b), 1);
		buf_consume(b, 1);
		send_all(fd, &byte);
		if (buf_avail(b) > 0)
			nanosleep(&one, NULL);
	}
	buf_fini(&byte);
}

/* lowest_missing - the lowest bit of mask that offer lacks, or 0 */
static uint32_t
lowest_missing(uint32_t offer, uint32_t mask)
{
	for (uint32_t bit = 1; bit != 0; bit <<= 1)
		if ((mask & bit) != 0 && (offer & bit) == 0)
			return bit;
	return 0;
}

struct session {
	int		 fd;
	unsigned long	 index;
	bool		 bad;		/* misbehaves in this session */
	bool		 fired;		/* has misbehaved once */
	uint32_t	 proto;		/* protocol bits it negotiated */
	unsigned	 nqnc;		/* QUIT_NC seen on this connection */
};

/*
 * misbehave - put the stage's wrong answer into out and send it; "good"
 * is the answer a plain filter would give
 */
static void
misbehave(struct session *s, struct buf *good)
{
	struct buf	 out = BUF_INIT;
	static const uint8_t huge[] = { 0, 1, 0, 1, MR_CONTINUE };
	static const uint8_t zero[] = { 0, 0, 0, 0 };
	static const char hdr[] = "X-Bad\0misplaced";

	if (opt.mode != MODE_NR_REPLY || s->fired)
		note(s->index, s->fired ? "again" : "fired");
	s->fired = true;
	switch (opt.mode) {
	case MODE_GARBAGE:
		buf_add(&out, opt.text, opt.textlen);
		break;
	case MODE_LEN_ZERO:
		buf_add(&out, zero, sizeof zero);
		break;
	case MODE_LEN_HUGE:
		buf_add(&out, huge, sizeof huge);
		break;
	case MODE_UNKNOWN_CODE:
		codec_put_packet(&out, 'Z', NULL, 0);
		break;
	case MODE_MOD_EARLY:
	case MODE_UNDECLARED_ACTION:
		codec_put_packet(&out, MR_ADDHEADER, hdr, sizeof hdr);
		buf_add(&out, buf_head(good), buf_avail(good));
		break;
	case MODE_DRIP:
		drip(s->fd, good);
		return;
	case MODE_CLOSE:
		_exit(0);
	case MODE_REPLY_TEXT:
		codec_put_packet(&out, MR_REPLYCODE, opt.text,
		    opt.textlen + 1);
		break;
	case MODE_EXTRA_REPLY:
		buf_add(&out, buf_head(good), buf_avail(good));
		codec_put_packet(&out, MR_CONTINUE, NULL, 0);
		break;
	case MODE_NR_REPLY:
	default:
		buf_add(&out, buf_head(good), buf_avail(good));
		break;
	}
	send_all(s->fd, &out);
	buf_fini(&out);
}

/* optneg - answer the offer; the optneg-* modes lie here */
static void
optneg(struct session *s, const uint8_t *data, size_t len)
{
	struct codec_optneg	 offer;
	struct buf		 good = BUF_INIT;
	uint32_t		 version, actions, proto = 0;

	if (codec_decode_optneg(data, len, &offer) != 0)
		_exit(1);
	s->index = atomic_fetch_add(session_count, 1) + 1;
	s->bad = opt.sessions == 0 || s->index <= opt.sessions;
	version = offer.version < PROTO_VERSION ? offer.version :
	    PROTO_VERSION;
	actions = offer.actions;
	if (s->bad) {
		switch (opt.mode) {
		case MODE_NR_REPLY:
			proto |= opt.stage->nr;
			break;
		case MODE_UNDECLARED_ACTION:
			actions &= ~MA_ADDHDRS;
			break;
		case MODE_OPTNEG_ACTIONS:
			actions |= lowest_missing(offer.actions, ~0u);
			break;
		case MODE_OPTNEG_PROTO:
			proto |= lowest_missing(offer.protocol,
			    ~MP_INTERNAL & ~MP_ALL_NR);
			break;
		case MODE_OPTNEG_VERSION:
			version = (uint32_t)opt.version;
			break;
		case MODE_RSPAMD_LIKE:
		case MODE_RSPAMD_REJECT:
			proto = MP_ALL_NR;
			break;
		default:
			break;
		}
		/* Asking for what breaks the rules is the first lie. */
		if (opt.mode == MODE_NR_REPLY ||
		    opt.mode == MODE_RSPAMD_LIKE ||
		    opt.mode == MODE_RSPAMD_REJECT ||
		    (opt.mode >= MODE_OPTNEG_ACTIONS &&
		    opt.mode <= MODE_OPTNEG_VERSION))
			note(s->index, "fired");
	}
	codec_optneg_fini(&offer);
	s->proto = proto;
	codec_put_optneg_reply(&good, version, actions, proto, NULL);
	if (s->bad && opt.stage->cmd == MC_OPTNEG && !s->fired &&
	    opt.mode != MODE_NONE && (opt.mode < MODE_OPTNEG_ACTIONS ||
	    opt.mode > MODE_OPTNEG_VERSION))
		misbehave(s, &good);
	else
		send_all(s->fd, &good);
	buf_fini(&good);
}

/*
 * rspamd_like - rspamd's milter mode: it negotiated no reply for every
 * stage, so only end of message is answered: a header and accept, or
 * a reject with --text
 */
static void
rspamd_like(struct session *s, char cmd)
{
	struct buf	 out = BUF_INIT;
	static const char hdr[] = "X-Spam\0no";

	if (cmd != MC_BODYEOB)
		return;
	if (opt.mode == MODE_RSPAMD_REJECT) {
		codec_put_packet(&out, MR_REPLYCODE, opt.text,
		    opt.textlen + 1);
		note(s->index, "rejected");
	} else {
		codec_put_packet(&out, MR_ADDHEADER, hdr, sizeof hdr);
		codec_put_packet(&out, MR_ACCEPT, NULL, 0);
		note(s->index, "accepted");
	}
	send_all(s->fd, &out);
	buf_fini(&out);
}

/* command - one command from the proxy */
static void
command(struct session *s, char cmd, const uint8_t *data, size_t len)
{
	const struct stage_info	*st;
	struct buf		 good = BUF_INIT;

	switch (cmd) {
	case MC_OPTNEG:
		optneg(s, data, len);
		return;
	case MC_QUIT:
		_exit(0);
	case MC_QUIT_NC:
		s->nqnc++;
		if (opt.mode == MODE_QNC_CLOSE) {
			note(s->index, "closed on QUIT_NC:");
			_exit(0);
		}
		return;		/* no reply */
	case MC_MACRO:
	case MC_ABORT:
		return;		/* no reply */
	default:
		break;
	}
	if (opt.mode == MODE_QNC_STALE && s->nqnc == 2) {
		note(s->index, "closed after the second QUIT_NC:");
		_exit(0);
	}
	if (s->bad && (opt.mode == MODE_RSPAMD_LIKE ||
	    opt.mode == MODE_RSPAMD_REJECT)) {
		rspamd_like(s, cmd);
		return;
	}
	for (st = stages; st->name != NULL; st++)
		if (st->cmd == cmd)
			break;
	codec_put_packet(&good, MR_CONTINUE, NULL, 0);
	if (s->bad && st == opt.stage && opt.mode != MODE_NONE &&
	    opt.mode != MODE_QNC_CLOSE && opt.mode != MODE_QNC_STALE &&
	    (!s->fired || opt.mode == MODE_NR_REPLY))
		misbehave(s, &good);
	else if (st->name == NULL || (s->proto & st->nr) == 0)
		send_all(s->fd, &good);
	buf_fini(&good);
}

/* session - serve one connection until EOF or QUIT */
static _Noreturn void
session(int fd)
{
	struct session	 s = { .fd = fd };
	struct buf	 in = BUF_INIT;
	const uint8_t	*data;
	size_t		 len, used;
	ssize_t		 n;
	char		 cmd;
	int		 rc;

	for (;;) {
		n = recv(fd, buf_reserve(&in, READ_CHUNK), READ_CHUNK, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			_exit(0);
		buf_commit(&in, (size_t)n);
		while ((rc = codec_frame(buf_head(&in), buf_avail(&in), MAX_IN,
		    &cmd, &data, &len, &used)) == 0) {
			command(&s, cmd, data, len);
			buf_consume(&in, used);
		}
		if (rc != -EAGAIN)
			_exit(1);
	}
}

/* on_term - end the listener and every connection process */
static void
on_term(int sig)
{
	(void)sig;
	if (getpid() != listener_pid)
		_exit(0);
	signal(SIGTERM, SIG_IGN);
	kill(0, SIGTERM);
	unlink(opt.path);
	_exit(0);
}

static int
listen_on(const char *path)
{
	struct sockaddr_un	 sun;
	int			 fd;

	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, strlen(path) + 1);
	unlink(path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1 ||
	    bind(fd, (struct sockaddr *)&sun, sizeof sun) == -1 ||
	    listen(fd, 128) == -1) {
		fprintf(stderr, "badmilter: %s: %s\n", path, strerror(errno));
		exit(EX_OSERR);
	}
	return fd;
}

int
main(int argc, char **argv)
{
	struct sigaction	 sa;
	unsigned		 children = 0;
	pid_t			 pid;
	int			 lfd, fd;

	parse_args(argc, argv);
	/* Lead a process group, so that SIGTERM can take the connection
	 * processes along (already true under the test harness). */
	(void)setpgid(0, 0);
	listener_pid = getpid();
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	session_count = mmap(NULL, sizeof *session_count,
	    PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (session_count == MAP_FAILED) {
		fprintf(stderr, "badmilter: mmap: %s\n", strerror(errno));
		return EX_OSERR;
	}
	atomic_init(session_count, 0);
	lfd = listen_on(opt.path);
	for (;;) {
		while (children > 0 && waitpid(-1, NULL, WNOHANG) > 0)
			children--;
		if (children >= MAX_CHILDREN) {
			if (waitpid(-1, NULL, 0) > 0)
				children--;
			continue;
		}
		if ((fd = accept(lfd, NULL, NULL)) == -1) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			fprintf(stderr, "badmilter: accept: %s\n",
			    strerror(errno));
			on_term(SIGTERM);
		}
		if ((pid = fork()) == -1) {
			close(fd);
			continue;
		}
		if (pid == 0) {
			close(lfd);
			signal(SIGTERM, SIG_DFL);
			signal(SIGINT, SIG_DFL);
			alarm(SESSION_LIFETIME);
			session(fd);
		}
		children++;
		close(fd);
	}
}
