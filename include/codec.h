/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * codec - milter packet encoding and decoding, both directions.
 *
 * Pure: no I/O, no locks, no logging, no globals.  Encoders append whole
 * packets (4-byte length, code, data) to a struct buf; decoders parse one
 * packet's data, validate it strictly and return -EPROTO (malformed) or
 * -EMSGSIZE (length) so that the caller can log with context and poison
 * the peer.  Both the upstream client (MTA side) and the tests' fakes use
 * it; htonl/ntohl-style byte work appears nowhere else.
 *
 * Concurrency: none needed (no shared state).
 * Ownership: decoded strings are copies; caller owns them and releases
 * them with the matching *_fini().
 */
#ifndef CODEC_H
#define CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "proto.h"

#define CODEC_HDR_LEN	5	/* u32 length + command byte */

/*
 * Framing.  Looks for one complete packet at p[0..avail).  Returns 0 and
 * sets *cmd, *data (borrowed, points into p), *len (data bytes) and
 * *used (bytes the packet takes); -EAGAIN when more bytes are needed;
 * -EMSGSIZE when the length field is zero or the data would exceed
 * max_data, and then *len is the length field as read, for the log.
 */
int	codec_frame(const uint8_t *p, size_t avail, size_t max_data,
	    char *cmd, const uint8_t **data, size_t *len, size_t *used);

/* Encoders, MTA to filter.  Each appends exactly one packet. */
void	codec_put_packet(struct buf *, char cmd, const void *data, size_t len);
void	codec_put_optneg(struct buf *, uint32_t version, uint32_t actions,
	    uint32_t protocol);
/*
 * A macro packet for command cmd: pairs[0..2n) alternate name, value.
 * A pair whose value is NULL is left out.
 */
void	codec_put_macros(struct buf *, char cmd, const char *const *pairs,
	    size_t npairs);
/*
 * CONNECT.  family is 'U' (then port and addr are ignored), 'L', '4' or
 * '6'; port is in host order.
 */
void	codec_put_connect(struct buf *, const char *hostname, char family,
	    uint16_t port, const char *addr);
/* MAIL or RCPT: argv[0] the address, argv[1..] ESMTP parameters. */
void	codec_put_argv(struct buf *, char cmd, const char *const *argv,
	    size_t argc);
/* HELO or UNKNOWN: one NUL-terminated string. */
void	codec_put_str(struct buf *, char cmd, const char *s);
void	codec_put_header(struct buf *, const char *name, const char *value);
/*
 * BODY: splits into packets of at most PROTO_MAX_DATA bytes; len 0
 * appends nothing.
 */
void	codec_put_body(struct buf *, const void *data, size_t len);

/* Encoders, filter to MTA (replies); used by tests and fakes. */
void	codec_put_optneg_reply(struct buf *, uint32_t version,
	    uint32_t actions, uint32_t protocol,
	    const char *const symlists[MACRO_STAGE_COUNT]);

/*
 * OPTNEG reply.  symlists[i] is the space-separated list the filter
 * asked for at macro stage i, or NULL.
 */
struct codec_optneg {
	uint32_t	 version;
	uint32_t	 actions;
	uint32_t	 protocol;
	char		*symlists[MACRO_STAGE_COUNT];
};

/*
 * Decodes an 'O' reply's data.  Refuses fewer than 12 bytes, an unknown
 * macro stage, a list without its NUL, and a stage listed twice.  Does
 * not judge the values (the caller knows what it offered).
 */
int	codec_decode_optneg(const uint8_t *data, size_t len,
	    struct codec_optneg *out);
void	codec_optneg_fini(struct codec_optneg *);

/* End-of-message modification requests. */
enum mod_kind {
	MOD_ADDHEADER = 0,	/* name, value */
	MOD_INSHEADER,		/* index, name, value */
	MOD_CHGHEADER,		/* index, name, value ("" = delete) */
	MOD_ADDRCPT,		/* name = recipient */
	MOD_ADDRCPT_PAR,	/* name = recipient, value = args or NULL */
	MOD_DELRCPT,		/* name = recipient */
	MOD_CHGFROM,		/* name = sender, value = args or NULL */
	MOD_REPLBODY,		/* body, bodylen */
	MOD_QUARANTINE,		/* name = reason */
	MOD_KIND_COUNT
};

