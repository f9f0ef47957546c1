/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_codec - unit tests for codec.c.
 *
 * Every expected packet below is written out by hand from
 * shared/PROTOCOL.md (sections 1.4, 2.4, 4.3 and 5.1), never produced
 * by the encoder under test.  Parameter tables keep their strings
 * inline because Criterion copies parameters into the worker process.
 *
 * Concurrency: none (Criterion runs each test in its own process).
 * Ownership: each test frees what it decodes, so that the sanitizers'
 * leak check sees a clean exit.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "buf.h"
#include "codec.h"
#include "proto.h"

/* A string literal as (bytes, length without the literal's own NUL). */
#define BYTES(s)	((const uint8_t *)(s)), (sizeof(s) - 1)
#define D(s)		s, sizeof(s) - 1
#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))

/* assert_buf - the buffer's unconsumed bytes are exactly want[0..n) */
static void
assert_buf(const struct buf *b, const void *want, size_t n)
{
	const uint8_t	*got = buf_head(b), *w = want;
	size_t		 i;

	cr_assert_eq(buf_avail(b), n, "length: got %zu bytes, want %zu",
	    buf_avail(b), n);
	for (i = 0; i < n; i++)
		cr_assert_eq(got[i], w[i], "byte %zu: got %02x, want %02x",
		    i, got[i], w[i]);
}

/* Framing. */

Test(codec, frames_complete_packet_and_leaves_the_rest)
{
	static const char	 in[] = "\x00\x00\x00\x05" "B" "ab\r\n"
	    "\x00\x00";
	const uint8_t		*data;
	size_t			 len, used;
	char			 cmd;

	cr_assert_eq(codec_frame(BYTES(in), PROTO_MAX_DATA, &cmd, &data,
	    &len, &used), 0);
	cr_assert_eq(cmd, 'B');
	cr_assert_eq(len, 4);
	cr_assert_eq(used, 9);
	cr_assert_eq(data, (const uint8_t *)in + 5);
	cr_assert_eq(memcmp(data, "ab\r\n", 4), 0);
}

Test(codec, frames_packet_without_data)
{
	static const char	 in[] = "\x00\x00\x00\x01" "c";
	const uint8_t		*data;
	size_t			 len, used;
	char			 cmd;

	cr_assert_eq(codec_frame(BYTES(in), PROTO_MAX_DATA, &cmd, &data,
	    &len, &used), 0);
	cr_assert_eq(cmd, 'c');
	cr_assert_eq(len, 0);
	cr_assert_eq(used, 5);
}

Test(codec, frame_needs_more_on_partial_header)
{
	static const char	 in[] = "\x00\x00\x00\x01" "c";
	const uint8_t		*data;
	size_t			 avail, len, used;
	char			 cmd;

	for (avail = 0; avail < 5; avail++)
		cr_assert_eq(codec_frame((const uint8_t *)in, avail,
		    PROTO_MAX_DATA, &cmd, &data, &len, &used), -EAGAIN,
		    "avail %zu", avail);
}

Test(codec, frame_needs_more_on_partial_data)
{
	static const char	 in[] = "\x00\x00\x00\x05" "B" "ab\r\n";
	const uint8_t		*data;
	size_t			 avail, len, used;
	char			 cmd;

	for (avail = 5; avail < sizeof in - 1; avail++)
		cr_assert_eq(codec_frame((const uint8_t *)in, avail,
		    PROTO_MAX_DATA, &cmd, &data, &len, &used), -EAGAIN,
		    "avail %zu", avail);
}

Test(codec, frame_rejects_zero_length)
{
	static const char	 in[] = "\x00\x00\x00\x00" "c";
	const uint8_t		*data;
	size_t			 len, used;
	char			 cmd;

	cr_assert_eq(codec_frame(BYTES(in), PROTO_MAX_DATA, &cmd, &data,
	    &len, &used), -EMSGSIZE);
	cr_assert_eq(codec_frame(BYTES(in), SIZE_MAX, &cmd, &data, &len,
	    &used), -EMSGSIZE, "zero length must not wrap past the limit");
}

Test(codec, frame_rejects_packet_longer_than_limit_from_header_alone)
{
	/* 65536 data bytes announced; only the header has arrived. */
	static const char	 in[] = "\x00\x01\x00\x01" "L";
	const uint8_t		*data;
	size_t			 len, used;
	char			 cmd;

	cr_assert_eq(codec_frame(BYTES(in), PROTO_MAX_DATA, &cmd, &data,
	    &len, &used), -EMSGSIZE);
	cr_assert_eq(codec_frame((const uint8_t *)in, 4, PROTO_MAX_DATA,
	    &cmd, &data, &len, &used), -EMSGSIZE);
}

Test(codec, frame_accepts_data_exactly_at_limit)
{
	static const char	 in[] = "\x00\x00\x00\x04" "B" "abc";
	const uint8_t		*data;
	size_t			 len, used;
	char			 cmd;

	cr_assert_eq(codec_frame(BYTES(in), 3, &cmd, &data, &len, &used), 0);
	cr_assert_eq(len, 3);
	cr_assert_eq(codec_frame(BYTES(in), 2, &cmd, &data, &len, &used),
	    -EMSGSIZE);
}

/* Encoders, MTA to filter. */

Test(codec, puts_packet_with_and_without_data)
{
	static const char	 want[] = "\x00\x00\x00\x01" "T"
	    "\x00\x00\x00\x05" "B" "ab\r\n";
	struct buf		 b = BUF_INIT;

	codec_put_packet(&b, 'T', NULL, 0);
	codec_put_packet(&b, 'B', "ab\r\n", 4);
	assert_buf(&b, want, sizeof want - 1);
	buf_fini(&b);
}

Test(codec, puts_optneg_offer_like_postfix)
{
	static const char	 want[] = "\x00\x00\x00\x0d" "O"
	    "\x00\x00\x00\x06" "\x00\x00\x01\xff" "\x00\x1f\xff\xff";
	struct buf		 b = BUF_INIT;

	codec_put_optneg(&b, 6, 0x1ff, 0x1fffff);
	assert_buf(&b, want, sizeof want - 1);
	buf_fini(&b);
}

