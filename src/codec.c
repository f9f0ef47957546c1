/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * codec - milter packet encoding and decoding, both directions.
 *
 * Turns commands into wire packets and wire packets into replies,
 * checking every byte a filter sends against shared/PROTOCOL.md
 * (sections 1, 2.4, 4.3 and 5.1).  It does no I/O, keeps no state,
 * takes no locks and logs nothing: a malformed packet is reported as
 * -EPROTO or -EMSGSIZE and the caller, which knows the upstream's name
 * and the stage, logs it and poisons the socket.  Integers are put
 * together and taken apart byte by byte, so host byte order never
 * matters.
 *
 * Design: the layout of every reply code lives in one table indexed by
 * the code byte (reply_layouts[]); codec_decode_reply() checks a packet
 * against its row before it allocates anything, so a refused packet
 * leaves nothing to free.
 *
 * Concurrency: none needed; the only globals are const tables.
 * Ownership: encoders append to the caller's buffer; decoded strings are
 * copies the caller releases with the matching *_fini().
 */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "codec.h"
#include "proto.h"
#include "xalloc.h"

#define U32_LEN		4	/* wire size of a u32 */
#define XCODE_MAX	9	/* "5.123.123" */

/* How the data of one reply code is laid out (PROTOCOL.md 1.3). */
enum layout {
	LAYOUT_REFUSED = 0,	/* unknown, or never valid from a filter */
	LAYOUT_EMPTY,		/* verdict or progress, no data */
	LAYOUT_REPLYCODE,	/* 'y': SMTP reply text + NUL */
	LAYOUT_STRS,		/* [u32 index] then NUL-terminated strings */
	LAYOUT_RAW		/* bytes, length from the packet */
};

struct reply_layout {
	enum layout	 layout;
	enum reply_kind	 kind;
	enum verdict	 verdict;	/* LAYOUT_EMPTY, REPLY_VERDICT */
	enum mod_kind	 mod;		/* REPLY_MOD */
	bool		 index;		/* a u32 precedes the strings */
	unsigned char	 minstrs;
	unsigned char	 maxstrs;
	bool		 nonempty;	/* the first string must not be "" */
};

/*
 * Indexed by the reply code byte.  'O' (only an answer to OPTNEG), 'l'
 * (never on the wire), 'f' and '4' (not handled by Postfix or Sendmail)
 * stay LAYOUT_REFUSED on purpose: PROTOCOL.md 1.3.
 */
static const struct reply_layout reply_layouts[UCHAR_MAX + 1] = {
	[MR_CONTINUE]	= { .layout = LAYOUT_EMPTY, .kind = REPLY_VERDICT,
			    .verdict = VERDICT_CONTINUE },
	[MR_ACCEPT]	= { .layout = LAYOUT_EMPTY, .kind = REPLY_VERDICT,
			    .verdict = VERDICT_ACCEPT },
	[MR_REJECT]	= { .layout = LAYOUT_EMPTY, .kind = REPLY_VERDICT,
			    .verdict = VERDICT_REJECT },
	[MR_TEMPFAIL]	= { .layout = LAYOUT_EMPTY, .kind = REPLY_VERDICT,
			    .verdict = VERDICT_TEMPFAIL },
	[MR_DISCARD]	= { .layout = LAYOUT_EMPTY, .kind = REPLY_VERDICT,
			    .verdict = VERDICT_DISCARD },
	[MR_SKIP]	= { .layout = LAYOUT_EMPTY, .kind = REPLY_VERDICT,
			    .verdict = VERDICT_SKIP },
	[MR_PROGRESS]	= { .layout = LAYOUT_EMPTY, .kind = REPLY_PROGRESS },
	[MR_REPLYCODE]	= { .layout = LAYOUT_REPLYCODE,
			    .kind = REPLY_VERDICT },
	[MR_ADDHEADER]	= { .layout = LAYOUT_STRS, .kind = REPLY_MOD,
			    .mod = MOD_ADDHEADER, .minstrs = 2, .maxstrs = 2,
			    .nonempty = true },
	[MR_INSHEADER]	= { .layout = LAYOUT_STRS, .kind = REPLY_MOD,
			    .mod = MOD_INSHEADER, .index = true,
			    .minstrs = 2, .maxstrs = 2, .nonempty = true },
	[MR_CHGHEADER]	= { .layout = LAYOUT_STRS, .kind = REPLY_MOD,
			    .mod = MOD_CHGHEADER, .index = true,
			    .minstrs = 2, .maxstrs = 2, .nonempty = true },
	[MR_ADDRCPT]	= { .layout = LAYOUT_STRS, .kind = REPLY_MOD,
			    .mod = MOD_ADDRCPT, .minstrs = 1, .maxstrs = 1 },
	[MR_ADDRCPT_PAR] = { .layout = LAYOUT_STRS, .kind = REPLY_MOD,
			    .mod = MOD_ADDRCPT_PAR, .minstrs = 1,
			    .maxstrs = 2 },
	[MR_DELRCPT]	= { .layout = LAYOUT_STRS, .kind = REPLY_MOD,
			    .mod = MOD_DELRCPT, .minstrs = 1, .maxstrs = 1 },
	[MR_CHGFROM]	= { .layout = LAYOUT_STRS, .kind = REPLY_MOD,
			    .mod = MOD_CHGFROM, .minstrs = 1, .maxstrs = 2 },
	[MR_QUARANTINE]	= { .layout = LAYOUT_STRS, .kind = REPLY_MOD,
			    .mod = MOD_QUARANTINE, .minstrs = 1,
			    .maxstrs = 1, .nonempty = true },
	[MR_REPLBODY]	= { .layout = LAYOUT_RAW, .kind = REPLY_MOD,
			    .mod = MOD_REPLBODY },
};

