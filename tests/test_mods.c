/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_mods - end-of-message modifications through the real miltermux,
 * seen from a raw MTA (tests/mtaclient.c): what it is asked to grant,
 * how a change of an absent header reaches an MTA that did not grant
 * ADDHDRS, the per-upstream cap on modifications (max_modifications),
 * and progress while a large edit set is applied.
 *
 * The upstreams are real libmilter filters (tests/milters/testmilter);
 * the MTA side sends exactly what it is told and checks every packet
 * that comes back.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "harness.h"
#include "mtaclient.h"

/*
 * message - one message through miltermux as an MTA that offers
 * actions (and every protocol step): negotiate, connect, helo, mail,
 * rcpt, data, one Subject, eoh, one body chunk; *r gets the end of
 * message reply (caller frees with mta_result_fini).
 */
static void
message(struct env *e, struct mta *m, uint32_t actions,
    struct mta_result *r)
{
	const char	*from[1] = { "<alice@example.org>" };
	const char	*rcpt[1] = { "<bob@example.net>" };
	const char	*qid[2] = { "i", "MODS1" };

	cr_assert_eq(mta_open(m, e->mux_spec, 60), 0);
	cr_assert_eq(mta_negotiate(m, actions, MP_ALL_V6), 0);
	cr_assert_eq(mta_connect(m, "client.example", "192.0.2.1", NULL), 0);
	cr_assert_eq(mta_helo(m, "client.example", NULL), 0);
	cr_assert_eq(mta_macros(m, MC_MAIL, qid, 1), 0);
	cr_assert_eq(mta_mail(m, from, 1, NULL), 0);
	cr_assert_eq(mta_rcpt(m, rcpt, 1, NULL), 0);
	cr_assert_eq(mta_data(m, NULL), 0);
	cr_assert_eq(mta_header(m, "Subject", "hello", 5, NULL), 0);
	cr_assert_eq(mta_eoh(m, NULL), 0);
	cr_assert_eq(mta_body(m, "hello\r\n", 7, NULL), 0);
	cr_assert_eq(mta_eom(m, r), 0, "no answer at end of message");
}

/* count_lines - lines of log holding needle */
static size_t
count_lines(const char *log, const char *needle)
{
	size_t		 n = 0;
	const char	*p;

	for (p = log; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	return n;
}

/*
 * An upstream with CHGHDRS only changes a header the message lacks.  An
 * MTA that offers ADDHDRS is asked for it and gets an addheader; one
 * that does not gets the same request as a change no header reaches,
 * which the MTA turns into an append.
 */
Test(mods, change_of_an_absent_header_asks_for_addhdrs, .timeout = 60)
{
	struct env		 e;
	struct up		 ups[] = {
		{ "a", { "--chgheader", "1:X-Absent:new", NULL }, NULL },
	};
	struct mta		 m;
	struct mta_result	 r;

	env_setup(&e, ups, 1, NULL, 0);
	message(&e, &m, MA_ALL, &r);
	cr_assert_eq(m.actions & (MA_ADDHDRS | MA_CHGHDRS),
	    MA_ADDHDRS | MA_CHGHDRS, "actions asked: 0x%x", m.actions);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE);
	cr_assert_eq(r.nmods, 1, "%zu modifications", r.nmods);
	cr_assert_eq(r.mods[0].kind, MOD_ADDHEADER);
	cr_assert_str_eq(r.mods[0].name, "X-Absent");
	cr_assert_str_eq(r.mods[0].value, "new");
	HASNT(env_wait_log(&e, "modification applied"), "refused");
	mta_result_fini(&r);
	mta_close(&m);
	env_stop(&e, 0);
}

Test(mods, change_of_an_absent_header_without_addhdrs_is_a_change,
    .timeout = 60)
{
	struct env		 e;
	struct up		 ups[] = {
		{ "a", { "--chgheader", "1:X-Absent:new", NULL }, NULL },
	};
	struct mta		 m;
	struct mta_result	 r;

	env_setup(&e, ups, 1, NULL, 0);
	message(&e, &m, MA_ALL & ~(uint32_t)MA_ADDHDRS, &r);
	cr_assert_eq(m.actions & (MA_ADDHDRS | MA_CHGHDRS), MA_CHGHDRS,
	    "actions asked: 0x%x", m.actions);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE);
	cr_assert_eq(r.nmods, 1, "%zu modifications", r.nmods);
	cr_assert_eq(r.mods[0].kind, MOD_CHGHEADER);
	cr_assert_eq(r.mods[0].index, (uint32_t)INT32_MAX);
	cr_assert_str_eq(r.mods[0].name, "X-Absent");
	cr_assert_str_eq(r.mods[0].value, "new");
	HASNT(env_wait_log(&e, "modification applied"), "refused");
	mta_result_fini(&r);
	mta_close(&m);
	env_stop(&e, 0);
}

