/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_heavy - heavy and odd mail from the MTA through the real
 * miltermux: header values of 64 KiB and more, 10,000 headers, 1,000
 * recipients, a 50 MiB body, every byte value, NUL bytes in header
 * values, bare CR and bare LF.
 *
 * The MTA side is tests/mtaclient.c, which sends exactly the packets it
 * is told (miltermux takes packets of up to 1 MiB from the MTA).  Behind
 * miltermux are two upstreams, both with on_failure=reject so that any
 * upstream failure shows as a wrong answer: a real libmilter filter
 * (testmilter, which drops a session over any packet above 65,535 data
 * bytes, and logs what libmilter handed it) and tests/recorder.c, which
 * records every packet as it came, size and bytes.  Each test checks the
 * answer the MTA got, what both upstreams received, and that no packet
 * to an upstream exceeded 65,535 data bytes.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fixture.h"
#include "harness.h"
#include "mtaclient.h"
#include "procstat.h"
#include "recorder.h"

#define MIB		(1024 * 1024)
#define CHUNK		65535	/* what Postfix and Sendmail send */

struct heavy {
	struct env	 e;
	struct recorder	*rec;
	struct mta	 m;
};

/*
 * setup - testmilter "tm" (with tm_args, NULL-terminated) and the
 * recorder "rec" behind a miltermux; the MTA client connected,
 * negotiated, through connect and helo.
 */
static void
setup_offer(struct heavy *h, const char *const *tm_args, uint32_t offer)
{
	struct up	 ups[2] = {
		{ "tm", { NULL }, "\"on_failure\": \"reject\"" },
		{ "rec", { NULL }, "\"on_failure\": \"reject\"" },
	};
	struct mta_result r;
	char		*sock;

	memset(h, 0, sizeof *h);
	for (size_t i = 0; tm_args != NULL && tm_args[i] != NULL; i++)
		ups[0].args[i] = tm_args[i];
	env_start_upstreams(&h->e, ups, 1);
	sock = h_path("rec.sock");
	h->rec = rec_start(sock, true);
	cr_assert_not_null(h->rec, "cannot start the recorder");
	free(sock);
	env_start_mux(&h->e, ups, 2, "\"timeouts\": { \"content\": 60 }", 0);
	cr_assert_eq(mta_open(&h->m, h->e.mux_spec, 60), 0);
	cr_assert_eq(mta_negotiate(&h->m, MA_ALL, offer), 0);
	cr_assert_eq(mta_connect(&h->m, "client.example", "192.0.2.1", &r), 0);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE);
	cr_assert_eq(mta_helo(&h->m, "client.example", &r), 0);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE);
}

/* setup - as an MTA that offers everything, Postfix's way */
static void
setup(struct heavy *h, const char *const *tm_args)
{
	setup_offer(h, tm_args, MP_ALL_V6);
}

/* envelope - MAIL, nrcpt recipients <rN@example.net>, DATA */
static void
envelope(struct heavy *h, size_t nrcpt, struct mta_result *rcpt_results)
{
	const char		*from[1] = { "<alice@example.org>" };
	const char		*qid[2] = { "i", "HEAVY1" };
	struct mta_result	 r;

	cr_assert_eq(mta_macros(&h->m, MC_MAIL, qid, 1), 0);
	cr_assert_eq(mta_mail(&h->m, from, 1, &r), 0);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE);
	for (size_t i = 0; i < nrcpt; i++) {
		char		*addr = h_xasprintf("<r%zu@example.net>", i);
		const char	*argv[1] = { addr };

		cr_assert_eq(mta_rcpt(&h->m, argv, 1,
		    rcpt_results != NULL ? &rcpt_results[i] : &r), 0,
		    "recipient %zu got no answer", i);
		if (rcpt_results == NULL)
			cr_assert_eq(r.verdict, VERDICT_CONTINUE);
		free(addr);
	}
	cr_assert_eq(mta_data(&h->m, &r), 0);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE);
}