static const char *const mod_kind_names[MOD_KIND_COUNT] = {
	[MOD_ADDHEADER]		= "addheader",
	[MOD_INSHEADER]		= "insheader",
	[MOD_CHGHEADER]		= "chgheader",
	[MOD_ADDRCPT]		= "addrcpt",
	[MOD_ADDRCPT_PAR]	= "addrcpt_par",
	[MOD_DELRCPT]		= "delrcpt",
	[MOD_CHGFROM]		= "chgfrom",
	[MOD_REPLBODY]		= "replbody",
	[MOD_QUARANTINE]	= "quarantine",
};

/* The action each request needs (PROTOCOL.md 5.1, "flag" column). */
static const uint32_t mod_actions[MOD_KIND_COUNT] = {
	[MOD_ADDHEADER]		= MA_ADDHDRS,
	[MOD_INSHEADER]		= MA_ADDHDRS,
	[MOD_CHGHEADER]		= MA_CHGHDRS,
	[MOD_ADDRCPT]		= MA_ADDRCPT,
	[MOD_ADDRCPT_PAR]	= MA_ADDRCPT_PAR,
	[MOD_DELRCPT]		= MA_DELRCPT,
	[MOD_CHGFROM]		= MA_CHGFROM,
	[MOD_REPLBODY]		= MA_CHGBODY,
	[MOD_QUARANTINE]	= MA_QUARANTINE,
};