Test(codec, puts_connect_ipv4)
{
	static const char	 want[] = "\x00\x00\x00\x1d" "C"
	    "client.example\0" "4" "\x09\xdd" "192.0.2.1\0";
	struct buf		 b = BUF_INIT;

	codec_put_connect(&b, "client.example", '4', 2525, "192.0.2.1");
	assert_buf(&b, want, sizeof want - 1);
	buf_fini(&b);
}

Test(codec, puts_connect_ipv6)
{
	static const char	 want[] = "\x00\x00\x00\x1b" "C"
	    "v6.example\0" "6" "\xc3\x50" "2001:db8::1\0";
	struct buf		 b = BUF_INIT;

	codec_put_connect(&b, "v6.example", '6', 50000, "2001:db8::1");
	assert_buf(&b, want, sizeof want - 1);
	buf_fini(&b);
}

Test(codec, puts_connect_unknown_family_without_port_and_address)
{
	static const char	 want[] = "\x00\x00\x00\x0c" "C"
	    "localhost\0" "U";
	struct buf		 b = BUF_INIT;

	codec_put_connect(&b, "localhost", 'U', 25, "ignored");
	assert_buf(&b, want, sizeof want - 1);
	buf_fini(&b);
}

Test(codec, puts_macros_and_leaves_out_null_values)
{
	/* PROTOCOL.md 1.4, "Macros before MAIL". */
	static const char	 want[] = "\x00\x00\x00\x1b" "D" "M"
	    "i\0" "ABC123\0" "{mail_addr}\0" "a@x\0";
	static const char *const pairs[] = {
		"i", "ABC123",
		"{auth_type}", NULL,
		"{mail_addr}", "a@x",
	};
	struct buf		 b = BUF_INIT;

	codec_put_macros(&b, 'M', pairs, 3);
	assert_buf(&b, want, sizeof want - 1);
	buf_fini(&b);
}

Test(codec, puts_macro_packet_without_pairs)
{
	static const char	 want[] = "\x00\x00\x00\x02" "D" "H";
	struct buf		 b = BUF_INIT;

	codec_put_macros(&b, 'H', NULL, 0);
	assert_buf(&b, want, sizeof want - 1);
	buf_fini(&b);
}

Test(codec, puts_mail_with_esmtp_parameters)
{
	static const char	 want[] = "\x00\x00\x00\x28" "M"
	    "<a@example.org>\0" "SIZE=100\0" "BODY=8BITMIME\0";
	static const char *const argv[] = {
		"<a@example.org>", "SIZE=100", "BODY=8BITMIME",
	};
	struct buf		 b = BUF_INIT;

	codec_put_argv(&b, 'M', argv, NELEM(argv));
	assert_buf(&b, want, sizeof want - 1);
	buf_fini(&b);
}

Test(codec, puts_helo_string)
{
	static const char	 want[] = "\x00\x00\x00\x10" "H"
	    "client.example\0";
	struct buf		 b = BUF_INIT;

	codec_put_str(&b, 'H', "client.example");
	assert_buf(&b, want, sizeof want - 1);
	buf_fini(&b);
}

Test(codec, puts_header_name_and_value)
{
	static const char	 want[] = "\x00\x00\x00\x1a" "L"
	    "Subject\0" "original subject\0";
	struct buf		 b = BUF_INIT;

	codec_put_header(&b, "Subject", "original subject");
	assert_buf(&b, want, sizeof want - 1);
	buf_fini(&b);
}

Test(codec, splits_body_of_70000_bytes_into_65535_and_4465)
{
	static const char	 hdr1[] = "\x00\x01\x00\x00" "B";
	static const char	 hdr2[] = "\x00\x00\x11\x72" "B";
	struct buf		 b = BUF_INIT;
	const uint8_t		*p;
	uint8_t			*body;
	size_t			 i;

	body = malloc(70000);
	cr_assert_not_null(body);
	for (i = 0; i < 70000; i++)
		body[i] = (uint8_t)(i % 251);
	codec_put_body(&b, body, 70000);
	cr_assert_eq(buf_avail(&b), 5 + 65535 + 5 + 4465);
	p = buf_head(&b);
	cr_assert_eq(memcmp(p, hdr1, 5), 0);
	cr_assert_eq(memcmp(p + 5, body, 65535), 0);
	cr_assert_eq(memcmp(p + 5 + 65535, hdr2, 5), 0);
	cr_assert_eq(memcmp(p + 5 + 65535 + 5, body + 65535, 4465), 0);
	free(body);
	buf_fini(&b);
}

Test(codec, puts_body_of_exactly_one_chunk_as_one_packet)
{
	static const char	 hdr[] = "\x00\x01\x00\x00" "B";
	struct buf		 b = BUF_INIT;
	uint8_t			*body;

	body = calloc(1, 65535);
	cr_assert_not_null(body);
	codec_put_body(&b, body, 65535);
	cr_assert_eq(buf_avail(&b), 5 + 65535);
	cr_assert_eq(memcmp(buf_head(&b), hdr, 5), 0);
	free(body);
	buf_fini(&b);
}

Test(codec, puts_nothing_for_empty_body)
{
	struct buf	 b = BUF_INIT;

	codec_put_body(&b, "", 0);
	cr_assert_eq(buf_avail(&b), 0);
	buf_fini(&b);
}

Test(codec, encodes_correctly_after_buffer_slides_consumed_bytes)
{
	/* 200 bytes in a 256-byte buffer, 150 consumed: the next packet
	 * does not fit at the end, so buf_reserve() moves the rest down
	 * while the packet is being written. */
	static const char	 want[] = "\x00\x00\x00\x1a" "L"
	    "Subject\0" "original subject\0";
	uint8_t			 junk[200];
	struct buf		 b = BUF_INIT;

	memset(junk, 'x', sizeof junk);
	buf_add(&b, junk, sizeof junk);
	buf_consume(&b, 150);
	codec_put_header(&b, "Subject", "original subject");
	cr_assert_eq(buf_avail(&b), 50 + sizeof want - 1);
	buf_consume(&b, 50);
	assert_buf(&b, want, sizeof want - 1);
	buf_fini(&b);
}