static void
header(struct heavy *h, const char *name, const void *value, size_t vlen)
{
	struct mta_result	 r;

	cr_assert_eq(mta_header(&h->m, name, value, vlen, &r), 0,
	    "header %.40s got no answer", name);
	/* miltermux asks for no reply to headers when the MTA offers it. */
	cr_assert_eq(r.verdict, (h->m.proto & MP_NR_HDR) != 0 ? VERDICT_NONE :
	    VERDICT_CONTINUE, "header %.40s: verdict %s", name,
	    proto_verdict_name(r.verdict));
}

static void
eoh(struct heavy *h)
{
	struct mta_result	 r;

	cr_assert_eq(mta_eoh(&h->m, &r), 0);
	cr_assert_eq(r.verdict, (h->m.proto & MP_NR_EOH) != 0 ? VERDICT_NONE :
	    VERDICT_CONTINUE);
}

static void
body(struct heavy *h, const void *data, size_t len, size_t chunk)
{
	const uint8_t		*p = data;
	struct mta_result	 r;

	for (size_t off = 0; off < len; off += chunk) {
		size_t	 n = len - off < chunk ? len - off : chunk;

		cr_assert_eq(mta_body(&h->m, p + off, n, &r), 0,
		    "body at %zu got no answer", off);
		cr_assert_eq(r.verdict, (h->m.proto & MP_NR_BODY) != 0 ?
		    VERDICT_NONE : VERDICT_CONTINUE);
	}
}

/* eom - end of message; the message must pass (continue) */
static void
eom(struct heavy *h, struct mta_result *r)
{
	cr_assert_eq(mta_eom(&h->m, r), 0, "no answer at end of message");
	cr_assert_eq(r->verdict, VERDICT_CONTINUE,
	    "end of message: %s %s", proto_verdict_name(r->verdict),
	    r->text != NULL ? r->text : "");
}

/*
 * check_upstreams - no upstream failed, none got a packet over the
 * limit, and the recorder saw n ends of message.  *st is the recorder's
 * record (caller frees with rec_stats_fini).
 */
static void
check_upstreams(struct heavy *h, size_t n, struct rec_stats *st)
{
	char	*log;

	cr_assert_eq(rec_wait_eoms(h->rec, n, 30), 0,
	    "the recorder did not see the end of message");
	rec_snapshot(h->rec, st);
	cr_assert_eq(st->over_limit, 0, "%zu packets over 65,535 bytes "
	    "(largest %zu, command '%c')", st->over_limit, st->max_data,
	    st->max_cmd);
	cr_assert_leq(st->max_data, PROTO_MAX_DATA);
	cr_assert_eq(st->bad, 0, "the recorder got malformed packets");
	log = env_mux_log(&h->e);
	HASNT(log, "applying on_failure");
	free(log);
}

/* tm_log_count - lines of testmilter's log holding needle */
static size_t
tm_log_count(struct heavy *h, const char *needle)
{
	char	*log = h_read_file(h->e.up_log[0]), *p;
	size_t	 n = 0;

	cr_assert_not_null(log);
	for (p = log; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	free(log);
	return n;
}

/* tm_header_value - the value testmilter logged for header name */
static char *
tm_header_value(struct heavy *h, const char *name)
{
	char	*log = h_read_file(h->e.up_log[0]), *needle, *p, *end, *v;

	cr_assert_not_null(log);
	needle = h_xasprintf(" header %s: ", name);
	p = strstr(log, needle);
	cr_assert_not_null(p, "testmilter did not log header %s", name);
	p += strlen(needle);
	end = strchr(p, '\n');
	cr_assert_not_null(end);
	v = h_xmalloc((size_t)(end - p) + 1);
	memcpy(v, p, (size_t)(end - p));
	v[end - p] = '\0';
	free(needle);
	free(log);
	return v;
}

/* tm_body_bytes - the body chunk sizes testmilter logged, added up */
static size_t
tm_body_bytes(struct heavy *h, size_t *chunks, size_t *largest)
{
	char	*log = h_read_file(h->e.up_log[0]), *p;
	size_t	 total = 0, n;

	cr_assert_not_null(log);
	*chunks = *largest = 0;
	for (p = log; (p = strstr(p, " body ")) != NULL; p += 6) {
		n = strtoul(p + 6, NULL, 10);
		total += n;
		(*chunks)++;
		if (n > *largest)
			*largest = n;
	}
	free(log);
	return total;
}

static void
pattern(uint8_t *p, size_t len, size_t seed)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)('a' + (i + seed) % 26);
}