static uint32_t
get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	    (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void
put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static bool
is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/*
 * pkt_begin - append a length placeholder and the code; returns where the
 * packet starts, counted from the buffer's head
 *
 * An offset from b->off, not from b->data, because buf_reserve() may
 * slide unconsumed bytes down while the packet grows.
 */
static size_t
pkt_begin(struct buf *b, char cmd)
{
	uint8_t	 hdr[CODEC_HDR_LEN] = { 0, 0, 0, 0, (uint8_t)cmd };
	size_t	 at = buf_avail(b);

	buf_add(b, hdr, sizeof hdr);
	return at;
}

/* pkt_end - fill in the length of the packet pkt_begin() started */
static void
pkt_end(struct buf *b, size_t at)
{
	size_t	 n = buf_avail(b) - at - U32_LEN;	/* code + data */

	assert(n >= 1 && n <= UINT32_MAX);
	put_u32(b->data + b->off + at, (uint32_t)n);
}

int
codec_frame(const uint8_t *p, size_t avail, size_t max_data, char *cmd,
    const uint8_t **data, size_t *len, size_t *used)
{
	uint32_t	 plen;

	if (avail < U32_LEN)
		return -EAGAIN;
	plen = get_u32(p);
	/* Judge the length before waiting for the data: an oversized
	 * packet is refused as soon as its header is in. */
	if (plen == 0 || (size_t)plen - 1 > max_data) {
		*len = plen;
		return -EMSGSIZE;
	}
	if (avail - U32_LEN < plen)
		return -EAGAIN;
	*cmd = (char)p[U32_LEN];
	*data = p + CODEC_HDR_LEN;
	*len = (size_t)plen - 1;
	*used = U32_LEN + (size_t)plen;
	return 0;
}

void
codec_put_packet(struct buf *b, char cmd, const void *data, size_t len)
{
	size_t	 at;

	at = pkt_begin(b, cmd);
	buf_add(b, data, len);
	pkt_end(b, at);
}

void
codec_put_optneg(struct buf *b, uint32_t version, uint32_t actions,
    uint32_t protocol)
{
	size_t	 at;

	at = pkt_begin(b, MC_OPTNEG);
	buf_add_u32(b, version);
	buf_add_u32(b, actions);
	buf_add_u32(b, protocol);
	pkt_end(b, at);
}

void
codec_put_macros(struct buf *b, char cmd, const char *const *pairs,
    size_t npairs)
{
	size_t	 at, i;

	at = pkt_begin(b, MC_MACRO);
	buf_add_u8(b, (uint8_t)cmd);
	for (i = 0; i < npairs; i++) {
		/* A macro without a value is left out, as the MTAs do. */
		if (pairs[2 * i + 1] == NULL)
			continue;
		buf_add_str(b, pairs[2 * i]);
		buf_add_str(b, pairs[2 * i + 1]);
	}
	pkt_end(b, at);
}

void
codec_put_connect(struct buf *b, const char *hostname, char family,
    uint16_t port, const char *addr)
{
	size_t	 at;

	at = pkt_begin(b, MC_CONNECT);
	buf_add_str(b, hostname);
	buf_add_u8(b, (uint8_t)family);
	/* Family 'U' carries neither port nor address (PROTOCOL.md 1.2);
	 * libmilter then hands xxfi_connect a NULL hostaddr. */
	if (family != 'U') {
		assert(addr != NULL);
		buf_add_u8(b, (uint8_t)(port >> 8));
		buf_add_u8(b, (uint8_t)port);
		buf_add_str(b, addr);
	}
	pkt_end(b, at);
}

void
codec_put_argv(struct buf *b, char cmd, const char *const *argv, size_t argc)
{
	size_t	 at, i;

	at = pkt_begin(b, cmd);
	for (i = 0; i < argc; i++)
		buf_add_str(b, argv[i]);
	pkt_end(b, at);
}

void
codec_put_str(struct buf *b, char cmd, const char *s)
{
	size_t	 at;

	at = pkt_begin(b, cmd);
	buf_add_str(b, s);
	pkt_end(b, at);
}

void
codec_put_header(struct buf *b, const char *name, const char *value)
{
	size_t	 at;

	at = pkt_begin(b, MC_HEADER);
	buf_add_str(b, name);
	buf_add_str(b, value);
	pkt_end(b, at);
}

/* codec_put_body - BODY packets of at most PROTO_MAX_DATA bytes each */
void
codec_put_body(struct buf *b, const void *data, size_t len)
{
	const uint8_t	*p = data;
	size_t		 n;

	while (len > 0) {
		n = len < PROTO_MAX_DATA ? len : PROTO_MAX_DATA;
		codec_put_packet(b, MC_BODY, p, n);
		p += n;
		len -= n;
	}
}

/* codec_put_optneg_reply - the filter's 'O', symlists in stage order */
void
codec_put_optneg_reply(struct buf *b, uint32_t version, uint32_t actions,
    uint32_t protocol, const char *const symlists[MACRO_STAGE_COUNT])
{
	size_t	 at;
	int	 i;

	at = pkt_begin(b, MR_OPTNEG);
	buf_add_u32(b, version);
	buf_add_u32(b, actions);
	buf_add_u32(b, protocol);
	for (i = 0; symlists != NULL && i < MACRO_STAGE_COUNT; i++) {
		if (symlists[i] == NULL)
			continue;
		buf_add_u32(b, (uint32_t)i);
		buf_add_str(b, symlists[i]);
	}
	pkt_end(b, at);
}

/* codec_decode_optneg - the 12 fixed bytes, then (u32 stage, str) pairs */
int
codec_decode_optneg(const uint8_t *data, size_t len,
    struct codec_optneg *out)
{
	const uint8_t	*end = data + len, *nul;
	uint32_t	 stage;

	memset(out, 0, sizeof *out);
	if (len < 3 * U32_LEN)
		return -EPROTO;
	out->version = get_u32(data);
	out->actions = get_u32(data + U32_LEN);
	out->protocol = get_u32(data + 2 * U32_LEN);
	data += 3 * U32_LEN;
	while (data < end) {
		if ((size_t)(end - data) < U32_LEN)
			goto fail;
		stage = get_u32(data);
		data += U32_LEN;
		if (stage >= MACRO_STAGE_COUNT ||
		    out->symlists[stage] != NULL)
			goto fail;
		if ((nul = memchr(data, '\0', (size_t)(end - data))) == NULL)
			goto fail;
		out->symlists[stage] = xstrdup((const char *)data);
		data = nul + 1;
	}
	return 0;

fail:
	codec_optneg_fini(out);
	return -EPROTO;
}

void
codec_optneg_fini(struct codec_optneg *o)
{
	int	 i;

	if (o == NULL)
		return;
	for (i = 0; i < MACRO_STAGE_COUNT; i++) {
		free(o->symlists[i]);
		o->symlists[i] = NULL;
	}
}

const char *
codec_mod_kind_name(enum mod_kind k)
{
	return (unsigned)k < MOD_KIND_COUNT ? mod_kind_names[k] : "?";
}

uint32_t
codec_mod_action(enum mod_kind k)
{
	return (unsigned)k < MOD_KIND_COUNT ? mod_actions[k] : 0;
}

void
codec_mod_fini(struct mod *m)
{
	if (m == NULL)
		return;
	free(m->name);
	m->name = NULL;
	free(m->value);
	m->value = NULL;
	free(m->body);
	m->body = NULL;
	m->bodylen = 0;
}

void
codec_mod_copy(struct mod *dst, const struct mod *src)
{
	dst->kind = src->kind;
	dst->index = src->index;
	dst->name = src->name != NULL ? xstrdup(src->name) : NULL;
	dst->value = src->value != NULL ? xstrdup(src->value) : NULL;
	dst->bodylen = src->body != NULL ? src->bodylen : 0;
	dst->body = dst->bodylen > 0 ? xmemdup(src->body, dst->bodylen) :
	    NULL;
}

/*
 * xcode_len - length of the enhanced status code that starts p[0..n), or
 * 0 when there is none
 *
 * RFC 3463 as libmilter checks it: [245].d{1,3}.d{1,3}, then a space or
 * the end of the line.
 */
static size_t
xcode_len(const char *p, size_t n)
{
	size_t	 i, d;
	int	 part;

	if (n < 5 || (p[0] != '2' && p[0] != '4' && p[0] != '5') ||
	    p[1] != '.')
		return 0;
	i = 2;
	for (part = 0; part < 2; part++) {
		for (d = 0; d < 3 && i < n && is_digit(p[i]); d++)
			i++;
		if (d == 0)
			return 0;
		if (part == 0) {
			if (i >= n || p[i] != '.')
				return 0;
			i++;
		}
	}
	return i == n || p[i] == ' ' ? i : 0;
}

/* find_crlf - offset of the first CRLF in p[0..n), or n */
static size_t
find_crlf(const char *p, size_t n)
{
	size_t	 i;

	for (i = 0; i + 1 < n; i++)
		if (p[i] == '\r' && p[i + 1] == '\n')
			return i;
	return n;
}

/*
 * check_line - one line of a 'y' text, without its CRLF
 *
 * code is the first line's code, or NULL for the first line itself.  A
 * bare "ddd" passes only as a one-line reply: inside a multi-line reply
 * every line needs its '-' or ' ' (codec.h), and neither smfi_setreply()
 * nor smfi_setmlreply() ever produces a bare code.
 */
static int
check_line(const char *p, size_t n, const char *code, bool last,
    bool single)
{
	size_t	 i;

	if (n < 3 || (p[0] != '4' && p[0] != '5') || !is_digit(p[1]) ||
	    !is_digit(p[2]))
		return -EPROTO;
	if (code != NULL && memcmp(p, code, 3) != 0)
		return -EPROTO;
	if (n == 3)
		return single ? 0 : -EPROTO;
	if (p[3] != (last ? ' ' : '-'))
		return -EPROTO;
	for (i = 4; i < n; i++)
		if (p[i] == '\r' || p[i] == '\n')
			return -EPROTO;
	/* Postfix refuses an enhanced code of another class than the
	 * reply (PROTOCOL.md 4.3); libmilter does not check it. */
	if (xcode_len(p + 4, n - 4) > 0 && p[4] != p[0])
		return -EPROTO;
	return 0;
}

/* check_replytext - validate a whole 'y' text of n bytes (PROTOCOL.md 4.3) */
static int
check_replytext(const char *text, size_t n)
{
	const char	*p = text, *end = text + n;
	size_t		 ll, count = 0;
	bool		 last;
	int		 rc;

	do {
		ll = find_crlf(p, (size_t)(end - p));
		last = p + ll == end;
		rc = check_line(p, ll, count == 0 ? NULL : text, last,
		    last && count == 0);
		if (rc != 0)
			return rc;
		count++;
		p += last ? ll : ll + 2;
	} while (!last);
	return 0;
}

/*
 * decode_strs_layout - check a LAYOUT_STRS packet and copy its fields
 *
 * Everything is checked before the first copy, so a refusal leaves
 * out->mod empty.
 */
static int
decode_strs_layout(const struct reply_layout *rl, const uint8_t *data,
    size_t len, struct codec_reply *out)
{
	const char	*s[2] = { NULL, NULL };
	const uint8_t	*end = data + len, *nul;
	uint32_t	 index = 0;
	size_t		 n = 0;

	if (rl->index) {
		if (len < U32_LEN)
			return -EPROTO;
		index = get_u32(data);
		data += U32_LEN;
	}
	while (data < end) {
		/* Nothing may follow the last field the code allows. */
		if (n == rl->maxstrs)
			return -EPROTO;
		if ((nul = memchr(data, '\0', (size_t)(end - data))) == NULL)
			return -EPROTO;
		s[n++] = (const char *)data;
		data = nul + 1;
	}
	if (n < rl->minstrs || (rl->nonempty && s[0][0] == '\0'))
		return -EPROTO;
	out->mod.kind = rl->mod;
	out->mod.index = index;
	out->mod.name = xstrdup(s[0]);
	out->mod.value = n > 1 ? xstrdup(s[1]) : NULL;
	return 0;
}

/* codec_decode_reply - validate one reply packet against its layout */
int
codec_decode_reply(char cmd, const uint8_t *data, size_t len,
    struct codec_reply *out)
{
	const struct reply_layout	*rl;

	memset(out, 0, sizeof *out);
	rl = &reply_layouts[(unsigned char)cmd];
	switch (rl->layout) {
	case LAYOUT_EMPTY:
		/* Postfix refuses data on these (milter8.c:milter8_event). */
		if (len != 0)
			return -EPROTO;
		out->verdict = rl->verdict;
		break;
	case LAYOUT_REPLYCODE:
		/* The text, one NUL at the very end, no NUL before it. */
		if (len == 0 || data[len - 1] != '\0' ||
		    memchr(data, '\0', len - 1) != NULL)
			return -EPROTO;
		if (check_replytext((const char *)data, len - 1) != 0)
			return -EPROTO;
		out->verdict = data[0] == '4' ? VERDICT_TEMPFAIL :
		    VERDICT_REJECT;
		out->text = xstrdup((const char *)data);
		break;
	case LAYOUT_STRS:
		if (decode_strs_layout(rl, data, len, out) != 0)
			return -EPROTO;
		break;
	case LAYOUT_RAW:
		/* An empty chunk is harmless and libmilter can send one
		 * (smfi_replacebody with bodylen 0). */
		out->mod.kind = rl->mod;
		out->mod.bodylen = len;
		out->mod.body = len > 0 ? xmemdup(data, len) : NULL;
		break;
	case LAYOUT_REFUSED:
	default:
		return -EPROTO;
	}
	out->kind = rl->kind;
	return 0;
}

bool
codec_is_reply_code(char cmd)
{
	return reply_layouts[(unsigned char)cmd].layout != LAYOUT_REFUSED;
}

void
codec_reply_fini(struct codec_reply *r)
{
	if (r == NULL)
		return;
	free(r->text);
	r->text = NULL;
	codec_mod_fini(&r->mod);
}

/*
 * put_escaped - copy t[0..tl) to w as a reply format of at most maxlen
 * bytes, NUL-terminated; returns the length written without the NUL,
 * and in *used how many bytes of t that took
 *
 * Sendmail uses the reply text as a format string and Postfix turns
 * "%%" into "%" (PROTOCOL.md 4.3): a "%%" the filter sent stays, and a
 * lone '%' is doubled so that it reaches the SMTP client as itself and
 * never acts as a conversion.  A cut never falls inside a "%%".
 */
static size_t
put_escaped(char *w, const char *t, size_t tl, size_t maxlen, size_t *used)
{
	size_t	 i = 0, o = 0;

	while (i < tl) {
		if (t[i] != '%') {
			if (o + 1 > maxlen)
				break;
			w[o++] = t[i++];
			continue;
		}
		if (o + 2 > maxlen)
			break;
		w[o++] = '%';
		w[o++] = '%';
		i += i + 1 < tl && t[i + 1] == '%' ? 2 : 1;
	}
	w[o] = '\0';
	*used = i;
	return o;
}

/*
 * codec_fit_replytext - rcode, xcode and line texts of a valid 'y' text,
 * within the limits
 *
 * Each line loses its "ddd-"/"ddd " prefix and, when it repeats the
 * first line's enhanced code, that code and one space after it, which
 * is the shape smfi_setmlreply() wants back; a lone '%' is doubled.
 */
int
codec_fit_replytext(const char *text, char rcode[4], char xcode[16],
    char **lines, int maxlines, size_t maxlen, char **storage,
    struct codec_linecut *cuts, size_t *nlines)
{
	const char	*p, *end, *t;
	char		*w;
	size_t		 n, ll, tl, xl, used, total = 0;
	int		 count = 0;
	bool		 last;

	*storage = NULL;
	n = strlen(text);
	if (check_replytext(text, n) != 0)
		return -EPROTO;
	memcpy(rcode, text, 3);
	rcode[3] = '\0';
	ll = find_crlf(text, n);
	xl = ll > 4 ? xcode_len(text + 4, ll - 4) : 0;
	assert(xl <= XCODE_MAX);
	memcpy(xcode, text + 4, xl);
	xcode[xl] = '\0';

	/* Every line text is shorter than its line, even with each '%'
	 * doubled: 2n + 1 bytes hold them all with their NULs. */
	w = *storage = xmalloc(2 * n + 1);
	for (p = text, end = text + n, last = false; !last;
	    p += last ? ll : ll + 2) {
		ll = find_crlf(p, (size_t)(end - p));
		last = p + ll == end;
		total++;
		if (count >= maxlines)
			continue;
		t = ll > 3 ? p + 4 : p + ll;
		tl = ll > 3 ? ll - 4 : 0;
		if (xl > 0 && tl >= xl && memcmp(t, xcode, xl) == 0 &&
		    (tl == xl || t[xl] == ' ')) {
			t += xl;
			tl -= xl;
			if (tl > 0) {
				t++;
				tl--;
			}
		}
		lines[count] = w;
		w += put_escaped(w, t, tl, maxlen, &used) + 1;
		if (cuts != NULL) {
			cuts[count].from = tl;
			cuts[count].to = used;
		}
		count++;
	}
	if (nlines != NULL)
		*nlines = total;
	return count;
}

int
codec_split_replytext(const char *text, char rcode[4], char xcode[16],
    char **lines, int maxlines, char **storage)
{
	return codec_fit_replytext(text, rcode, xcode, lines, maxlines,
	    SIZE_MAX, storage, NULL, NULL);
}

/* codec_decode_strs - copy the NUL-terminated strings filling data */
int
codec_decode_strs(const uint8_t *data, size_t len, char ***strs, size_t *n)
{
	const uint8_t	*p, *end = data + len, *nul;
	size_t		 count = 0, i;

	*strs = NULL;
	*n = 0;
	if (len > 0 && data[len - 1] != '\0')
		return -EPROTO;
	for (p = data; p < end; p++)
		if (*p == '\0')
			count++;
	/* One spare slot: the list is also NULL-terminated. */
	*strs = xreallocarray(NULL, count + 1, sizeof **strs);
	for (i = 0, p = data; i < count; i++) {
		nul = memchr(p, '\0', (size_t)(end - p));
		(*strs)[i] = xstrdup((const char *)p);
		p = nul + 1;
	}
	(*strs)[count] = NULL;
	*n = count;
	return 0;
}