/* OPTNEG replies. */

/* PROTOCOL.md 1.4: NR_HDR|SKIP|RCPT_REJ|HDR_LEADSPC|NR_CONN, CONNECT and
 * EOM lists. */
static const char optneg_reply_14[] = "\x00\x00\x00\x32" "O"
    "\x00\x00\x00\x06" "\x00\x00\x01\xff" "\x00\x10\x1c\x80"
    "\x00\x00\x00\x00" "{client_addr} j _\0"
    "\x00\x00\x00\x05" "i {msg_id}\0";

Test(codec, puts_optneg_reply_with_symlists)
{
	const char	*lists[MACRO_STAGE_COUNT] = { NULL };
	struct buf	 b = BUF_INIT;

	lists[MACRO_CONNECT] = "{client_addr} j _";
	lists[MACRO_EOM] = "i {msg_id}";
	codec_put_optneg_reply(&b, 6, 0x1ff, 0x101c80, lists);
	assert_buf(&b, optneg_reply_14, sizeof optneg_reply_14 - 1);
	buf_fini(&b);
}

Test(codec, puts_optneg_reply_symlists_in_stage_order)
{
	/* EOM (5) goes before EOH (6) whatever the caller means. */
	static const char	 want[] = "\x00\x00\x00\x19" "O"
	    "\x00\x00\x00\x06" "\x00\x00\x00\x01" "\x00\x00\x00\x02"
	    "\x00\x00\x00\x05" "y\0" "\x00\x00\x00\x06" "x\0";
	const char		*lists[MACRO_STAGE_COUNT] = { NULL };
	struct buf		 b = BUF_INIT;

	lists[MACRO_EOH] = "x";
	lists[MACRO_EOM] = "y";
	codec_put_optneg_reply(&b, 6, 1, 2, lists);
	assert_buf(&b, want, sizeof want - 1);
	buf_fini(&b);
}

Test(codec, puts_optneg_reply_without_symlists)
{
	static const char	 want[] = "\x00\x00\x00\x0d" "O"
	    "\x00\x00\x00\x06" "\x00\x00\x00\x01" "\x00\x00\x00\x02";
	struct buf		 b = BUF_INIT;

	codec_put_optneg_reply(&b, 6, 1, 2, NULL);
	assert_buf(&b, want, sizeof want - 1);
	buf_fini(&b);
}

Test(codec, decodes_optneg_reply_with_symlists)
{
	struct codec_optneg	 o;
	const uint8_t		*data;
	size_t			 len, used;
	char			 cmd;
	int			 i;

	cr_assert_eq(codec_frame(BYTES(optneg_reply_14), PROTO_MAX_DATA,
	    &cmd, &data, &len, &used), 0);
	cr_assert_eq(cmd, 'O');
	cr_assert_eq(used, sizeof optneg_reply_14 - 1);
	cr_assert_eq(codec_decode_optneg(data, len, &o), 0);
	cr_assert_eq(o.version, 6);
	cr_assert_eq(o.actions, 0x1ff);
	cr_assert_eq(o.protocol, MP_NR_HDR | MP_SKIP | MP_RCPT_REJ |
	    MP_HDR_LEADSPC | MP_NR_CONN);
	cr_assert_str_eq(o.symlists[MACRO_CONNECT], "{client_addr} j _");
	cr_assert_str_eq(o.symlists[MACRO_EOM], "i {msg_id}");
	for (i = 0; i < MACRO_STAGE_COUNT; i++)
		if (i != MACRO_CONNECT && i != MACRO_EOM)
			cr_assert_null(o.symlists[i], "stage %d", i);
	codec_optneg_fini(&o);
	cr_assert_null(o.symlists[MACRO_CONNECT]);
	cr_assert_null(o.symlists[MACRO_EOM]);
}

Test(codec, decodes_optneg_reply_without_symlists)
{
	static const char	 in[] = "\x00\x00\x00\x02"
	    "\x00\x00\x00\x3d" "\x00\x00\x00\x00";
	struct codec_optneg	 o;
	int			 i;

	cr_assert_eq(codec_decode_optneg(BYTES(in), &o), 0);
	cr_assert_eq(o.version, 2);
	cr_assert_eq(o.actions, 0x3d);
	cr_assert_eq(o.protocol, 0);
	for (i = 0; i < MACRO_STAGE_COUNT; i++)
		cr_assert_null(o.symlists[i]);
	codec_optneg_fini(&o);
}

struct bytes_case {
	char	 name[48];
	char	 data[48];
	size_t	 len;
};

ParameterizedTestParameters(codec, refuses_malformed_optneg_reply)
{
	static struct bytes_case cases[] = {
		{ "eleven_bytes",
		    D("\x00\x00\x00\x06" "\x00\x00\x01\xff" "\x00\x00\x00") },
		{ "unknown_stage_7",
		    D("\x00\x00\x00\x06" "\x00\x00\x01\xff" "\x00\x00\x00\x00"
		    "\x00\x00\x00\x07" "j\0") },
		{ "list_without_nul",
		    D("\x00\x00\x00\x06" "\x00\x00\x01\xff" "\x00\x00\x00\x00"
		    "\x00\x00\x00\x00" "j _") },
		{ "stage_without_list",
		    D("\x00\x00\x00\x06" "\x00\x00\x01\xff" "\x00\x00\x00\x00"
		    "\x00\x00\x00\x01") },
		{ "truncated_stage_field",
		    D("\x00\x00\x00\x06" "\x00\x00\x01\xff" "\x00\x00\x00\x00"
		    "\x00\x00") },
		{ "stage_listed_twice",
		    D("\x00\x00\x00\x06" "\x00\x00\x01\xff" "\x00\x00\x00\x00"
		    "\x00\x00\x00\x02" "j\0" "\x00\x00\x00\x02" "_\0") },
	};

	return cr_make_param_array(struct bytes_case, cases, NELEM(cases));
}

