/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * fuzz_reply - the upstream reply decoder on arbitrary bytes.
 *
 * The input is what an upstream milter might send: a stream of packets,
 * framed with codec_frame() exactly as upstream.c does (PROTO_MAX_DATA),
 * each decoded with codec_decode_optneg() ('O') or codec_decode_reply(),
 * and every 'y' text split with codec_split_replytext().  Checked:
 * framing accounts for every byte; a refused packet leaves nothing to
 * free; what is accepted is what codec.h promises (verdict of a 'y' by
 * its class, header requests with a name, strings NUL-free); an OPTNEG
 * reply survives encode and decode unchanged; a modification survives
 * codec_mod_copy(); and codec_split_replytext() accepts a text exactly
 * when codec_decode_reply() accepts it as a 'y'.
 *
 * Concurrency: single-threaded.  Ownership: everything decoded is freed
 * before returning.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "codec.h"
#include "proto.h"
#include "fuzz.h"

#define SPLIT_LINES	4	/* fewer than a long reply has: drops lines */

/* check_optneg - decode, and if accepted, encode and decode again */
static void
check_optneg(const uint8_t *data, size_t len)
{
	struct codec_optneg	 o, o2;
	struct buf		 b = BUF_INIT;
	const uint8_t		*d2;
	size_t			 len2, used;
	char			 cmd;
	int			 i;

	if (codec_decode_optneg(data, len, &o) != 0) {
		for (i = 0; i < MACRO_STAGE_COUNT; i++)
			FUZZ_CHECK(o.symlists[i] == NULL);
		return;
	}
	codec_put_optneg_reply(&b, o.version, o.actions, o.protocol,
	    (const char *const *)o.symlists);
	FUZZ_CHECK(codec_frame(buf_head(&b), buf_avail(&b), SIZE_MAX, &cmd,
	    &d2, &len2, &used) == 0);
	FUZZ_CHECK(cmd == MR_OPTNEG && used == buf_avail(&b));
	FUZZ_CHECK(codec_decode_optneg(d2, len2, &o2) == 0);
	FUZZ_CHECK(o2.version == o.version && o2.actions == o.actions &&
	    o2.protocol == o.protocol);
	for (i = 0; i < MACRO_STAGE_COUNT; i++) {
		FUZZ_CHECK((o.symlists[i] == NULL) == (o2.symlists[i] == NULL));
		FUZZ_CHECK(o.symlists[i] == NULL ||
		    strcmp(o.symlists[i], o2.symlists[i]) == 0);
	}
	codec_optneg_fini(&o2);
	codec_optneg_fini(&o);
	buf_fini(&b);
}

/* check_split - codec_split_replytext() on an accepted 'y' text */
static void
check_split(const char *text)
{
	char	 rcode[4], xcode[16], *lines[SPLIT_LINES], *storage;
	size_t	 nlines = 1, i;
	int	 n;

	for (i = 0; text[i] != '\0'; i++)
		if (text[i] == '\r' && text[i + 1] == '\n')
			nlines++;
	n = codec_split_replytext(text, rcode, xcode, lines, SPLIT_LINES,
	    &storage);
	FUZZ_CHECK(n >= 1 && n <= SPLIT_LINES);
	FUZZ_CHECK((size_t)n == (nlines < SPLIT_LINES ? nlines : SPLIT_LINES));
	FUZZ_CHECK(strlen(rcode) == 3 && memcmp(rcode, text, 3) == 0);
	FUZZ_CHECK(rcode[0] == '4' || rcode[0] == '5');
	FUZZ_CHECK(xcode[0] == '\0' || (xcode[0] == rcode[0] &&
	    xcode[1] == '.'));
	for (i = 0; i < (size_t)n; i++)
		FUZZ_CHECK(strchr(lines[i], '\r') == NULL &&
		    strchr(lines[i], '\n') == NULL);
	free(storage);
}