/* --------------------------------------------------------------- */

struct big_header_case {
	size_t	 name_len;
	size_t	 value_len;
};

ParameterizedTestParameters(heavy, oversized_header_is_cut_to_fit_a_packet)
{
	static struct big_header_case cases[] = {
		{ 5, 70000 },		/* one value of 70,000 bytes */
		{ 5, 200 * 1024 },	/* 200 KiB */
		{ 5, 65535 - 5 - 2 },	/* exactly fits */
		{ 5, 65535 - 5 - 1 },	/* one byte too many */
		{ 70000, 10 },		/* a name too long for any packet */
	};

	return cr_make_param_array(struct big_header_case, cases,
	    sizeof cases / sizeof cases[0]);
}

ParameterizedTest(struct big_header_case *tc, heavy,
    oversized_header_is_cut_to_fit_a_packet, .timeout = 60)
{
	struct heavy		 h;
	struct mta_result	 r;
	struct rec_stats	 st;
	const struct rec_header	*got;
	char			*name = h_xmalloc(tc->name_len + 1);
	uint8_t			*value = h_xmalloc(tc->value_len + 1);
	size_t			 room, want_nlen, want_vlen;
	char			*logged;

	memset(name, 'N', tc->name_len);
	memcpy(name, "X-Big", tc->name_len < 5 ? tc->name_len : 5);
	name[tc->name_len] = '\0';
	pattern(value, tc->value_len, 0);
	value[tc->value_len] = '\0';
	/* The largest header an upstream can take: name, NUL, value, NUL
	 * in 65,535 bytes.  A name that cannot fit is cut too, with an
	 * empty value. */
	want_nlen = tc->name_len <= PROTO_MAX_DATA - 2 ? tc->name_len :
	    PROTO_MAX_DATA - 2;
	room = PROTO_MAX_DATA - want_nlen - 2;
	want_vlen = tc->value_len < room ? tc->value_len : room;

	setup(&h, NULL);
	envelope(&h, 1, NULL);
	header(&h, "From", "<alice@example.org>", 19);
	header(&h, name, value, tc->value_len);
	header(&h, "Subject", "after the big one", 17);
	eoh(&h);
	body(&h, "hello\r\n", 7, CHUNK);
	eom(&h, &r);
	mta_result_fini(&r);

	check_upstreams(&h, 1, &st);
	cr_assert_eq(st.nheaders, 3);
	got = &st.headers[1];
	cr_assert_eq(strlen(got->name), want_nlen);
	cr_assert(strncmp(got->name, name, want_nlen) == 0);
	cr_assert_eq(got->vlen, want_vlen, "the recorder got %zu bytes of "
	    "value, expected %zu", got->vlen, want_vlen);
	cr_assert(memcmp(got->value, value, want_vlen) == 0,
	    "the value is not the original's beginning");
	cr_assert_str_eq(st.headers[2].name, "Subject");
	cr_assert_str_eq(st.headers[2].value, "after the big one");
	if (tc->name_len < 100) {
		logged = tm_header_value(&h, name);
		cr_assert_eq(strlen(logged), want_vlen);
		cr_assert(memcmp(logged, value, want_vlen) == 0);
		free(logged);
	}
	cr_assert_eq(tm_log_count(&h, " eom"), 1);
	cr_log_info("header %zu+%zu bytes: upstreams got %zu+%zu, largest "
	    "packet %zu", tc->name_len, tc->value_len, want_nlen, want_vlen,
	    st.max_data);
	rec_stats_fini(&st);
	mta_close(&h.m);
	rec_stop(h.rec);
	free(name);
	free(value);
}