ParameterizedTest(struct bytes_case *tc, codec, refuses_malformed_optneg_reply)
{
	struct codec_optneg	 o;
	int			 i;

	cr_assert_eq(codec_decode_optneg((const uint8_t *)tc->data, tc->len,
	    &o), -EPROTO, "%s", tc->name);
	for (i = 0; i < MACRO_STAGE_COUNT; i++)
		cr_assert_null(o.symlists[i], "%s: stage %d kept",
		    tc->name, i);
}

/* Verdict replies. */

struct verdict_case {
	char		 cmd;
	enum reply_kind	 kind;
	enum verdict	 verdict;
};

ParameterizedTestParameters(codec, decodes_verdicts_without_data)
{
	static struct verdict_case cases[] = {
		{ 'c', REPLY_VERDICT, VERDICT_CONTINUE },
		{ 'a', REPLY_VERDICT, VERDICT_ACCEPT },
		{ 'r', REPLY_VERDICT, VERDICT_REJECT },
		{ 't', REPLY_VERDICT, VERDICT_TEMPFAIL },
		{ 'd', REPLY_VERDICT, VERDICT_DISCARD },
		{ 's', REPLY_VERDICT, VERDICT_SKIP },
		{ 'p', REPLY_PROGRESS, VERDICT_NONE },
	};

	return cr_make_param_array(struct verdict_case, cases, NELEM(cases));
}

ParameterizedTest(struct verdict_case *tc, codec,
    decodes_verdicts_without_data)
{
	struct codec_reply	 r;

	cr_assert_eq(codec_decode_reply(tc->cmd, NULL, 0, &r), 0, "'%c'",
	    tc->cmd);
	cr_assert_eq(r.kind, tc->kind, "'%c'", tc->cmd);
	cr_assert_eq(r.verdict, tc->verdict, "'%c'", tc->cmd);
	cr_assert_null(r.text);
	cr_assert_null(r.mod.name);
	codec_reply_fini(&r);
}

struct replytext_case {
	char		 text[64];
	enum verdict	 verdict;
};

ParameterizedTestParameters(codec, decodes_valid_replycode)
{
	static struct replytext_case cases[] = {
		{ "550 5.7.1 Go away", VERDICT_REJECT },
		{ "550-5.7.1 line one\r\n550 5.7.1 line 100%% two",
		    VERDICT_REJECT },
		{ "421 4.7.0 closing", VERDICT_TEMPFAIL },
		{ "451 try again later", VERDICT_TEMPFAIL },
		{ "550", VERDICT_REJECT },
		{ "550 ", VERDICT_REJECT },
		{ "550 5.7.1", VERDICT_REJECT },
		{ "554-\r\n554 done", VERDICT_REJECT },
		{ "450-a\r\n450-b\r\n450 c", VERDICT_TEMPFAIL },
		{ "550 3.1.1 not an enhanced code", VERDICT_REJECT },
		{ "550 4.7.1234 not an enhanced code", VERDICT_REJECT },
		{ "550 4.7.1x not an enhanced code", VERDICT_REJECT },
	};

	return cr_make_param_array(struct replytext_case, cases,
	    NELEM(cases));
}

ParameterizedTest(struct replytext_case *tc, codec, decodes_valid_replycode)
{
	struct codec_reply	 r;

	/* The packet's data is the text and its NUL. */
	cr_assert_eq(codec_decode_reply('y', (const uint8_t *)tc->text,
	    strlen(tc->text) + 1, &r), 0, "\"%s\"", tc->text);
	cr_assert_eq(r.kind, REPLY_VERDICT);
	cr_assert_eq(r.verdict, tc->verdict, "\"%s\"", tc->text);
	cr_assert_str_eq(r.text, tc->text);
	cr_assert_neq(r.text, tc->text, "text must be a copy");
	codec_reply_fini(&r);
	cr_assert_null(r.text);
}

Test(codec, decodes_multiline_replycode_from_setmlreply)
{
	/* PROTOCOL.md 1.4, smfi_setmlreply("550", "5.7.1", "line one",
	 * "line 100%% two"). */
	static const char	 in[] = "\x00\x00\x00\x2e" "y"
	    "550-5.7.1 line one\r\n550 5.7.1 line 100%% two\0";
	struct codec_reply	 r;
	const uint8_t		*data;
	size_t			 len, used;
	char			 cmd;

	cr_assert_eq(codec_frame(BYTES(in), PROTO_MAX_DATA, &cmd, &data,
	    &len, &used), 0);
	cr_assert_eq(used, sizeof in - 1);
	cr_assert_eq(codec_decode_reply(cmd, data, len, &r), 0);
	cr_assert_eq(r.kind, REPLY_VERDICT);
	cr_assert_eq(r.verdict, VERDICT_REJECT);
	cr_assert_str_eq(r.text,
	    "550-5.7.1 line one\r\n550 5.7.1 line 100%% two");
	codec_reply_fini(&r);
}

Test(codec, refuses_replycode_without_any_data)
{
	struct codec_reply	 r;

	cr_assert_eq(codec_decode_reply('y', NULL, 0, &r), -EPROTO);
	cr_assert_null(r.text);
}

/* Modification requests. */

struct mod_case {
	char		 cmd;
	char		 data[48];
	size_t		 len;
	enum mod_kind	 kind;
	uint32_t	 index;
	char		 name[24];
	bool		 has_value;
	char		 value[24];
};