/* check_mod - a decoded modification request and its deep copy */
static void
check_mod(const struct mod *m)
{
	struct mod	 c;

	FUZZ_CHECK((unsigned)m->kind < MOD_KIND_COUNT);
	FUZZ_CHECK(codec_mod_action(m->kind) != 0);
	switch (m->kind) {
	case MOD_ADDHEADER:
	case MOD_INSHEADER:
	case MOD_CHGHEADER:
		FUZZ_CHECK(m->name != NULL && m->name[0] != '\0' &&
		    m->value != NULL);
		break;
	case MOD_QUARANTINE:
		FUZZ_CHECK(m->name != NULL && m->name[0] != '\0');
		break;
	case MOD_REPLBODY:
		FUZZ_CHECK((m->body == NULL) == (m->bodylen == 0));
		break;
	default:
		FUZZ_CHECK(m->name != NULL);
		break;
	}
	codec_mod_copy(&c, m);
	FUZZ_CHECK(c.kind == m->kind && c.index == m->index &&
	    c.bodylen == m->bodylen);
	FUZZ_CHECK((c.name == NULL) == (m->name == NULL));
	FUZZ_CHECK(c.name == NULL || strcmp(c.name, m->name) == 0);
	FUZZ_CHECK((c.value == NULL) == (m->value == NULL));
	FUZZ_CHECK(c.value == NULL || strcmp(c.value, m->value) == 0);
	FUZZ_CHECK(c.bodylen == 0 || memcmp(c.body, m->body, c.bodylen) == 0);
	codec_mod_fini(&c);
}

/* check_reply - decode one non-OPTNEG packet and check what came out */
static void
check_reply(char cmd, const uint8_t *data, size_t len)
{
	struct codec_reply	 r;
	int			 rc;

	rc = codec_decode_reply(cmd, data, len, &r);
	if (rc != 0) {
		FUZZ_CHECK(rc == -EPROTO);
		FUZZ_CHECK(r.text == NULL && r.mod.name == NULL &&
		    r.mod.value == NULL && r.mod.body == NULL);
		return;
	}
	switch (r.kind) {
	case REPLY_VERDICT:
		FUZZ_CHECK(r.verdict != VERDICT_NONE &&
		    (unsigned)r.verdict < VERDICT_COUNT);
		if (cmd != MR_REPLYCODE) {
			FUZZ_CHECK(len == 0 && r.text == NULL);
			break;
		}
		FUZZ_CHECK(r.text != NULL);
		FUZZ_CHECK(r.verdict == (r.text[0] == '4' ? VERDICT_TEMPFAIL :
		    VERDICT_REJECT));
		FUZZ_CHECK(strlen(r.text) + 1 == len);
		check_split(r.text);
		break;
	case REPLY_PROGRESS:
		FUZZ_CHECK(len == 0 && r.text == NULL);
		break;
	case REPLY_MOD:
		FUZZ_CHECK(r.text == NULL);
		check_mod(&r.mod);
		break;
	default:
		FUZZ_CHECK(!"unknown reply kind");
	}
	codec_reply_fini(&r);
}

/*
 * check_text - the packet's data up to its first NUL as a reply text:
 * split accepts it exactly when the decoder takes it as a 'y'
 */
static void
check_text(const uint8_t *data, size_t len)
{
	struct codec_reply	 r;
	const uint8_t		*nul;
	char			*text, rcode[4], xcode[16], *lines[1];
	char			*storage;
	size_t			 n;
	int			 dec, split;

	nul = len > 0 ? memchr(data, '\0', len) : NULL;
	n = nul != NULL ? (size_t)(nul - data) : len;
	text = malloc(n + 1);
	FUZZ_CHECK(text != NULL);
	if (n > 0)
		memcpy(text, data, n);
	text[n] = '\0';
	dec = codec_decode_reply(MR_REPLYCODE, (const uint8_t *)text, n + 1,
	    &r);
	if (dec == 0)
		codec_reply_fini(&r);
	split = codec_split_replytext(text, rcode, xcode, lines, 1,
	    &storage);
	FUZZ_CHECK((dec == 0) == (split >= 0));
	FUZZ_CHECK(split == -EPROTO || split == 1);
	FUZZ_CHECK(split >= 0 || storage == NULL);
	free(storage);
	free(text);
}

int
LLVMFuzzerTestOneInput(const uint8_t *p, size_t avail)
{
	const uint8_t	*data;
	size_t		 len, used;
	char		 cmd;
	int		 rc;

	while ((rc = codec_frame(p, avail, PROTO_MAX_DATA, &cmd, &data, &len,
	    &used)) == 0) {
		FUZZ_CHECK(used == len + CODEC_HDR_LEN && used <= avail);
		FUZZ_CHECK(data == p + CODEC_HDR_LEN && len <= PROTO_MAX_DATA);
		if (cmd == MR_OPTNEG)
			check_optneg(data, len);
		else
			check_reply(cmd, data, len);
		check_text(data, len);
		p += used;
		avail -= used;
	}
	FUZZ_CHECK(rc == -EAGAIN || rc == -EMSGSIZE);
	FUZZ_CHECK(rc == -EMSGSIZE || avail < CODEC_HDR_LEN - 1 ||
	    avail < CODEC_HDR_LEN - 1 + ((size_t)p[0] << 24 |
	    (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3]));
	return 0;
}