Test(heavy, ten_thousand_headers_arrive_in_order_and_edits_land,
    .timeout = 120)
{
	const char *const	 args[] = { "--addheader", "X-Added:yes",
				    "--chgheader", "2:X-H-07777:changed",
				    NULL };
	struct heavy		 h;
	struct mta_result	 r;
	struct rec_stats	 st;
	char			 name[32], value[64];
	bool			 added = false, changed = false;

	setup(&h, args);
	envelope(&h, 1, NULL);
	for (size_t i = 0; i < 10000; i++) {
		/* Header X-H-07777 comes twice: the change is meant for
		 * its second occurrence. */
		snprintf(name, sizeof name, "X-H-%05zu", i == 9000 ? 7777 : i);
		snprintf(value, sizeof value, "value %zu", i);
		header(&h, name, value, strlen(value));
	}
	eoh(&h);
	body(&h, "hello\r\n", 7, CHUNK);
	eom(&h, &r);
	for (size_t i = 0; i < r.nmods; i++) {
		const struct mod *m = &r.mods[i];

		if (m->kind == MOD_ADDHEADER &&
		    strcmp(m->name, "X-Added") == 0)
			added = true;
		if (m->kind == MOD_CHGHEADER &&
		    strcmp(m->name, "X-H-07777") == 0) {
			cr_assert_eq(m->index, 2);
			cr_assert_str_eq(m->value, "changed");
			changed = true;
		}
	}
	cr_assert(added && changed, "modifications missing (%zu received)",
	    r.nmods);
	mta_result_fini(&r);

	check_upstreams(&h, 1, &st);
	cr_assert_eq(st.nheaders, 10000);
	for (size_t i = 0; i < 10000; i++) {
		snprintf(name, sizeof name, "X-H-%05zu", i == 9000 ? 7777 : i);
		snprintf(value, sizeof value, "value %zu", i);
		cr_assert_str_eq(st.headers[i].name, name);
		cr_assert_str_eq(st.headers[i].value, value);
	}
	cr_assert_eq(tm_log_count(&h, " header X-H-"), 10000);
	rec_stats_fini(&st);
	mta_close(&h.m);
	rec_stop(h.rec);
}

Test(heavy, thousand_recipients_each_get_their_answer, .timeout = 120)
{
	const char *const	 args[] = { "--reject-rcpt",
				    "<r500@example.net>", "--delrcpt",
				    "<r7@example.net>", NULL };
	struct heavy		 h;
	struct mta_result	 r, *rr = h_xmalloc(1000 * sizeof *rr);
	struct rec_stats	 st;
	bool			 deleted = false;

	setup(&h, args);
	envelope(&h, 1000, rr);
	for (size_t i = 0; i < 1000; i++) {
		cr_assert_eq(rr[i].verdict, i == 500 ? VERDICT_REJECT :
		    VERDICT_CONTINUE, "recipient %zu: %s", i,
		    proto_verdict_name(rr[i].verdict));
		mta_result_fini(&rr[i]);
	}
	header(&h, "Subject", "many", 4);
	eoh(&h);
	body(&h, "hello\r\n", 7, CHUNK);
	eom(&h, &r);
	for (size_t i = 0; i < r.nmods; i++)
		if (r.mods[i].kind == MOD_DELRCPT &&
		    strcmp(r.mods[i].name, "<r7@example.net>") == 0)
			deleted = true;
	cr_assert(deleted, "the delrcpt did not reach the MTA");
	mta_result_fini(&r);

	check_upstreams(&h, 1, &st);
	cr_assert_eq(st.rcpts, 1000);
	cr_assert_eq(tm_log_count(&h, " envrcpt <r"), 1000);
	rec_stats_fini(&st);
	mta_close(&h.m);
	rec_stop(h.rec);
	free(rr);
}

/*
 * The body is streamed: miltermux keeps at most a bounded number of
 * packets in flight per upstream, so 50 MiB must not show in its peak
 * resident memory (VmHWM).
 */