ParameterizedTestParameters(codec, decodes_every_modification_kind)
{
	/* Mostly PROTOCOL.md 1.4, "EOM answer sequence". */
	static struct mod_case cases[] = {
		{ 'h', D("X-Add\0" "v1\0"),
		    MOD_ADDHEADER, 0, "X-Add", true, "v1" },
		{ 'h', D("X-Empty\0" "\0"),
		    MOD_ADDHEADER, 0, "X-Empty", true, "" },
		{ 'i', D("\x00\x00\x00\x00" "X-Ins\0" "v2\0"),
		    MOD_INSHEADER, 0, "X-Ins", true, "v2" },
		{ 'i', D("\x01\x02\x03\x04" "X-Ins\0" "v3\0"),
		    MOD_INSHEADER, 0x01020304, "X-Ins", true, "v3" },
		{ 'm', D("\x00\x00\x00\x01" "Subject\0" "\0"),
		    MOD_CHGHEADER, 1, "Subject", true, "" },
		{ 'm', D("\x00\x00\x00\x02" "X-Dup\0" "new\0"),
		    MOD_CHGHEADER, 2, "X-Dup", true, "new" },
		{ '+', D("<add@x>\0"),
		    MOD_ADDRCPT, 0, "<add@x>", false, "" },
		{ '2', D("<add@x>\0" "NOTIFY=NEVER\0"),
		    MOD_ADDRCPT_PAR, 0, "<add@x>", true, "NOTIFY=NEVER" },
		{ '2', D("<add@x>\0"),
		    MOD_ADDRCPT_PAR, 0, "<add@x>", false, "" },
		{ '-', D("<good@x>\0"),
		    MOD_DELRCPT, 0, "<good@x>", false, "" },
		{ 'e', D("<new@from>\0" "RET=HDRS\0"),
		    MOD_CHGFROM, 0, "<new@from>", true, "RET=HDRS" },
		{ 'e', D("<>\0"),
		    MOD_CHGFROM, 0, "<>", false, "" },
		{ 'q', D("q reason\0"),
		    MOD_QUARANTINE, 0, "q reason", false, "" },
	};

	return cr_make_param_array(struct mod_case, cases, NELEM(cases));
}

ParameterizedTest(struct mod_case *tc, codec, decodes_every_modification_kind)
{
	struct codec_reply	 r;

	cr_assert_eq(codec_decode_reply(tc->cmd, (const uint8_t *)tc->data,
	    tc->len, &r), 0, "'%c'", tc->cmd);
	cr_assert_eq(r.kind, REPLY_MOD);
	cr_assert_eq(r.verdict, VERDICT_NONE);
	cr_assert_null(r.text);
	cr_assert_eq(r.mod.kind, tc->kind, "'%c'", tc->cmd);
	cr_assert_eq(r.mod.index, tc->index, "'%c'", tc->cmd);
	cr_assert_str_eq(r.mod.name, tc->name);
	if (tc->has_value)
		cr_assert_str_eq(r.mod.value, tc->value);
	else
		cr_assert_null(r.mod.value, "'%c'", tc->cmd);
	cr_assert_null(r.mod.body);
	codec_reply_fini(&r);
	cr_assert_null(r.mod.name);
	cr_assert_null(r.mod.value);
}

Test(codec, decodes_replbody_chunk)
{
	static const char	 in[] = "\x00\x00\x00\x0b" "b" "new body\r\n";
	struct codec_reply	 r;
	const uint8_t		*data;
	size_t			 len, used;
	char			 cmd;

	cr_assert_eq(codec_frame(BYTES(in), PROTO_MAX_DATA, &cmd, &data,
	    &len, &used), 0);
	cr_assert_eq(codec_decode_reply(cmd, data, len, &r), 0);
	cr_assert_eq(r.kind, REPLY_MOD);
	cr_assert_eq(r.mod.kind, MOD_REPLBODY);
	cr_assert_eq(r.mod.bodylen, 10);
	cr_assert_eq(memcmp(r.mod.body, "new body\r\n", 10), 0);
	cr_assert_neq(r.mod.body, data, "body must be a copy");
	cr_assert_null(r.mod.name);
	codec_reply_fini(&r);
	cr_assert_null(r.mod.body);
	cr_assert_eq(r.mod.bodylen, 0);
}

Test(codec, decodes_empty_replbody_chunk)
{
	struct codec_reply	 r;

	cr_assert_eq(codec_decode_reply('b', NULL, 0, &r), 0);
	cr_assert_eq(r.kind, REPLY_MOD);
	cr_assert_eq(r.mod.kind, MOD_REPLBODY);
	cr_assert_eq(r.mod.bodylen, 0);
	codec_reply_fini(&r);
}

struct bad_reply_case {
	char	 name[40];
	char	 cmd;
	char	 data[40];
	size_t	 len;
};

