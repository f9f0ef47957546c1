/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * proto - milter wire constants and the enums every module shares.
 *
 * Our own copy of the protocol numbers (Postfix milter8.c keeps its own
 * too), under names of our own: front.c includes libmilter's mfdef.h,
 * whose SMFI* macros would clash with a second definition.  Values are
 * those of protocol version 6 (shared/PROTOCOL.md, sections 1 and 2).
 *
 * Concurrency: constants only.  Ownership: nothing allocated.
 */
#ifndef PROTO_H
#define PROTO_H

#include <stdint.h>

#define PROTO_VERSION		6u
#define PROTO_MAX_DATA		65535u	/* data bytes in one packet */

/* Commands, MTA to filter. */
#define MC_ABORT	'A'
#define MC_BODY		'B'
#define MC_CONNECT	'C'
#define MC_MACRO	'D'
#define MC_BODYEOB	'E'
#define MC_HELO		'H'
#define MC_QUIT_NC	'K'
#define MC_HEADER	'L'
#define MC_MAIL		'M'
#define MC_EOH		'N'
#define MC_OPTNEG	'O'
#define MC_QUIT		'Q'
#define MC_RCPT		'R'
#define MC_DATA		'T'
#define MC_UNKNOWN	'U'

/* Replies, filter to MTA. */
#define MR_ADDRCPT	'+'
#define MR_DELRCPT	'-'
#define MR_ADDRCPT_PAR	'2'
#define MR_SHUTDOWN	'4'
#define MR_ACCEPT	'a'
#define MR_REPLBODY	'b'
#define MR_CONTINUE	'c'
#define MR_DISCARD	'd'
#define MR_CHGFROM	'e'
#define MR_CONN_FAIL	'f'
#define MR_ADDHEADER	'h'
#define MR_INSHEADER	'i'
#define MR_SETSYMLIST	'l'
#define MR_CHGHEADER	'm'
#define MR_OPTNEG	'O'
#define MR_PROGRESS	'p'
#define MR_QUARANTINE	'q'
#define MR_REJECT	'r'
#define MR_SKIP		's'
#define MR_TEMPFAIL	't'
#define MR_REPLYCODE	'y'

/* Action bits (SMFIF_*). */
#define MA_ADDHDRS	0x001u
#define MA_CHGBODY	0x002u
#define MA_ADDRCPT	0x004u
#define MA_DELRCPT	0x008u
#define MA_CHGHDRS	0x010u
#define MA_QUARANTINE	0x020u
#define MA_CHGFROM	0x040u
#define MA_ADDRCPT_PAR	0x080u
#define MA_SETSYMLIST	0x100u
#define MA_ALL		0x1ffu

/* Protocol bits (SMFIP_*). */
#define MP_NOCONNECT	0x00000001u
#define MP_NOHELO	0x00000002u
#define MP_NOMAIL	0x00000004u
#define MP_NORCPT	0x00000008u
#define MP_NOBODY	0x00000010u
#define MP_NOHDRS	0x00000020u
#define MP_NOEOH	0x00000040u
#define MP_NR_HDR	0x00000080u
#define MP_NOUNKNOWN	0x00000100u
#define MP_NODATA	0x00000200u
#define MP_SKIP		0x00000400u
#define MP_RCPT_REJ	0x00000800u
#define MP_NR_CONN	0x00001000u
#define MP_NR_HELO	0x00002000u
#define MP_NR_MAIL	0x00004000u
#define MP_NR_RCPT	0x00008000u
#define MP_NR_DATA	0x00010000u
#define MP_NR_UNKN	0x00020000u
#define MP_NR_EOH	0x00040000u
#define MP_NR_BODY	0x00080000u
#define MP_HDR_LEADSPC	0x00100000u
#define MP_ALL_V6	0x001fffffu
#define MP_INTERNAL	0x70000000u	/* MDS bits; libmilter strips them */
#define MP_ALL_NO	(MP_NOCONNECT | MP_NOHELO | MP_NOMAIL | MP_NORCPT | \
			 MP_NOBODY | MP_NOHDRS | MP_NOEOH | MP_NOUNKNOWN | \
			 MP_NODATA)
#define MP_ALL_NR	(MP_NR_HDR | MP_NR_CONN | MP_NR_HELO | MP_NR_MAIL | \
			 MP_NR_RCPT | MP_NR_DATA | MP_NR_UNKN | MP_NR_EOH | \
			 MP_NR_BODY)

/*
 * The protocol stages, in the order an SMTP session meets them.  QUIT
 * stands for the end of the MTA connection (xxfi_close).
 */
enum stage {
	STAGE_CONNECT = 0,
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
	STAGE_QUIT,
	STAGE_COUNT
};

/*
 * Macro stages of the OPTNEG symbol lists (SMFIM_*): note EOM = 5 comes
 * before EOH = 6 on the wire.
 */
enum macro_stage {
	MACRO_CONNECT = 0,
	MACRO_HELO,
	MACRO_ENVFROM,
	MACRO_ENVRCPT,
	MACRO_DATA,
	MACRO_EOM,
	MACRO_EOH,
	MACRO_STAGE_COUNT
};

/*
 * A filter's answer to one command.  The order is not the merge rank
 * (merge.c owns that); VERDICT_NONE means "no verdict" (a no-reply
 * step, or an upstream that was not asked).
 */
enum verdict {
	VERDICT_NONE = 0,
	VERDICT_CONTINUE,
	VERDICT_ACCEPT,
	VERDICT_SKIP,
	VERDICT_DISCARD,
	VERDICT_TEMPFAIL,
	VERDICT_REJECT,
	VERDICT_COUNT
};

/* Per-stage facts as tables, indexed by enum stage. */
extern const char	proto_stage_cmd[STAGE_COUNT];	/* MC_* or 0 */
extern const uint32_t	proto_stage_no[STAGE_COUNT];	/* MP_NO* or 0 */
extern const uint32_t	proto_stage_nr[STAGE_COUNT];	/* MP_NR_* or 0 */
extern const int	proto_stage_macro[STAGE_COUNT];	/* macro_stage or -1 */

const char	*proto_stage_name(enum stage);
const char	*proto_verdict_name(enum verdict);
const char	*proto_macro_stage_name(enum macro_stage);
/* Returns the enum macro_stage named by s ("connect", "eom"...), or -1. */
int		 proto_macro_stage_lookup(const char *s);

#endif /* PROTO_H */