Test(heavy, body_of_50_MiB_streams_in_bounded_memory, .timeout = 150)
{
	const size_t		 total = 50 * MIB;
	struct heavy		 h;
	struct mta_result	 r;
	struct rec_stats	 st;
	uint8_t			*chunk = h_xmalloc(CHUNK);
	uint64_t		 hash;
	long			 hwm0, rss0, hwm1, rss1;
	size_t			 chunks, largest;
	double			 t0, t1;

	setup(&h, NULL);
	/* A first small message warms miltermux up: its threads, arenas
	 * and buffers exist before the baseline is taken. */
	envelope(&h, 1, NULL);
	header(&h, "Subject", "warm-up", 7);
	eoh(&h);
	body(&h, "hello\r\n", 7, CHUNK);
	eom(&h, &r);
	mta_result_fini(&r);
	cr_assert_eq(rec_wait_eoms(h.rec, 1, 30), 0);
	hwm0 = ps_hwm_kb(h.e.mux);
	rss0 = ps_rss_kb(h.e.mux);
	cr_assert(hwm0 > 0 && rss0 > 0);

	/* The recorder hashes every body byte it got, the warm-up's too. */
	hash = rec_hash(REC_HASH0, "hello\r\n", 7);
	t0 = h_now();
	envelope(&h, 1, NULL);
	header(&h, "Subject", "big", 3);
	eoh(&h);
	for (size_t off = 0; off < total; off += CHUNK) {
		size_t	 n = total - off < CHUNK ? total - off : CHUNK;

		pattern(chunk, n, off / CHUNK);
		hash = rec_hash(hash, chunk, n);
		body(&h, chunk, n, CHUNK);
	}
	eom(&h, &r);
	t1 = h_now();
	mta_result_fini(&r);
	hwm1 = ps_hwm_kb(h.e.mux);
	rss1 = ps_rss_kb(h.e.mux);
	cr_log_info("50 MiB body in %.1f s; miltermux VmHWM %ld -> %ld KiB, "
	    "VmRSS %ld -> %ld KiB", t1 - t0, hwm0, hwm1, rss0, rss1);
	if (PS_MEMORY_MEANINGFUL) {
		cr_assert_leq(hwm1 - hwm0, 32 * 1024, "peak memory grew by "
		    "%ld KiB for a 50 MiB body", hwm1 - hwm0);
		cr_assert_leq(rss1 - rss0, 32 * 1024);
	} else
		cr_log_info("sanitizer build: memory bounds not checked");

	check_upstreams(&h, 2, &st);
	/* The warm-up's 7 bytes come first. */
	cr_assert_eq(st.body_bytes, total + 7);
	cr_assert_eq(st.body_hash, hash, "the body bytes changed on the way");
	cr_assert_eq(tm_body_bytes(&h, &chunks, &largest), total + 7);
	cr_assert_leq(largest, PROTO_MAX_DATA);
	rec_stats_fini(&st);
	free(chunk);
	mta_close(&h.m);
	rec_stop(h.rec);
}

/* The MTA may send body packets of up to 1 MiB (miltermux accepts them);
 * upstreams still get packets of at most 65,535 bytes. */
Test(heavy, body_packets_of_1_MiB_are_split_for_upstreams, .timeout = 60)
{
	const size_t		 total = 8 * MIB;
	struct heavy		 h;
	struct mta_result	 r;
	struct rec_stats	 st;
	uint8_t			*data = h_xmalloc(total);
	size_t			 chunks, largest;

	pattern(data, total, 3);
	setup(&h, NULL);
	envelope(&h, 1, NULL);
	header(&h, "Subject", "big packets", 11);
	eoh(&h);
	body(&h, data, total, MIB);
	eom(&h, &r);
	mta_result_fini(&r);

	check_upstreams(&h, 1, &st);
	cr_assert_eq(st.body_bytes, total);
	cr_assert_eq(st.body_hash, rec_hash(REC_HASH0, data, total));
	cr_assert_geq(st.body_packets, total / PROTO_MAX_DATA);
	cr_assert_eq(tm_body_bytes(&h, &chunks, &largest), total);
	cr_assert_leq(largest, PROTO_MAX_DATA);
	rec_stats_fini(&st);
	free(data);
	mta_close(&h.m);
	rec_stop(h.rec);
}