ParameterizedTestParameters(codec, refuses_malformed_reply)
{
	static struct bad_reply_case cases[] = {
		{ "data_on_continue", 'c', D("x") },
		{ "nul_on_accept", 'a', D("\0") },
		{ "data_on_reject", 'r', D("550") },
		{ "data_on_tempfail", 't', D("x") },
		{ "data_on_discard", 'd', D("x") },
		{ "data_on_skip", 's', D("x") },
		{ "data_on_progress", 'p', D("x") },
		{ "unknown_code_Z", 'Z', D("") },
		{ "unknown_code_nul", '\0', D("") },
		{ "unknown_code_high_bit", '\xc3', D("") },
		{ "optneg_as_reply", 'O', D("\x00\x00\x00\x06"
		    "\x00\x00\x01\xff" "\x00\x00\x00\x00") },
		{ "setsymlist_as_reply", 'l', D("") },
		{ "conn_fail_as_reply", 'f', D("") },
		{ "shutdown_as_reply", '4', D("") },
		{ "y_empty", 'y', D("") },
		{ "y_only_nul", 'y', D("\0") },
		{ "y_lone_lf", 'y', D("550 5.7.1 a\nb\0") },
		{ "y_lone_cr", 'y', D("550 5.7.1 a\rb\0") },
		{ "y_lf_cr_separator", 'y', D("550-a\n\r550 b\0") },
		{ "y_trailing_crlf", 'y', D("550 a\r\n\0") },
		{ "y_code_250", 'y', D("250 2.0.0 ok\0") },
		{ "y_code_350", 'y', D("350 go on\0") },
		{ "y_550_xcode_4_7_1", 'y', D("550 4.7.1 no\0") },
		{ "y_451_xcode_5_7_1", 'y', D("451 5.7.1 no\0") },
		{ "y_550_xcode_2_0_0", 'y', D("550 2.0.0 no\0") },
		{ "y_second_line_xcode_class", 'y',
		    D("550-5.7.1 a\r\n550 4.7.1 b\0") },
		{ "y_missing_nul", 'y', D("550 5.7.1 no") },
		{ "y_embedded_nul", 'y', D("550 5.7\0.1 no\0") },
		{ "y_two_nuls", 'y', D("550 no\0\0") },
		{ "y_codes_differ", 'y', D("550-a\r\n551 b\0") },
		{ "y_last_line_dash", 'y', D("550-a\0") },
		{ "y_first_line_space", 'y', D("550 a\r\n550 b\0") },
		{ "y_no_separator", 'y', D("550a\0") },
		{ "y_tab_separator", 'y', D("550\ta\0") },
		{ "y_short_code", 'y', D("55\0") },
		{ "y_letter_in_code", 'y', D("5x0 a\0") },
		{ "y_bare_code_in_multiline", 'y', D("550-a\r\n550\0") },
		{ "y_empty_line", 'y', D("550-a\r\n\r\n550 b\0") },
		{ "h_missing_second_nul", 'h', D("X-A\0" "v") },
		{ "h_empty_name", 'h', D("\0" "v\0") },
		{ "h_one_string", 'h', D("X-A\0") },
		{ "h_no_data", 'h', D("") },
		{ "h_third_string", 'h', D("X-A\0" "v\0" "w\0") },
		{ "h_trailing_byte", 'h', D("X-A\0" "v\0" "x") },
		{ "i_shorter_than_4_bytes", 'i', D("\0\0\0") },
		{ "i_index_only", 'i', D("\0\0\0\0") },
		{ "i_empty_name", 'i', D("\0\0\0\0" "\0" "v\0") },
		{ "i_missing_value", 'i', D("\0\0\0\0" "X\0") },
		{ "m_missing_nuls", 'm', D("\0\0\0\x01" "Subject") },
		{ "m_empty_name", 'm', D("\0\0\0\x01" "\0" "\0") },
		{ "addrcpt_missing_nul", '+', D("<a@x>") },
		{ "addrcpt_with_args", '+', D("<a@x>\0" "NOTIFY=NEVER\0") },
		{ "addrcpt_par_three_strings", '2', D("<a@x>\0" "A\0" "B\0") },
		{ "addrcpt_par_no_data", '2', D("") },
		{ "delrcpt_no_data", '-', D("") },
		{ "delrcpt_trailing_byte", '-', D("<a@x>\0" "x") },
		{ "chgfrom_missing_nul", 'e', D("<a@x>") },
		{ "chgfrom_three_strings", 'e', D("<a@x>\0" "A\0" "B\0") },
		{ "quarantine_empty_reason", 'q', D("\0") },
		{ "quarantine_no_data", 'q', D("") },
		{ "quarantine_missing_nul", 'q', D("why") },
		{ "quarantine_two_strings", 'q', D("why\0" "not\0") },
	};

	return cr_make_param_array(struct bad_reply_case, cases,
	    NELEM(cases));
}

ParameterizedTest(struct bad_reply_case *tc, codec, refuses_malformed_reply)
{
	struct codec_reply	 r;

	cr_assert_eq(codec_decode_reply(tc->cmd, (const uint8_t *)tc->data,
	    tc->len, &r), -EPROTO, "%s", tc->name);
	cr_assert_null(r.text, "%s", tc->name);
	cr_assert_null(r.mod.name, "%s", tc->name);
	cr_assert_null(r.mod.value, "%s", tc->name);
	cr_assert_null(r.mod.body, "%s", tc->name);
	codec_reply_fini(&r);
}

/* Reply text splitting. */

Test(codec, splits_single_line_reply)
{
	char	 rcode[4], xcode[16], *lines[32], *storage;

	cr_assert_eq(codec_split_replytext("550 5.7.1 Go away", rcode, xcode,
	    lines, 32, &storage), 1);
	cr_assert_str_eq(rcode, "550");
	cr_assert_str_eq(xcode, "5.7.1");
	cr_assert_str_eq(lines[0], "Go away");
	cr_assert_geq(lines[0], storage);
	free(storage);
}

Test(codec, splits_multiline_reply_and_strips_repeated_xcode)
{
	static const char	 text[] =
	    "550-5.7.1 line one\r\n550 5.7.1 line 100%% two";
	char			 rcode[4], xcode[16], *lines[32], *storage;
	int			 i;

	cr_assert_eq(codec_split_replytext(text, rcode, xcode, lines, 32,
	    &storage), 2);
	cr_assert_str_eq(rcode, "550");
	cr_assert_str_eq(xcode, "5.7.1");
	cr_assert_str_eq(lines[0], "line one");
	cr_assert_str_eq(lines[1], "line 100%% two");
	for (i = 0; i < 2; i++)
		cr_assert(lines[i] >= storage &&
		    lines[i] < storage + sizeof text, "line %d outside", i);
	free(storage);
}

Test(codec, splits_reply_without_xcode)
{
	char	 rcode[4], xcode[16], *lines[32], *storage;

	cr_assert_eq(codec_split_replytext("451-first\r\n451 second", rcode,
	    xcode, lines, 32, &storage), 2);
	cr_assert_str_eq(rcode, "451");
	cr_assert_str_eq(xcode, "");
	cr_assert_str_eq(lines[0], "first");
	cr_assert_str_eq(lines[1], "second");
	free(storage);
}

Test(codec, splits_reply_whose_lines_do_not_all_repeat_xcode)
{
	char	 rcode[4], xcode[16], *lines[32], *storage;

	cr_assert_eq(codec_split_replytext(
	    "550-5.7.1 a\r\n550-b\r\n550-5.7.10 c\r\n550 5.1.1 d", rcode,
	    xcode, lines, 32, &storage), 4);
	cr_assert_str_eq(xcode, "5.7.1");
	cr_assert_str_eq(lines[0], "a");
	cr_assert_str_eq(lines[1], "b");
	cr_assert_str_eq(lines[2], "5.7.10 c");
	cr_assert_str_eq(lines[3], "5.1.1 d");
	free(storage);
}