/*
 * max_modifications: an upstream that sends more than its cap has
 * failed (its on_failure, here reject, decides), with one log line
 * naming it; one that stays at its own cap (above the top-level
 * default) is untouched.
 */
Test(mods, over_max_modifications_is_the_upstreams_failure, .timeout = 60)
{
	struct env		 e;
	struct up		 ups[] = {
		{ "exact", { "--repeat", "8", "--addheader", "X-Exact:v",
		    NULL }, "\"max_modifications\": 8" },
		{ "flood", { "--repeat", "6", "--addheader", "X-Flood:v",
		    NULL }, "\"on_failure\": \"reject\"" },
	};
	struct mta		 m;
	struct mta_result	 r;
	char			*log;

	env_setup(&e, ups, 2, "\"max_modifications\": 5", 0);
	message(&e, &m, MA_ALL, &r);
	cr_assert_eq(r.verdict, VERDICT_REJECT, "%s",
	    proto_verdict_name(r.verdict));
	cr_assert_eq(r.nmods, 0);
	mta_result_fini(&r);
	mta_close(&m);
	log = env_wait_log(&e, "merged reject");
	cr_assert_eq(count_lines(log, "upstream flood:"), 1, "%s", log);
	HAS(log, "upstream flood: eom: more than 5 modifications "
	    "(max_modifications)");
	HAS(log, "applying on_failure=reject");
	HASNT(log, "upstream exact:");
	free(log);
	env_stop(&e, 0);
}

Test(mods, modifications_up_to_the_cap_pass, .timeout = 60)
{
	struct env		 e;
	struct up		 ups[] = {
		{ "exact", { "--repeat", "5", "--addheader", "X-Exact:v",
		    NULL }, "\"on_failure\": \"reject\"" },
	};
	struct mta		 m;
	struct mta_result	 r;

	env_setup(&e, ups, 1, "\"max_modifications\": 5", 0);
	message(&e, &m, MA_ALL, &r);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE, "%s",
	    proto_verdict_name(r.verdict));
	cr_assert_eq(r.nmods, 5);
	mta_result_fini(&r);
	mta_close(&m);
	env_stop(&e, 0);
}

/*
 * A large edit set: 25,000 inserts at one place.  The MTA sees them
 * all, in order, with progress packets among them (one every
 * FRONT_PROGRESS_MODS applied), not only before them.
 */
Test(mods, large_edit_set_is_applied_with_progress, .timeout = 120)
{
	struct env		 e;
	struct up		 ups[] = {
		{ "big", { "--repeat", "25000", "--insheader", "1:X-Big:v",
		    NULL }, "\"on_failure\": \"reject\"" },
	};
	struct mta		 m;
	struct mta_result	 r;

	env_setup(&e, ups, 1, NULL, 0);
	message(&e, &m, MA_ALL, &r);
	cr_assert_eq(r.verdict, VERDICT_CONTINUE, "%s",
	    proto_verdict_name(r.verdict));
	cr_assert_eq(r.nmods, 25000, "%zu modifications", r.nmods);
	for (size_t i = 0; i < r.nmods; i++) {
		cr_assert_eq(r.mods[i].kind, MOD_INSHEADER);
		cr_assert_eq(r.mods[i].index, 1);
		cr_assert_str_eq(r.mods[i].name, "X-Big");
	}
	cr_assert_geq(r.progress, 2, "%u progress packets", r.progress);
	cr_assert_geq(r.progress_after, 10000, "the last progress packet "
	    "came after %zu of %zu modifications", r.progress_after,
	    r.nmods);
	mta_result_fini(&r);
	mta_close(&m);
	env_stop(&e, 0);
}