Test(heavy, binary_body_keeps_every_byte_value, .timeout = 60)
{
	const size_t		 total = 256 * 1024 + 77;
	struct heavy		 h;
	struct mta_result	 r;
	struct rec_stats	 st;
	uint8_t			*data = h_xmalloc(total);
	size_t			 chunks, largest;

	/* Every byte value, NUL, bare CR and bare LF, at every offset
	 * modulo 256, across packet boundaries of odd size. */
	for (size_t i = 0; i < total; i++)
		data[i] = (uint8_t)(i * 7 + i / 256);
	setup(&h, NULL);
	envelope(&h, 1, NULL);
	header(&h, "Content-Type", "application/octet-stream", 24);
	eoh(&h);
	body(&h, data, total, 4093);
	eom(&h, &r);
	mta_result_fini(&r);

	check_upstreams(&h, 1, &st);
	cr_assert_eq(st.body_bytes, total);
	cr_assert_eq(st.body_hash, rec_hash(REC_HASH0, data, total),
	    "the body bytes changed on the way");
	cr_assert_eq(tm_body_bytes(&h, &chunks, &largest), total);
	rec_stats_fini(&st);
	free(data);
	mta_close(&h.m);
	rec_stop(h.rec);
}

/*
 * A header value is a C string to libmilter: a NUL inside it ends it
 * there (libmilter's dec_arg2).  miltermux must pass on what libmilter
 * gave it, and neither fail nor send the bytes after the NUL.
 */
Test(heavy, nul_in_header_value_ends_the_value, .timeout = 60)
{
	struct heavy		 h;
	struct mta_result	 r;
	struct rec_stats	 st;
	char			*logged;

	setup(&h, NULL);
	envelope(&h, 1, NULL);
	header(&h, "X-Nul", "before\0after", 12);
	header(&h, "X-Lead-Nul", "\0hidden", 7);
	header(&h, "X-Many-Nuls", "a\0\0\0b\0", 6);
	header(&h, "Subject", "still here", 10);
	eoh(&h);
	body(&h, "hello\r\n", 7, CHUNK);
	eom(&h, &r);
	mta_result_fini(&r);

	check_upstreams(&h, 1, &st);
	cr_assert_eq(st.nheaders, 4);
	cr_assert_eq(st.headers[0].vlen, 6);
	cr_assert_str_eq(st.headers[0].value, "before");
	cr_assert_eq(st.headers[1].vlen, 0);
	cr_assert_eq(st.headers[2].vlen, 1);
	cr_assert_str_eq(st.headers[2].value, "a");
	cr_assert_str_eq(st.headers[3].value, "still here");
	logged = tm_header_value(&h, "X-Nul");
	cr_assert_str_eq(logged, "before");
	free(logged);
	rec_stats_fini(&st);
	mta_close(&h.m);
	rec_stop(h.rec);
}

Test(heavy, bare_cr_and_bare_lf_pass_unchanged, .timeout = 60)
{
	static const char	 b[] = "line\rwith CR\nline with LF\r\n\r\r\n\n"
				    "\r.\r\n..\n.\r\nend";
	struct heavy		 h;
	struct mta_result	 r;
	struct rec_stats	 st;
	char			*logged;

	setup(&h, NULL);
	envelope(&h, 1, NULL);
	header(&h, "X-CR", "a\rb", 3);
	header(&h, "X-LF", "c\nd", 3);
	header(&h, "X-CRLF", "e\r\nf\r", 5);
	header(&h, "X-Only-CR", "\r", 1);
	eoh(&h);
	body(&h, b, sizeof b - 1, 5);
	eom(&h, &r);
	mta_result_fini(&r);

	check_upstreams(&h, 1, &st);
	cr_assert_eq(st.nheaders, 4);
	cr_assert_str_eq(st.headers[0].value, "a\rb");
	cr_assert_str_eq(st.headers[1].value, "c\nd");
	cr_assert_str_eq(st.headers[2].value, "e\r\nf\r");
	cr_assert_str_eq(st.headers[3].value, "\r");
	cr_assert_eq(st.body_bytes, sizeof b - 1);
	cr_assert_eq(st.body_hash, rec_hash(REC_HASH0, b, sizeof b - 1));
	logged = tm_header_value(&h, "X-CRLF");
	cr_assert_str_eq(logged, "e\\r\\nf\\r");
	free(logged);
	rec_stats_fini(&st);
	mta_close(&h.m);
	rec_stop(h.rec);
}