Test(codec, splits_bare_code_and_xcode_without_text)
{
	char	 rcode[4], xcode[16], *lines[32], *storage;

	cr_assert_eq(codec_split_replytext("550", rcode, xcode, lines, 32,
	    &storage), 1);
	cr_assert_str_eq(rcode, "550");
	cr_assert_str_eq(xcode, "");
	cr_assert_str_eq(lines[0], "");
	free(storage);
	cr_assert_eq(codec_split_replytext("421 4.7.0", rcode, xcode, lines,
	    32, &storage), 1);
	cr_assert_str_eq(rcode, "421");
	cr_assert_str_eq(xcode, "4.7.0");
	cr_assert_str_eq(lines[0], "");
	free(storage);
}

Test(codec, split_drops_lines_beyond_maxlines)
{
	char	 rcode[4], xcode[16], *lines[2], *storage;

	cr_assert_eq(codec_split_replytext("550-a\r\n550-b\r\n550 c", rcode,
	    xcode, lines, 2, &storage), 2);
	cr_assert_str_eq(lines[0], "a");
	cr_assert_str_eq(lines[1], "b");
	free(storage);
}

Test(codec, fit_cuts_lines_to_maxlen_and_counts_dropped_ones)
{
	static const char	 text[] = "550-5.7.1 abcdef\r\n"
	    "550-5.7.1 ab%cd\r\n550-5.7.1 a%%bc\r\n550-5.7.1 abc%%\r\n"
	    "550-5.7.1 ok\r\n550 5.7.1 dropped";
	static const char *const want[] = { "abcd", "ab%%", "a%%b", "abc",
					    "ok" };
	static const struct codec_linecut wcut[] = { { 6, 4 }, { 5, 3 },
					    { 5, 4 }, { 5, 3 }, { 2, 2 } };
	char			 rcode[4], xcode[16], *lines[5], *storage;
	struct codec_linecut	 cuts[5];
	size_t			 nlines = 0;

	cr_assert_eq(codec_fit_replytext(text, rcode, xcode, lines, 5, 4,
	    &storage, cuts, &nlines), 5);
	cr_assert_eq(nlines, 6);
	cr_assert_str_eq(xcode, "5.7.1");
	for (int i = 0; i < 5; i++) {
		cr_assert_str_eq(lines[i], want[i], "line %d", i + 1);
		cr_assert_eq(cuts[i].from, wcut[i].from, "line %d", i + 1);
		cr_assert_eq(cuts[i].to, wcut[i].to, "line %d", i + 1);
	}
	free(storage);
}

Test(codec, split_refuses_invalid_text)
{
	char	 rcode[4], xcode[16], *lines[32], *storage;

	cr_assert_eq(codec_split_replytext("550 4.7.1 class mismatch", rcode,
	    xcode, lines, 32, &storage), -EPROTO);
	cr_assert_null(storage);
	cr_assert_eq(codec_split_replytext("250 ok", rcode, xcode, lines, 32,
	    &storage), -EPROTO);
	cr_assert_null(storage);
}

struct percent_case {
	char	 name[40];
	char	 text[64];
	int	 nlines;
	char	 want[2][40];
};

/*
 * Sendmail reads the text as a format and Postfix turns "%%" into "%"
 * (PROTOCOL.md 4.3): whatever an upstream sent, no '%' may stay lone.
 */
ParameterizedTestParameters(codec, split_doubles_lone_percent_only)
{
	static struct percent_case cases[] = {
		{ "lone", "550 5.7.1 100% sure", 1, { "100%% sure" } },
		{ "doubled_stays", "550 5.7.1 100%% sure", 1,
		    { "100%% sure" } },
		{ "conversion", "550 5.7.1 %s%n%d", 1, { "%%s%%n%%d" } },
		{ "three", "451 4.3.2 a%%%b", 1, { "a%%%%b" } },
		{ "at_end", "550 5.7.1 end%", 1, { "end%%" } },
		{ "only_percent", "550 %", 1, { "%%" } },
		{ "no_xcode", "451 50% off", 1, { "50%% off" } },
		{ "multiline", "550-5.7.1 a% b\r\n550 5.7.1 c%%d%", 2,
		    { "a%% b", "c%%d%%" } },
		{ "none", "550 5.7.1 plain", 1, { "plain" } },
	};

	return cr_make_param_array(struct percent_case, cases, NELEM(cases));
}

ParameterizedTest(struct percent_case *tc, codec,
    split_doubles_lone_percent_only)
{
	char	 rcode[4], xcode[16], *lines[32], *storage;
	int	 i;

	cr_assert_eq(codec_split_replytext(tc->text, rcode, xcode, lines, 32,
	    &storage), tc->nlines, "%s", tc->name);
	for (i = 0; i < tc->nlines; i++)
		cr_assert_str_eq(lines[i], tc->want[i], "%s line %d",
		    tc->name, i);
	free(storage);
}

Test(codec, split_doubles_every_lone_percent_of_a_long_text)
{
	char	 text[4 + 2 * 490 + 1], rcode[4], xcode[16], *lines[1];
	char	*storage;
	size_t	 i;

	/* "%x" 490 times: each '%' lone, the text grows by half. */
	memcpy(text, "550 ", 4);
	for (i = 0; i < 490; i++)
		memcpy(text + 4 + 2 * i, "%x", 2);
	text[sizeof text - 1] = '\0';
	cr_assert_eq(codec_split_replytext(text, rcode, xcode, lines, 1,
	    &storage), 1);
	cr_assert_eq(strlen(lines[0]), 3 * 490);
	for (i = 0; i < 490; i++)
		cr_assert_eq(memcmp(lines[0] + 3 * i, "%%x", 3), 0,
		    "at %zu: %s", i, lines[0]);
	free(storage);
}

Test(codec, frame_reports_the_bad_length_field)
{
	static const char	 huge[] = "\x00\x01\x00\x01" "c";
	static const char	 zero[] = "\x00\x00\x00\x00" "c";
	const uint8_t		*data;
	size_t			 len = 7, used;
	char			 cmd;

	cr_assert_eq(codec_frame(BYTES(huge), PROTO_MAX_DATA, &cmd, &data,
	    &len, &used), -EMSGSIZE);
	cr_assert_eq(len, 65537);
	cr_assert_eq(codec_frame(BYTES(zero), PROTO_MAX_DATA, &cmd, &data,
	    &len, &used), -EMSGSIZE);
	cr_assert_eq(len, 0);
}