struct mod {
	enum mod_kind	 kind;
	uint32_t	 index;
	char		*name;
	char		*value;
	uint8_t		*body;
	size_t		 bodylen;
};

const char	*codec_mod_kind_name(enum mod_kind);
/* The SMFIF action bit a modification needs (MA_*). */
uint32_t	 codec_mod_action(enum mod_kind);
void		 codec_mod_fini(struct mod *);
/* Deep copy of src into *dst; caller owns, free with codec_mod_fini(). */
void		 codec_mod_copy(struct mod *dst, const struct mod *src);

/* A reply packet, decoded. */
enum reply_kind {
	REPLY_VERDICT = 0,	/* verdict (and text for 'y') */
	REPLY_PROGRESS,
	REPLY_MOD,		/* mod */
	REPLY_KIND_COUNT
};

struct codec_reply {
	enum reply_kind	 kind;
	enum verdict	 verdict;	/* REPLY_VERDICT */
	char		*text;		/* 'y': "550 5.7.1 text", else NULL */
	struct mod	 mod;		/* REPLY_MOD */
};

/*
 * Decodes one reply packet (code and data as codec_frame gave them).
 * 'c','a','r','t','d','s','p' must carry no data; 'y' must be a valid
 * SMTP reply: every line "ddd-" or "ddd " (the last "ddd "), one code for
 * all lines, 4xx or 5xx, lines joined by CRLF, no other CR, LF or NUL,
 * an enhanced code (if any) of the same class; it becomes REJECT (5xx)
 * or TEMPFAIL (4xx).  Modification packets need their NULs and, for
 * headers, a non-empty name; 'q' a non-empty reason.  Unknown codes,
 * 'O', 'l', 'f' and '4' are -EPROTO.
 */
int	codec_decode_reply(char cmd, const uint8_t *data, size_t len,
	    struct codec_reply *out);
/* Is cmd a code a filter may answer a command with (not 'O')? */
bool	codec_is_reply_code(char cmd);
void	codec_reply_fini(struct codec_reply *);

/*
 * Splits a valid 'y' text into its parts for smfi_setmlreply: rcode
 * ("550"), xcode ("5.7.1", or "" when absent) and the lines' texts with
 * the "ddd-"/"ddd " prefix and the repeated xcode removed.  The texts
 * are formats, as both MTAs read them: a "%%" stays and a lone '%' is
 * doubled, so no text acts as a conversion.  Returns the number of
 * lines (at most maxlines; extra lines are dropped) or -EPROTO.
 * Strings point into *storage, which the caller frees.
 */
int	codec_split_replytext(const char *text, char rcode[4],
	    char xcode[16], char **lines, int maxlines, char **storage);

/* One line of a 'y' text, as codec_fit_replytext() passed it on. */
struct codec_linecut {
	size_t	 from;	/* the line's text as the filter sent it, bytes */
	size_t	 to;	/* how many of those were kept */
};

/*
 * codec_split_replytext() within limits such as libmilter's (32 lines of
 * 980 bytes, MAXREPLIES and MAXREPLYLEN): at most maxlines lines, each
 * text (as escaped) at most maxlen bytes, cut short at the end and never
 * inside a "%%".  When cuts is not NULL, cuts[i] says how much of line i
 * was kept (maxlines entries); when nlines is not NULL, it gets the
 * number of lines in the text, those left out included.
 */
int	codec_fit_replytext(const char *text, char rcode[4],
	    char xcode[16], char **lines, int maxlines, size_t maxlen,
	    char **storage, struct codec_linecut *cuts, size_t *nlines);

/* Decoders, filter side (tests and fakes): one command's data. */
int	codec_decode_strs(const uint8_t *data, size_t len, char ***strs,
	    size_t *n);	/* NUL-terminated list; caller frees each and *strs */

#endif /* CODEC_H */