/*
 * Envelope items no MTA sends (Postfix and Sendmail cut SMTP command
 * lines at 2 KiB) but a 1 MiB packet limit lets through: each upstream
 * packet must still stay within 65,535 bytes, and the message pass.
 */
enum odd_item {
	ODD_HELO = 0,
	ODD_CONNECT_HOST,
	ODD_MAIL_ADDR,
	ODD_MAIL_PARAM,
	ODD_RCPT_ADDR,
	ODD_MACRO,
	ODD_ITEM_COUNT
};

ParameterizedTestParameters(heavy, oversized_envelope_item_fits_a_packet)
{
	static enum odd_item cases[] = {
		ODD_HELO, ODD_CONNECT_HOST, ODD_MAIL_ADDR, ODD_MAIL_PARAM,
		ODD_RCPT_ADDR, ODD_MACRO,
	};

	return cr_make_param_array(enum odd_item, cases,
	    sizeof cases / sizeof cases[0]);
}

ParameterizedTest(enum odd_item *tc, heavy,
    oversized_envelope_item_fits_a_packet, .timeout = 60)
{
	struct up	 ups[2] = {
		{ "tm", { NULL }, "\"on_failure\": \"reject\"" },
		{ "rec", { NULL }, "\"on_failure\": \"reject\"" },
	};
	struct heavy	 h;
	struct mta_result r;
	struct rec_stats st;
	const size_t	 big = 70000;
	char		*s = h_xmalloc(big + 1), *sock;
	const char	*from[3] = { "<alice@example.org>", "SIZE=100", NULL };
	const char	*to[1] = { "<bob@example.net>" };
	const char	*macro[2] = { "{mail_addr}", NULL };

	memset(s, 'x', big);
	s[0] = '<';
	s[big - 1] = '>';
	s[big] = '\0';
	memset(&h, 0, sizeof h);
	env_start_upstreams(&h.e, ups, 1);
	sock = h_path("rec.sock");
	h.rec = rec_start(sock, true);
	cr_assert_not_null(h.rec);
	free(sock);
	env_start_mux(&h.e, ups, 2, NULL, 0);
	cr_assert_eq(mta_open(&h.m, h.e.mux_spec, 60), 0);
	cr_assert_eq(mta_negotiate(&h.m, MA_ALL, MP_ALL_V6), 0);
	cr_assert_eq(mta_connect(&h.m, *tc == ODD_CONNECT_HOST ? s :
	    "client.example", "192.0.2.1", &r), 0);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE);
	cr_assert_eq(mta_helo(&h.m, *tc == ODD_HELO ? s : "client.example",
	    &r), 0);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE);
	if (*tc == ODD_MAIL_ADDR)
		from[0] = s;
	if (*tc == ODD_MAIL_PARAM)
		from[2] = s;
	if (*tc == ODD_RCPT_ADDR)
		to[0] = s;
	if (*tc == ODD_MACRO) {
		macro[1] = s;
		cr_assert_eq(mta_macros(&h.m, MC_MAIL, macro, 1), 0);
	}
	cr_assert_eq(mta_mail(&h.m, from, from[2] != NULL ? 3 : 2, &r), 0);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE, "envfrom: %s",
	    proto_verdict_name(r.verdict));
	cr_assert_eq(mta_rcpt(&h.m, to, 1, &r), 0);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE, "envrcpt: %s",
	    proto_verdict_name(r.verdict));
	cr_assert_eq(mta_data(&h.m, &r), 0);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE);
	header(&h, "Subject", "odd envelope", 12);
	eoh(&h);
	body(&h, "hello\r\n", 7, CHUNK);
	eom(&h, &r);
	mta_result_fini(&r);

	check_upstreams(&h, 1, &st);
	cr_assert_eq(st.rcpts, 1);
	if (*tc == ODD_HELO)
		cr_assert_eq(st.helo_len, PROTO_MAX_DATA - 1);
	cr_assert_eq(tm_log_count(&h, " eom"), 1);
	rec_stats_fini(&st);
	free(s);
	mta_close(&h.m);
	rec_stop(h.rec);
}