Test(codec, knows_which_codes_answer_a_command)
{
	static const char	 known[] = "cartdyspqhim+2-eb";
	static const char	 unknown[] = "ZOlf4#~\x00\xfe";

	for (size_t i = 0; i < sizeof known - 1; i++)
		cr_assert(codec_is_reply_code(known[i]), "'%c'", known[i]);
	for (size_t i = 0; i < sizeof unknown - 1; i++)
		cr_assert(!codec_is_reply_code(unknown[i]), "0x%02x",
		    (unsigned char)unknown[i]);
}

/* Filter-side string lists. */

Test(codec, decodes_string_list)
{
	char	**strs;
	size_t	  n;

	cr_assert_eq(codec_decode_strs(BYTES("<a@x>\0" "SIZE=1\0" "\0"),
	    &strs, &n), 0);
	cr_assert_eq(n, 3);
	cr_assert_str_eq(strs[0], "<a@x>");
	cr_assert_str_eq(strs[1], "SIZE=1");
	cr_assert_str_eq(strs[2], "");
	for (size_t i = 0; i < n; i++)
		free(strs[i]);
	free(strs);
}

Test(codec, decodes_empty_string_list)
{
	char	**strs;
	size_t	  n = 99;

	cr_assert_eq(codec_decode_strs(NULL, 0, &strs, &n), 0);
	cr_assert_eq(n, 0);
	free(strs);
}

Test(codec, refuses_string_list_without_final_nul)
{
	char	**strs;
	size_t	  n;

	cr_assert_eq(codec_decode_strs(BYTES("abc"), &strs, &n), -EPROTO);
	cr_assert_null(strs);
	cr_assert_eq(codec_decode_strs(BYTES("a\0" "b"), &strs, &n),
	    -EPROTO);
	cr_assert_null(strs);
	cr_assert_eq(n, 0);
}

/* struct mod helpers. */

struct action_case {
	enum mod_kind	 kind;
	uint32_t	 action;
	char		 name[16];
};

ParameterizedTestParameters(codec, names_each_mod_kind_and_its_action)
{
	static struct action_case cases[] = {
		{ MOD_ADDHEADER, MA_ADDHDRS, "addheader" },
		{ MOD_INSHEADER, MA_ADDHDRS, "insheader" },
		{ MOD_CHGHEADER, MA_CHGHDRS, "chgheader" },
		{ MOD_ADDRCPT, MA_ADDRCPT, "addrcpt" },
		{ MOD_ADDRCPT_PAR, MA_ADDRCPT_PAR, "addrcpt_par" },
		{ MOD_DELRCPT, MA_DELRCPT, "delrcpt" },
		{ MOD_CHGFROM, MA_CHGFROM, "chgfrom" },
		{ MOD_REPLBODY, MA_CHGBODY, "replbody" },
		{ MOD_QUARANTINE, MA_QUARANTINE, "quarantine" },
	};

	return cr_make_param_array(struct action_case, cases, NELEM(cases));
}

ParameterizedTest(struct action_case *tc, codec,
    names_each_mod_kind_and_its_action)
{
	cr_assert_str_eq(codec_mod_kind_name(tc->kind), tc->name);
	cr_assert_eq(codec_mod_action(tc->kind), tc->action, "%s", tc->name);
}

Test(codec, mod_helpers_tolerate_out_of_range_kind)
{
	cr_assert_str_eq(codec_mod_kind_name(MOD_KIND_COUNT), "?");
	cr_assert_eq(codec_mod_action(MOD_KIND_COUNT), 0);
}

Test(codec, copies_mod_deeply)
{
	struct mod	 src = { 0 }, dst;

	src.kind = MOD_CHGHEADER;
	src.index = 3;
	src.name = strdup("Subject");
	src.value = strdup("new");
	src.body = (uint8_t *)strdup("xyz");
	src.bodylen = 3;
	codec_mod_copy(&dst, &src);
	cr_assert_eq(dst.kind, MOD_CHGHEADER);
	cr_assert_eq(dst.index, 3);
	cr_assert_str_eq(dst.name, "Subject");
	cr_assert_neq(dst.name, src.name);
	cr_assert_str_eq(dst.value, "new");
	cr_assert_neq(dst.value, src.value);
	cr_assert_eq(dst.bodylen, 3);
	cr_assert_eq(memcmp(dst.body, "xyz", 3), 0);
	cr_assert_neq(dst.body, src.body);
	codec_mod_fini(&src);
	cr_assert_str_eq(dst.name, "Subject", "copy outlives the source");
	codec_mod_fini(&dst);
}

Test(codec, copies_mod_with_null_fields)
{
	struct mod	 src = { 0 }, dst;

	src.kind = MOD_ADDRCPT;
	src.name = strdup("<a@x>");
	codec_mod_copy(&dst, &src);
	cr_assert_str_eq(dst.name, "<a@x>");
	cr_assert_null(dst.value);
	cr_assert_null(dst.body);
	cr_assert_eq(dst.bodylen, 0);
	codec_mod_fini(&src);
	codec_mod_fini(&dst);
}

Test(codec, mod_fini_is_null_safe_and_idempotent)
{
	struct mod	 m = { 0 };

	codec_mod_fini(NULL);
	codec_mod_fini(&m);
	m.name = strdup("X-A");
	m.body = malloc(4);
	m.bodylen = 4;
	codec_mod_fini(&m);
	cr_assert_null(m.name);
	cr_assert_null(m.value);
	cr_assert_null(m.body);
	cr_assert_eq(m.bodylen, 0);
	codec_mod_fini(&m);
}

Test(codec, reply_and_optneg_fini_are_null_safe)
{
	struct codec_reply	 r;
	struct codec_optneg	 o;

	memset(&r, 0, sizeof r);
	memset(&o, 0, sizeof o);
	codec_reply_fini(NULL);
	codec_reply_fini(&r);
	codec_optneg_fini(NULL);
	codec_optneg_fini(&o);
}