/*
 * No reply to headers, end of headers and body chunks: miltermux asks
 * the MTA for none (it sends them on without waiting anyway), so a
 * reject an upstream gives to a header is held and given at end of
 * message, when the SMTP client would hear it anyway.
 */
static const char *const header_reject[] = {
	"--verdict", "header=reject", "--reply",
	"header=550 5.7.1 Header refused", NULL
};

/* seen - wait (bounded) until testmilter has logged needle */
static void
seen(struct heavy *h, const char *needle)
{
	struct timespec	 pause = { 0, 10 * 1000 * 1000 };

	for (int i = 0; i < 3000 && tm_log_count(h, needle) == 0; i++)
		nanosleep(&pause, NULL);
	cr_assert_neq(tm_log_count(h, needle), 0, "no \"%s\"", needle);
}

/*
 * held_reject - no reply before end of message, and there the reject
 * with the upstream's text
 */
static void
held_reject(bool with_body)
{
	struct heavy		 h;
	struct mta_result	 r;

	setup(&h, header_reject);
	cr_assert_eq(h.m.proto & (MP_NR_HDR | MP_NR_EOH | MP_NR_BODY),
	    MP_NR_HDR | MP_NR_EOH | MP_NR_BODY, "not all NR bits asked for");
	envelope(&h, 1, NULL);
	header(&h, "Subject", "first", 5);
	/* The upstream has rejected by the time the next header comes. */
	seen(&h, " header Subject");
	header(&h, "X-After", "second", 6);
	eoh(&h);
	if (with_body)
		body(&h, "hello\r\n", 7, CHUNK);
	cr_assert_eq(mta_eom(&h.m, &r), 0);
	cr_assert_eq(r.verdict, VERDICT_REJECT, "%s",
	    proto_verdict_name(r.verdict));
	cr_assert_not_null(r.text);
	cr_assert_str_eq(r.text, "550 5.7.1 Header refused");
	mta_result_fini(&r);
	/* The next message starts clean. */
	envelope(&h, 1, NULL);
	cr_assert_eq(mta_abort(&h.m), 0);
	mta_close(&h.m);
	rec_stop(h.rec);
}

Test(noreply, header_reject_with_body_is_given_at_end_of_message,
    .timeout = 60)
{
	held_reject(true);
}

Test(noreply, header_reject_without_body_is_given_at_end_of_message,
    .timeout = 60)
{
	held_reject(false);
}

/*
 * An MTA without NR support gets a reply to every header: continue
 * until the upstream's reject is known, then the reject.
 */
Test(noreply, mta_without_no_reply_gets_every_reply, .timeout = 60)
{
	struct heavy		 h;
	struct mta_result	 r;

	setup_offer(&h, header_reject, MP_ALL_V6 & ~MP_ALL_NR);
	cr_assert_eq(h.m.proto & MP_ALL_NR, 0);
	envelope(&h, 1, NULL);
	cr_assert_eq(mta_header(&h.m, "Subject", "first", 5, &r), 0);
	if (r.verdict == VERDICT_CONTINUE) {
		mta_result_fini(&r);
		seen(&h, " header Subject");
		cr_assert_eq(mta_eoh(&h.m, &r), 0);
	}
	if (r.verdict == VERDICT_CONTINUE) {
		mta_result_fini(&r);
		cr_assert_eq(mta_eom(&h.m, &r), 0);
	}
	cr_assert_eq(r.verdict, VERDICT_REJECT, "%s",
	    proto_verdict_name(r.verdict));
	cr_assert_str_eq(r.text, "550 5.7.1 Header refused");
	mta_result_fini(&r);
	mta_close(&h.m);
	rec_stop(h.rec);
}
