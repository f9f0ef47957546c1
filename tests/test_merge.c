/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_merge - verdict ranking, the Postfix header simulator and the
 * end-of-message merge.
 *
 * Expected lists and scripts are written by hand, or, in the randomized
 * test, computed by a reference replay written here without merge.c's
 * code.  The simulator itself is pinned to the transcript captured on
 * Postfix 3.7.11 (shared/PROTOCOL.md 5.1), so "apply the merged script
 * and compare" checks the merge against the MTA's real behaviour.
 *
 * Concurrency: none.  Ownership: each test frees what it allocated.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "merge.h"

#define nitems(a)	(sizeof(a) / sizeof((a)[0]))

#define INS(i, n, v)	{ .kind = MOD_INSHEADER, .index = (i), \
			  .name = (n), .value = (v) }
#define CHG(i, n, v)	{ .kind = MOD_CHGHEADER, .index = (i), \
			  .name = (n), .value = (v) }
#define ADD(n, v)	{ .kind = MOD_ADDHEADER, .name = (n), .value = (v) }

#define MAXHDRS		32

/* Postfix's own Received:, which milters never see. */
static struct merge_header hidden = { "Received", "(hidden) by mx.example" };

/* The original message of the 5.1 transcript. */
static struct merge_header transcript_orig[] = {
	{ "Subject", "original subject" },
	{ "X-Dup", "one" },
	{ "X-Dup", "two" },
	{ "X-Dup", "three" },
	{ "From", "a@example.org" },
	{ "To", "b@example.org" },
};

static struct mod transcript_script[] = {
	INS(0, "X-Ins0", "top"),
	INS(1, "X-Ins1", "after-received"),
	INS(3, "X-Ins3", "index3"),
	CHG(1, "X-Dup", ""),
	CHG(1, "X-Dup", "changed-#1-after-delete"),
	CHG(0, "Subject", "idx0-subject"),
	ADD("X-Added", "appended"),
	CHG(1, "X-Added", "changed-appended"),
};

/* dump - "name: value|..." for one readable comparison on failure */
static void
dump(char *buf, size_t size, const struct merge_header *h, size_t n)
{
	size_t	 used = 0, i;
	int	 w;

	buf[0] = '\0';
	for (i = 0; i < n && used < size; i++) {
		w = snprintf(buf + used, size - used, "%s: %s|", h[i].name,
		    h[i].value);
		if (w < 0)
			break;
		used += (size_t)w;
	}
}

static void
assert_headers(const struct merge_header *got, size_t ngot,
    const struct merge_header *want, size_t nwant)
{
	char	 g[4096], w[4096];

	dump(g, sizeof g, got, ngot);
	dump(w, sizeof w, want, nwant);
	cr_assert_str_eq(g, w);
	cr_assert_eq(ngot, nwant);
}

static bool
str_eq(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static void
assert_ops(const struct mod *got, size_t ngot, const struct mod *want,
    size_t nwant)
{
	size_t	 i;

	cr_assert_eq(ngot, nwant, "script has %zu ops, want %zu", ngot,
	    nwant);
	for (i = 0; i < nwant; i++) {
		cr_assert_eq(got[i].kind, want[i].kind, "op %zu kind", i);
		cr_assert_eq(got[i].index, want[i].index, "op %zu index", i);
		cr_assert(str_eq(got[i].name, want[i].name),
		    "op %zu name %s, want %s", i,
		    got[i].name ? got[i].name : "NULL",
		    want[i].name ? want[i].name : "NULL");
		cr_assert(str_eq(got[i].value, want[i].value),
		    "op %zu value %s, want %s", i,
		    got[i].value ? got[i].value : "NULL",
		    want[i].value ? want[i].value : "NULL");
	}
}

/* apply_hidden - apply ops to [hidden, orig...] as Postfix would */
static void
apply_hidden(const struct merge_header *orig, size_t n,
    const struct mod *ops, size_t nops, struct merge_header **out,
    size_t *nout)
{
	struct merge_header	 in[MAXHDRS];

	cr_assert_lt(n, nitems(in));
	in[0] = hidden;
	memcpy(&in[1], orig, n * sizeof *orig);
	merge_apply_headers(in, n + 1, true, ops, nops, out, nout);
}

/*
 * check_merge - merge the upstreams, check the applied headers against
 * want[] and return the result for further checks
 */
static void
check_merge(const struct merge_header *orig, size_t norig,
    const struct merge_upstream *ups, size_t nups,
    const struct merge_header *want, size_t nwant,
    struct merge_result *res)
{
	struct merge_header	*got;
	size_t			 ngot;

	cr_assert_eq(merge_mods(orig, norig, ups, nups, NULL, 0, res), 0);
	apply_hidden(orig, norig, res->ops, res->nops, &got, &ngot);
	assert_headers(got, ngot, want, nwant);
	merge_headers_free(got, ngot);
}

/* Verdicts. */

struct verdict_case {
	enum verdict	 a, b, want;
};

ParameterizedTestParameters(merge, strongest_verdict_wins)
{
	static struct verdict_case cases[] = {
		{ VERDICT_NONE,     VERDICT_ACCEPT,   VERDICT_ACCEPT },
		{ VERDICT_NONE,     VERDICT_NONE,     VERDICT_NONE },
		{ VERDICT_ACCEPT,   VERDICT_SKIP,     VERDICT_SKIP },
		{ VERDICT_ACCEPT,   VERDICT_CONTINUE, VERDICT_CONTINUE },
		{ VERDICT_SKIP,     VERDICT_CONTINUE, VERDICT_CONTINUE },
		{ VERDICT_CONTINUE, VERDICT_DISCARD,  VERDICT_DISCARD },
		{ VERDICT_CONTINUE, VERDICT_TEMPFAIL, VERDICT_TEMPFAIL },
		{ VERDICT_DISCARD,  VERDICT_TEMPFAIL, VERDICT_TEMPFAIL },
		{ VERDICT_TEMPFAIL, VERDICT_REJECT,   VERDICT_REJECT },
		{ VERDICT_ACCEPT,   VERDICT_REJECT,   VERDICT_REJECT },
		{ VERDICT_NONE,     VERDICT_REJECT,   VERDICT_REJECT },
		{ VERDICT_ACCEPT,   VERDICT_ACCEPT,   VERDICT_ACCEPT },
		{ VERDICT_REJECT,   VERDICT_REJECT,   VERDICT_REJECT },
	};

	return cr_make_param_array(struct verdict_case, cases,
	    nitems(cases));
}

ParameterizedTest(struct verdict_case *tc, merge, strongest_verdict_wins)
{
	cr_assert_eq(merge_verdict(tc->a, tc->b), tc->want);
	cr_assert_eq(merge_verdict(tc->b, tc->a), tc->want,
	    "merge_verdict must not depend on argument order");
}

Test(merge, verdict_rank_is_a_total_order)
{
	static const enum verdict order[] = {
		VERDICT_NONE, VERDICT_ACCEPT, VERDICT_SKIP, VERDICT_CONTINUE,
		VERDICT_DISCARD, VERDICT_TEMPFAIL, VERDICT_REJECT,
	};
	size_t	 i, j;

	cr_assert_eq(nitems(order), VERDICT_COUNT);
	for (i = 0; i < nitems(order); i++)
		for (j = 0; j < nitems(order); j++)
			cr_assert_eq(merge_verdict(order[i], order[j]),
			    order[i > j ? i : j], "pair %zu, %zu", i, j);
}

struct stage_case {
	char		 label[32];
	enum verdict	 votes[4];
	size_t		 n;
	enum verdict	 want;
	int		 decider;
};

ParameterizedTestParameters(merge, stage_merges_votes_and_names_decider)
{
	static struct stage_case cases[] = {
		{ "no upstreams", { VERDICT_NONE }, 0, VERDICT_NONE, -1 },
		{ "nobody voted", { VERDICT_NONE, VERDICT_NONE }, 2,
		    VERDICT_NONE, -1 },
		{ "all accept", { VERDICT_ACCEPT, VERDICT_ACCEPT,
		    VERDICT_ACCEPT }, 3, VERDICT_ACCEPT, 0 },
		{ "accept+continue", { VERDICT_ACCEPT, VERDICT_CONTINUE }, 2,
		    VERDICT_CONTINUE, 1 },
		{ "accept+skip", { VERDICT_ACCEPT, VERDICT_SKIP }, 2,
		    VERDICT_SKIP, 1 },
		{ "none ignored", { VERDICT_NONE, VERDICT_ACCEPT,
		    VERDICT_NONE }, 3, VERDICT_ACCEPT, 1 },
		{ "first reject decides", { VERDICT_CONTINUE, VERDICT_REJECT,
		    VERDICT_TEMPFAIL, VERDICT_REJECT }, 4, VERDICT_REJECT, 1 },
		{ "tempfail over discard", { VERDICT_DISCARD,
		    VERDICT_TEMPFAIL, VERDICT_TEMPFAIL }, 3, VERDICT_TEMPFAIL,
		    1 },
		{ "discard over continue", { VERDICT_CONTINUE,
		    VERDICT_DISCARD }, 2, VERDICT_DISCARD, 1 },
		{ "continue over skip", { VERDICT_SKIP, VERDICT_CONTINUE,
		    VERDICT_ACCEPT }, 3, VERDICT_CONTINUE, 1 },
	};

	return cr_make_param_array(struct stage_case, cases, nitems(cases));
}

ParameterizedTest(struct stage_case *tc, merge,
    stage_merges_votes_and_names_decider)
{
	struct merge_vote	 votes[4];
	size_t			 i;
	int			 decider = 42;

	for (i = 0; i < nitems(votes); i++)
		votes[i] = (struct merge_vote){ .verdict = tc->votes[i] };
	cr_assert_eq(merge_stage(votes, tc->n, &decider), tc->want, "%s",
	    tc->label);
	cr_assert_eq(decider, tc->decider, "%s", tc->label);
}

/* The Postfix simulator. */

Test(merge, apply_headers_matches_postfix_transcript)
{
	static struct merge_header want[] = {
		{ "X-Ins0", "top" },
		{ "X-Ins1", "after-received" },
		{ "Received", "(hidden) by mx.example" },
		{ "X-Ins3", "index3" },
		{ "Subject", "idx0-subject" },
		{ "X-Dup", "changed-#1-after-delete" },
		{ "X-Dup", "three" },
		{ "From", "a@example.org" },
		{ "To", "b@example.org" },
		{ "X-Added", "changed-appended" },
	};
	struct merge_header	*got;
	size_t			 ngot;

	apply_hidden(transcript_orig, nitems(transcript_orig),
	    transcript_script, nitems(transcript_script), &got, &ngot);
	assert_headers(got, ngot, want, nitems(want));
	merge_headers_free(got, ngot);
}

Test(merge, apply_headers_without_hidden_counts_from_first)
{
	static struct merge_header in[] = {
		{ "Received", "r1" },
		{ "Subject", "s" },
	};
	static struct mod ops[] = {
		INS(1, "X-Ins1", "v"),
		CHG(1, "Received", "changed"),
		CHG(2, "Subject", ""),		/* not found: no-op */
		CHG(1, "X-None", ""),		/* not found: no-op */
		CHG(3, "subject", "appended"),	/* not found: appends */
		{ .kind = MOD_ADDRCPT, .name = "ignored" },
	};
	static struct merge_header want[] = {
		{ "Received", "changed" },
		{ "X-Ins1", "v" },
		{ "Subject", "s" },
		{ "subject", "appended" },
	};
	struct merge_header	*got;
	size_t			 ngot;

	merge_apply_headers(in, nitems(in), false, ops, nitems(ops), &got,
	    &ngot);
	assert_headers(got, ngot, want, nitems(want));
	merge_headers_free(got, ngot);
}

Test(merge, apply_headers_never_changes_hidden_received)
{
	static struct merge_header orig[] = {
		{ "Received", "r1" },
		{ "Received", "r2" },
	};
	static struct mod ops[] = {
		CHG(0, "received", "first"),
		CHG(2, "Received", ""),
		INS(9, "X-End", "past the end appends"),
	};
	static struct merge_header want[] = {
		{ "Received", "(hidden) by mx.example" },
		{ "received", "first" },
		{ "X-End", "past the end appends" },
	};
	struct merge_header	*got;
	size_t			 ngot;

	apply_hidden(orig, nitems(orig), ops, nitems(ops), &got, &ngot);
	assert_headers(got, ngot, want, nitems(want));
	merge_headers_free(got, ngot);
}

/* Header merging. */

Test(merge, single_upstream_transcript_round_trips)
{
	/* Hand-derived from PROTOCOL.md 5.3, step 4. */
	static struct mod want_ops[] = {
		INS(1, "X-Ins3", "index3"),
		INS(0, "X-Ins1", "after-received"),
		INS(0, "X-Ins0", "top"),
		CHG(2, "X-Dup", "changed-#1-after-delete"),
		CHG(1, "X-Dup", ""),
		CHG(1, "Subject", "idx0-subject"),
		ADD("X-Added", "changed-appended"),
	};
	struct merge_upstream	 up = { transcript_script,
				    nitems(transcript_script) };
	struct merge_result	 res;
	struct merge_header	*direct;
	size_t			 ndirect;

	apply_hidden(transcript_orig, nitems(transcript_orig),
	    transcript_script, nitems(transcript_script), &direct, &ndirect);
	check_merge(transcript_orig, nitems(transcript_orig), &up, 1,
	    direct, ndirect, &res);
	assert_ops(res.ops, res.nops, want_ops, nitems(want_ops));
	cr_assert_eq(res.nconflicts, 0);
	merge_result_fini(&res);
	merge_headers_free(direct, ndirect);
}

Test(merge, addheaders_of_two_upstreams_kept_in_upstream_order)
{
	static struct mod a[] = {
		ADD("X-A", "1"),
		ADD("X-A", "2"),
	};
	static struct mod b[] = {
		ADD("X-B", "1"),
	};
	static struct merge_header want[] = {
		{ "Received", "(hidden) by mx.example" },
		{ "Subject", "original subject" },
		{ "X-Dup", "one" },
		{ "X-Dup", "two" },
		{ "X-Dup", "three" },
		{ "From", "a@example.org" },
		{ "To", "b@example.org" },
		{ "X-A", "1" },
		{ "X-A", "2" },
		{ "X-B", "1" },
	};
	struct merge_upstream	 ups[] = { { a, nitems(a) }, { b, nitems(b) } };
	struct merge_result	 res;

	check_merge(transcript_orig, nitems(transcript_orig), ups,
	    nitems(ups), want, nitems(want), &res);
	cr_assert_eq(res.nconflicts, 0);
	merge_result_fini(&res);
}

Test(merge, delete_and_change_of_same_name_land_on_meant_headers)
{
	static struct mod a[] = {
		CHG(1, "X-Dup", ""),
	};
	static struct mod b[] = {
		CHG(2, "X-Dup", "B's two"),
	};
	static struct merge_header want[] = {
		{ "Received", "(hidden) by mx.example" },
		{ "Subject", "original subject" },
		{ "X-Dup", "B's two" },
		{ "X-Dup", "three" },
		{ "From", "a@example.org" },
		{ "To", "b@example.org" },
	};
	static struct mod want_ops[] = {
		CHG(2, "X-Dup", "B's two"),
		CHG(1, "X-Dup", ""),
	};
	struct merge_upstream	 ups[] = { { a, nitems(a) }, { b, nitems(b) } };
	struct merge_result	 res;

	check_merge(transcript_orig, nitems(transcript_orig), ups,
	    nitems(ups), want, nitems(want), &res);
	assert_ops(res.ops, res.nops, want_ops, nitems(want_ops));
	cr_assert_eq(res.nconflicts, 0);
	merge_result_fini(&res);
}

Test(merge, same_header_changed_twice_first_wins_with_conflict)
{
	static struct mod a[] = {
		CHG(1, "Subject", "A's subject"),
	};
	static struct mod b[] = {
		CHG(1, "Subject", "B's subject"),
	};
	static struct merge_header orig[] = {
		{ "From", "a@example.org" },
		{ "Subject", "original subject" },
	};
	static struct merge_header want[] = {
		{ "Received", "(hidden) by mx.example" },
		{ "From", "a@example.org" },
		{ "Subject", "A's subject" },
	};
	struct merge_upstream	 ups[] = { { a, nitems(a) }, { b, nitems(b) } };
	struct merge_result	 res;

	check_merge(orig, nitems(orig), ups, nitems(ups), want, nitems(want),
	    &res);
	cr_assert_eq(res.nconflicts, 1);
	cr_assert_eq(res.conflicts[0].kind, CONFLICT_HEADER);
	cr_assert_eq(res.conflicts[0].winner, 0);
	cr_assert_eq(res.conflicts[0].loser, 1);
	cr_assert_str_eq(res.conflicts[0].what, "Subject");
	merge_result_fini(&res);
}

Test(merge, identical_header_changes_are_no_conflict)
{
	static struct mod a[] = {
		CHG(1, "Subject", "same"),
		CHG(2, "X-Dup", ""),
	};
	static struct mod b[] = {
		CHG(1, "X-Dup", "one"),		/* unchanged value: still a change */
		CHG(2, "X-Dup", ""),
		CHG(1, "Subject", "same"),
	};
	static struct merge_header want[] = {
		{ "Received", "(hidden) by mx.example" },
		{ "Subject", "same" },
		{ "X-Dup", "one" },
		{ "X-Dup", "three" },
		{ "From", "a@example.org" },
		{ "To", "b@example.org" },
	};
	struct merge_upstream	 ups[] = { { a, nitems(a) }, { b, nitems(b) } };
	struct merge_result	 res;

	check_merge(transcript_orig, nitems(transcript_orig), ups,
	    nitems(ups), want, nitems(want), &res);
	cr_assert_eq(res.nconflicts, 0);
	merge_result_fini(&res);
}

Test(merge, change_and_delete_of_one_header_go_by_priority)
{
	static struct mod chg[] = {
		CHG(1, "Subject", "changed"),
	};
	static struct mod del[] = {
		CHG(1, "Subject", ""),
	};
	static struct merge_header orig[] = {
		{ "Subject", "original subject" },
	};
	static struct merge_header want_changed[] = {
		{ "Received", "(hidden) by mx.example" },
		{ "Subject", "changed" },
	};
	static struct merge_header want_deleted[] = {
		{ "Received", "(hidden) by mx.example" },
	};
	struct merge_upstream	 chg_first[] = { { chg, 1 }, { del, 1 } };
	struct merge_upstream	 del_first[] = { { del, 1 }, { chg, 1 } };
	struct merge_result	 res;

	check_merge(orig, 1, chg_first, 2, want_changed, nitems(want_changed),
	    &res);
	cr_assert_eq(res.nconflicts, 1);
	merge_result_fini(&res);
	check_merge(orig, 1, del_first, 2, want_deleted, nitems(want_deleted),
	    &res);
	cr_assert_eq(res.nconflicts, 1);
	cr_assert_eq(res.conflicts[0].winner, 0);
	cr_assert_eq(res.conflicts[0].loser, 1);
	merge_result_fini(&res);
}

Test(merge, inserts_at_same_position_keep_upstream_order)
{
	static struct mod a[] = {
		INS(1, "X-A", "1"),
		INS(2, "X-A", "2"),
		INS(0, "X-Top", "A"),
	};
	static struct mod b[] = {
		INS(1, "X-B", "1"),
		INS(0, "X-Top", "B"),
	};
	static struct merge_header orig[] = {
		{ "Subject", "s" },
		{ "To", "t" },
	};
	/* PROTOCOL.md 5.3 leaves this open: A goes above B, by priority. */
	static struct merge_header want[] = {
		{ "X-Top", "A" },
		{ "X-Top", "B" },
		{ "Received", "(hidden) by mx.example" },
		{ "X-A", "1" },
		{ "X-A", "2" },
		{ "X-B", "1" },
		{ "Subject", "s" },
		{ "To", "t" },
	};
	struct merge_upstream	 ups[] = { { a, nitems(a) }, { b, nitems(b) } };
	struct merge_result	 res;

	check_merge(orig, nitems(orig), ups, nitems(ups), want, nitems(want),
	    &res);
	cr_assert_eq(res.nconflicts, 0);
	merge_result_fini(&res);
}

Test(merge, insert_of_same_name_shifts_change_of_original)
{
	static struct mod a[] = {
		INS(1, "Received", "added by A"),
	};
	static struct mod b[] = {
		CHG(1, "Received", "changed by B"),
	};
	static struct merge_header orig[] = {
		{ "Received", "r1" },
		{ "Subject", "s" },
	};
	static struct merge_header want[] = {
		{ "Received", "(hidden) by mx.example" },
		{ "Received", "added by A" },
		{ "Received", "changed by B" },
		{ "Subject", "s" },
	};
	static struct mod want_ops[] = {
		INS(1, "Received", "added by A"),
		CHG(2, "Received", "changed by B"),
	};
	struct merge_upstream	 ups[] = { { a, nitems(a) }, { b, nitems(b) } };
	struct merge_result	 res;

	check_merge(orig, nitems(orig), ups, nitems(ups), want, nitems(want),
	    &res);
	assert_ops(res.ops, res.nops, want_ops, nitems(want_ops));
	merge_result_fini(&res);
}

Test(merge, deleted_original_still_anchors_other_upstreams_insert)
{
	static struct mod a[] = {
		CHG(2, "X-Dup", ""),
	};
	static struct mod b[] = {
		INS(3, "X-B", "before two"),	/* before X-Dup: two */
		INS(0, "X-B", "top"),
	};
	static struct merge_header want[] = {
		{ "X-B", "top" },
		{ "Received", "(hidden) by mx.example" },
		{ "Subject", "original subject" },
		{ "X-Dup", "one" },
		{ "X-B", "before two" },
		{ "X-Dup", "three" },
		{ "From", "a@example.org" },
		{ "To", "b@example.org" },
	};
	struct merge_upstream	 ups[] = { { a, nitems(a) }, { b, nitems(b) } };
	struct merge_result	 res;

	check_merge(transcript_orig, nitems(transcript_orig), ups,
	    nitems(ups), want, nitems(want), &res);
	merge_result_fini(&res);
}

/* Envelope, body, quarantine. */

/*
 * 200,000 inserts, 100,000 each from two upstreams at two places, and a
 * change below them.  Expected script and list by hand: an upstream that
 * inserts at one index again and again stacks its headers there in
 * reverse, so the script gives each group in request order, the lower
 * anchor's group (b's, before X-A#1) first; the change keeps its index,
 * no X-A being inserted.  The merge used to take time quadratic in the
 * inserts (15 s for these); it is O(n log n) now, which this test does
 * not time, but its .timeout catches a quadratic merge (minutes).
 */
#define BIG	100000

Test(merge, two_hundred_thousand_inserts_merge_exactly, .timeout = 20)
{
	static struct merge_header orig[] = {
		{ "From", "a" }, { "To", "b" }, { "Subject", "s" },
		{ "X-A", "x1" }, { "X-A", "x2" },
	};
	struct mod		*ma, *mb;
	struct merge_upstream	 ups[2];
	struct merge_result	 res;
	struct merge_header	 in[6], *got;
	char			(*va)[16], (*vb)[16];
	size_t			 ngot, j, k;

	ma = calloc(BIG + 1, sizeof *ma);
	mb = calloc(BIG, sizeof *mb);
	va = calloc(BIG, sizeof *va);
	vb = calloc(BIG, sizeof *vb);
	cr_assert(ma != NULL && mb != NULL && va != NULL && vb != NULL);
	for (j = 0; j < BIG; j++) {
		snprintf(va[j], sizeof va[j], "a%zu", j);
		snprintf(vb[j], sizeof vb[j], "b%zu", j);
		ma[j] = (struct mod)INS(1, "X-I", va[j]);
		mb[j] = (struct mod)INS(4, "X-J", vb[j]);
	}
	ma[BIG] = (struct mod)CHG(2, "X-A", "changed");
	ups[0] = (struct merge_upstream){ ma, BIG + 1 };
	ups[1] = (struct merge_upstream){ mb, BIG };

	cr_assert_eq(merge_mods(orig, nitems(orig), ups, 2, NULL, 0, &res),
	    0);
	cr_assert_eq(res.nconflicts, 0);
	cr_assert_eq(res.nops, 2 * BIG + 1, "%zu ops", res.nops);
	for (j = 0; j < BIG; j++) {
		cr_assert_eq(res.ops[j].kind, MOD_INSHEADER, "op %zu", j);
		cr_assert_eq(res.ops[j].index, 4, "op %zu", j);
		cr_assert_str_eq(res.ops[j].name, "X-J");
		cr_assert_str_eq(res.ops[j].value, vb[j]);
		k = BIG + j;
		cr_assert_eq(res.ops[k].kind, MOD_INSHEADER, "op %zu", k);
		cr_assert_eq(res.ops[k].index, 1, "op %zu", k);
		cr_assert_str_eq(res.ops[k].name, "X-I");
		cr_assert_str_eq(res.ops[k].value, va[j]);
	}
	cr_assert_eq(res.ops[2 * BIG].kind, MOD_CHGHEADER);
	cr_assert_eq(res.ops[2 * BIG].index, 2);
	cr_assert_str_eq(res.ops[2 * BIG].name, "X-A");
	cr_assert_str_eq(res.ops[2 * BIG].value, "changed");

	/* Applied: Received, a99999..a0, From, To, Subject, b99999..b0,
	 * X-A: x1, X-A: changed. */
	in[0] = hidden;
	memcpy(&in[1], orig, sizeof orig);
	merge_apply_headers(in, 6, true, res.ops, res.nops, &got, &ngot);
	cr_assert_eq(ngot, 2 * BIG + 6, "%zu headers", ngot);
	k = 0;
	cr_assert_str_eq(got[k++].value, hidden.value);
	for (j = BIG; j-- > 0;)
		cr_assert_str_eq(got[k++].value, va[j]);
	cr_assert_str_eq(got[k++].name, "From");
	cr_assert_str_eq(got[k++].name, "To");
	cr_assert_str_eq(got[k++].name, "Subject");
	for (j = BIG; j-- > 0;)
		cr_assert_str_eq(got[k++].value, vb[j]);
	cr_assert_str_eq(got[k].name, "X-A");
	cr_assert_str_eq(got[k++].value, "x1");
	cr_assert_str_eq(got[k].name, "X-A");
	cr_assert_str_eq(got[k++].value, "changed");
	merge_headers_free(got, ngot);
	merge_result_fini(&res);
	free(ma);
	free(mb);
	free(va);
	free(vb);
}

/*
 * 200,000 recipients added, each twice, by two upstreams: one addrcpt
 * each, in first-seen order (the duplicate check was quadratic too).
 */
Test(merge, two_hundred_thousand_addrcpts_dedupe_exactly, .timeout = 20)
{
	struct mod		*m;
	struct merge_upstream	 ups[2];
	struct merge_result	 res;
	char			(*v)[24];
	size_t			 j;

	m = calloc(BIG * 2, sizeof *m);
	v = calloc(BIG * 2, sizeof *v);
	cr_assert(m != NULL && v != NULL);
	for (j = 0; j < 2 * BIG; j++) {
		snprintf(v[j], sizeof v[j], "<r%zu@example.net>", j);
		m[j] = (struct mod){ .kind = MOD_ADDRCPT, .name = v[j] };
	}
	/* b adds the same addresses. */
	ups[0] = (struct merge_upstream){ m, 2 * BIG };
	ups[1] = (struct merge_upstream){ m, 2 * BIG };
	cr_assert_eq(merge_mods(NULL, 0, ups, 2, NULL, 0, &res), 0);
	cr_assert_eq(res.nops, 2 * BIG, "%zu ops", res.nops);
	for (j = 0; j < 2 * BIG; j++) {
		cr_assert_eq(res.ops[j].kind, MOD_ADDRCPT);
		cr_assert_str_eq(res.ops[j].name, v[j]);
	}
	merge_result_fini(&res);
	free(m);
	free(v);
}

Test(merge, two_sender_changes_first_wins_with_conflict)
{
	static struct mod a[] = {
		{ .kind = MOD_CHGFROM, .name = "<first@example.org>" },
		{ .kind = MOD_CHGFROM, .name = "<a@example.org>",
		  .value = "RET=HDRS" },	/* the last one counts */
	};
	static struct mod b[] = {
		{ .kind = MOD_CHGFROM, .name = "<b@example.org>" },
	};
	static struct mod c[] = {
		{ .kind = MOD_CHGFROM, .name = "<a@example.org>",
		  .value = "RET=HDRS" },
	};
	static struct mod want_ops[] = {
		{ .kind = MOD_CHGFROM, .name = "<a@example.org>",
		  .value = "RET=HDRS" },
	};
	struct merge_upstream	 ups[] = { { a, 2 }, { b, 1 }, { c, 1 } };
	struct merge_result	 res;

	cr_assert_eq(merge_mods(NULL, 0, ups, nitems(ups), NULL, 0, &res), 0);
	assert_ops(res.ops, res.nops, want_ops, nitems(want_ops));
	cr_assert_eq(res.nconflicts, 1, "identical sender is no conflict");
	cr_assert_eq(res.conflicts[0].kind, CONFLICT_SENDER);
	cr_assert_eq(res.conflicts[0].winner, 0);
	cr_assert_eq(res.conflicts[0].loser, 1);
	cr_assert_null(res.conflicts[0].what);
	merge_result_fini(&res);
}

Test(merge, two_body_replacements_first_wins_chunks_concatenated)
{
	static uint8_t	 a1[] = "Hello, ", a2[] = "world\r\n", b1[] = "other";
	struct mod	 a[] = {
		{ .kind = MOD_REPLBODY, .body = a1, .bodylen = 7 },
		{ .kind = MOD_REPLBODY, .body = a2, .bodylen = 7 },
	};
	struct mod	 b[] = {
		{ .kind = MOD_REPLBODY, .body = b1, .bodylen = 5 },
	};
	struct merge_upstream	 ups[] = { { NULL, 0 }, { a, 2 }, { b, 1 } };
	struct merge_result	 res;

	cr_assert_eq(merge_mods(NULL, 0, ups, nitems(ups), NULL, 0, &res), 0);
	cr_assert_eq(res.nops, 1);
	cr_assert_eq(res.ops[0].kind, MOD_REPLBODY);
	cr_assert_eq(res.ops[0].bodylen, 14);
	cr_assert_arr_eq(res.ops[0].body, "Hello, world\r\n", 14);
	cr_assert_eq(res.nconflicts, 1);
	cr_assert_eq(res.conflicts[0].kind, CONFLICT_BODY);
	cr_assert_eq(res.conflicts[0].winner, 1);
	cr_assert_eq(res.conflicts[0].loser, 2);
	merge_result_fini(&res);
}

Test(merge, empty_body_replacement_is_a_replacement)
{
	static uint8_t	 b1[] = "other";
	struct mod	 a[] = {
		{ .kind = MOD_REPLBODY, .body = NULL, .bodylen = 0 },
	};
	struct mod	 b[] = {
		{ .kind = MOD_REPLBODY, .body = b1, .bodylen = 5 },
	};
	struct merge_upstream	 ups[] = { { a, 1 }, { b, 1 } };
	struct merge_result	 res;

	cr_assert_eq(merge_mods(NULL, 0, ups, nitems(ups), NULL, 0, &res), 0);
	cr_assert_eq(res.nops, 1);
	cr_assert_eq(res.ops[0].kind, MOD_REPLBODY);
	cr_assert_eq(res.ops[0].bodylen, 0);
	cr_assert_eq(res.nconflicts, 1);
	cr_assert_eq(res.conflicts[0].kind, CONFLICT_BODY);
	merge_result_fini(&res);
}

Test(merge, delrcpt_of_rejected_recipient_dropped)
{
	static const char *const rejected[] = { "<Bob@Example.ORG>" };
	static struct mod a[] = {
		{ .kind = MOD_DELRCPT, .name = "bob@example.org" },
		{ .kind = MOD_DELRCPT, .name = "<carol@example.org>" },
	};
	static struct mod b[] = {
		{ .kind = MOD_DELRCPT, .name = "<bob@example.org>" },
		{ .kind = MOD_DELRCPT, .name = "<carol@example.org>" },
		{ .kind = MOD_DELRCPT, .name = "<dave@example.org>" },
	};
	static struct mod want_ops[] = {
		{ .kind = MOD_DELRCPT, .name = "<carol@example.org>" },
		{ .kind = MOD_DELRCPT, .name = "<dave@example.org>" },
	};
	struct merge_upstream	 ups[] = { { a, nitems(a) }, { b, nitems(b) } };
	struct merge_result	 res;

	cr_assert_eq(merge_mods(NULL, 0, ups, nitems(ups), rejected,
	    nitems(rejected), &res), 0);
	assert_ops(res.ops, res.nops, want_ops, nitems(want_ops));
	merge_result_fini(&res);
}

Test(merge, duplicate_addrcpt_deduped)
{
	static struct mod a[] = {
		{ .kind = MOD_ADDRCPT, .name = "<x@example.org>" },
		{ .kind = MOD_ADDRCPT_PAR, .name = "<y@example.org>",
		  .value = "NOTIFY=NEVER" },
	};
	static struct mod b[] = {
		{ .kind = MOD_ADDRCPT_PAR, .name = "<y@example.org>",
		  .value = "NOTIFY=NEVER" },
		{ .kind = MOD_ADDRCPT, .name = "<x@example.org>" },
		{ .kind = MOD_ADDRCPT_PAR, .name = "<y@example.org>" },
		{ .kind = MOD_DELRCPT, .name = "<x@example.org>" },
	};
	/* delrcpt first, then the adds: x ends up present. */
	static struct mod want_ops[] = {
		{ .kind = MOD_DELRCPT, .name = "<x@example.org>" },
		{ .kind = MOD_ADDRCPT, .name = "<x@example.org>" },
		{ .kind = MOD_ADDRCPT_PAR, .name = "<y@example.org>",
		  .value = "NOTIFY=NEVER" },
		{ .kind = MOD_ADDRCPT_PAR, .name = "<y@example.org>" },
	};
	struct merge_upstream	 ups[] = { { a, nitems(a) }, { b, nitems(b) } };
	struct merge_result	 res;

	cr_assert_eq(merge_mods(NULL, 0, ups, nitems(ups), NULL, 0, &res), 0);
	assert_ops(res.ops, res.nops, want_ops, nitems(want_ops));
	merge_result_fini(&res);
}

Test(merge, quarantine_keeps_first_reason)
{
	static struct mod b[] = {
		{ .kind = MOD_QUARANTINE, .name = "spam" },
		{ .kind = MOD_QUARANTINE, .name = "later" },
	};
	static struct mod c[] = {
		{ .kind = MOD_QUARANTINE, .name = "virus" },
	};
	static struct mod want_ops[] = {
		{ .kind = MOD_QUARANTINE, .name = "spam" },
	};
	struct merge_upstream	 ups[] = { { NULL, 0 }, { b, 2 }, { c, 1 } };
	struct merge_result	 res;

	cr_assert_eq(merge_mods(NULL, 0, ups, nitems(ups), NULL, 0, &res), 0);
	assert_ops(res.ops, res.nops, want_ops, nitems(want_ops));
	cr_assert_eq(res.nconflicts, 0);
	merge_result_fini(&res);
}

Test(merge, script_keeps_documented_order)
{
	static uint8_t	 body[] = "b";
	struct mod	 a[] = {
		{ .kind = MOD_QUARANTINE, .name = "q" },
		{ .kind = MOD_REPLBODY, .body = body, .bodylen = 1 },
		{ .kind = MOD_ADDRCPT, .name = "<n@example.org>" },
		{ .kind = MOD_DELRCPT, .name = "<o@example.org>" },
		{ .kind = MOD_CHGFROM, .name = "<s@example.org>" },
		ADD("X-End", "e"),
		CHG(1, "Subject", "s2"),
		INS(1, "X-Ins", "i"),
	};
	static const enum mod_kind want[] = {
		MOD_INSHEADER, MOD_CHGHEADER, MOD_ADDHEADER, MOD_CHGFROM,
		MOD_DELRCPT, MOD_ADDRCPT, MOD_REPLBODY, MOD_QUARANTINE,
	};
	static struct merge_header orig[] = { { "Subject", "s" } };
	struct merge_upstream	 up = { a, nitems(a) };
	struct merge_result	 res;
	size_t			 i;

	cr_assert_eq(merge_mods(orig, 1, &up, 1, NULL, 0, &res), 0);
	cr_assert_eq(res.nops, nitems(want));
	for (i = 0; i < nitems(want); i++)
		cr_assert_eq(res.ops[i].kind, want[i], "op %zu", i);
	merge_result_fini(&res);
}

Test(merge, no_requests_give_empty_script)
{
	struct merge_upstream	 ups[] = { { NULL, 0 }, { NULL, 0 } };
	struct merge_result	 res;

	cr_assert_eq(merge_mods(transcript_orig, nitems(transcript_orig),
	    ups, nitems(ups), NULL, 0, &res), 0);
	cr_assert_eq(res.nops, 0);
	cr_assert_eq(res.nconflicts, 0);
	merge_result_fini(&res);
	cr_assert_eq(merge_mods(NULL, 0, NULL, 0, NULL, 0, &res), 0);
	cr_assert_eq(res.nops, 0);
	merge_result_fini(&res);
}

enum defect {
	DEFECT_NULL_NAME = 0,
	DEFECT_EMPTY_NAME,
	DEFECT_NULL_VALUE,
	DEFECT_NULL_BODY,
	DEFECT_BAD_KIND
};

struct malformed_case {
	char		 label[32];
	enum mod_kind	 kind;
	enum defect	 defect;
};

ParameterizedTestParameters(merge, malformed_request_is_einval)
{
	static struct malformed_case cases[] = {
		{ "addheader NULL name", MOD_ADDHEADER, DEFECT_NULL_NAME },
		{ "insheader empty name", MOD_INSHEADER, DEFECT_EMPTY_NAME },
		{ "chgheader NULL name", MOD_CHGHEADER, DEFECT_NULL_NAME },
		{ "chgheader NULL value", MOD_CHGHEADER, DEFECT_NULL_VALUE },
		{ "addrcpt NULL", MOD_ADDRCPT, DEFECT_NULL_NAME },
		{ "addrcpt_par NULL", MOD_ADDRCPT_PAR, DEFECT_NULL_NAME },
		{ "delrcpt NULL", MOD_DELRCPT, DEFECT_NULL_NAME },
		{ "chgfrom NULL", MOD_CHGFROM, DEFECT_NULL_NAME },
		{ "quarantine NULL", MOD_QUARANTINE, DEFECT_NULL_NAME },
		{ "replbody NULL body", MOD_REPLBODY, DEFECT_NULL_BODY },
		{ "unknown kind", MOD_KIND_COUNT, DEFECT_BAD_KIND },
	};

	return cr_make_param_array(struct malformed_case, cases,
	    nitems(cases));
}

ParameterizedTest(struct malformed_case *tc, merge,
    malformed_request_is_einval)
{
	struct mod	 ok[] = {
		ADD("X-Fine", "v"),
		{ .kind = MOD_ADDRCPT, .name = "<fine@example.org>" },
	};
	struct mod	 bad = { .kind = tc->kind, .name = "X-Bad",
			    .value = "v" };
	struct merge_upstream	 ups[] = { { ok, nitems(ok) }, { &bad, 1 } };
	struct merge_result	 res;

	switch (tc->defect) {
	case DEFECT_NULL_NAME:
		bad.name = NULL;
		break;
	case DEFECT_EMPTY_NAME:
		bad.name = "";
		break;
	case DEFECT_NULL_VALUE:
		bad.value = NULL;
		break;
	case DEFECT_NULL_BODY:
		bad.bodylen = 3;
		break;
	case DEFECT_BAD_KIND:
		break;
	}
	cr_assert_eq(merge_mods(NULL, 0, ups, nitems(ups), NULL, 0, &res),
	    -EINVAL, "%s", tc->label);
	cr_assert_eq(res.nops, 0, "%s: a refusal leaves nothing", tc->label);
	cr_assert_null(res.ops);
	cr_assert_eq(res.nconflicts, 0);
	merge_result_fini(&res);
}

Test(merge, original_header_without_name_is_einval)
{
	static struct merge_header orig[] = { { NULL, "v" } };
	struct merge_result	 res;

	cr_assert_eq(merge_mods(orig, 1, NULL, 0, NULL, 0, &res), -EINVAL);
	merge_result_fini(&res);
}

/*
 * The randomized property.  A reference replay, written here apart from
 * merge.c, tracks which entry is which original; each upstream's own
 * application (merge_apply_headers) must agree with it; the expected
 * merged list follows from PROTOCOL.md 5.3 (lowest index wins, new
 * entries before the next original, upstream order on one anchor); and
 * the merged script applied must give exactly that list.
 */

#define R_ITERATIONS	2000
#define R_MAXORIG	8
#define R_MAXOPS	6
#define R_MAXUPS	3
#define R_MAXENT	(1 + R_MAXORIG + R_MAXOPS)

struct rent {
	int		 orig;		/* 0: hidden, 1..n: original, -1: new */
	const char	*name;
	const char	*value;
	bool		 touched;	/* original changed or deleted */
	bool		 gone;		/* deleted */
};

struct rlist {
	struct rent	 e[R_MAXENT];
	size_t		 n;
};

struct rfate {
	int		 up;		/* -1: untouched */
	const struct rent *by;
};

struct rexpect_conflict {
	size_t		 winner, loser;
	const char	*what;
	bool		 seen;
};

static uint64_t
rnd_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ull;
}

static uint32_t
rnd(uint64_t *s, uint32_t n)
{
	return (uint32_t)((rnd_next(s) >> 33) % n);
}

static void
ref_put(struct rlist *l, size_t at, int orig, const char *name,
    const char *value)
{
	cr_assert_lt(l->n, nitems(l->e));
	memmove(&l->e[at + 1], &l->e[at], (l->n - at) * sizeof l->e[0]);
	l->e[at] = (struct rent){ .orig = orig, .name = name,
	    .value = value };
	l->n++;
}

/* ref_apply - Postfix semantics on the reference list (PROTOCOL.md 5.1) */
static void
ref_apply(struct rlist *l, const struct mod *m)
{
	size_t	 live[R_MAXENT], nlive = 0, i, k, hit;

	for (i = 0; i < l->n; i++)
		if (!l->e[i].gone)
			live[nlive++] = i;
	switch (m->kind) {
	case MOD_ADDHEADER:
		ref_put(l, l->n, -1, m->name, m->value);
		return;
	case MOD_INSHEADER:
		ref_put(l, m->index < nlive ? live[m->index] : l->n, -1,
		    m->name, m->value);
		return;
	case MOD_CHGHEADER:
		k = m->index > 0 ? m->index : 1;
		hit = l->n;
		for (i = 0; i < nlive && hit == l->n; i++) {
			struct rent *e = &l->e[live[i]];

			if (e->orig != 0 && strcasecmp(e->name, m->name) == 0
			    && --k == 0)
				hit = live[i];
		}
		if (hit == l->n) {
			if (*m->value != '\0')
				ref_put(l, l->n, -1, m->name, m->value);
		} else if (*m->value == '\0') {
			l->e[hit].gone = true;
			l->e[hit].touched = true;
		} else {
			l->e[hit].name = m->name;
			l->e[hit].value = m->value;
			l->e[hit].touched = true;
		}
		return;
	default:
		cr_assert_fail("unexpected kind %d", (int)m->kind);
	}
}

/* ref_anchor - original position of the first original after e[i] */
static size_t
ref_anchor(const struct rlist *l, size_t i, size_t norig)
{
	for (i++; i < l->n; i++)
		if (l->e[i].orig >= 0)
			return (size_t)l->e[i].orig;
	return norig + 1;
}

static bool
ref_differs(const struct rent *a, const struct rent *b)
{
	if (a->gone || b->gone)
		return a->gone != b->gone;
	return strcmp(a->value, b->value) != 0;
}

static void
gen_script(uint64_t *s, int u, size_t norig, struct mod *mods,
    size_t nmods, char (*vals)[48])
{
	static const char *const names[] = {
		"Subject", "X-A", "x-a", "Received", "To", "X-New",
	};
	size_t	 j;
	uint32_t r;

	for (j = 0; j < nmods; j++) {
		snprintf(vals[j], sizeof vals[j], "u%dv%zu", u, j);
		mods[j] = (struct mod){ .name = (char *)names[rnd(s,
		    nitems(names))], .value = vals[j] };
		r = rnd(s, 10);
		if (r < 3) {
			mods[j].kind = MOD_INSHEADER;
			mods[j].index = rnd(s, 8) == 0 ? 1000 :
			    rnd(s, (uint32_t)(norig + j + 3));
		} else if (r < 8) {
			mods[j].kind = MOD_CHGHEADER;
			mods[j].index = rnd(s, 4);
			if (rnd(s, 3) == 0)
				mods[j].value = "";
			else if (rnd(s, 5) == 0)
				mods[j].value = "same";
		} else {
			mods[j].kind = MOD_ADDHEADER;
		}
	}
}

Test(merge, random_scripts_merge_like_independent_replay, .timeout = 60)
{
	static const char *const onames[] = {
		"Subject", "X-A", "x-a", "Received", "To",
	};
	static const char *const ovals[R_MAXORIG] = {
		"o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8",
	};
	uint64_t		 seed = 0x6d696c7465726d75ull;
	struct merge_header	 orig[R_MAXORIG], want[MAXHDRS], *got;
	struct mod		 mods[R_MAXUPS][R_MAXOPS];
	char			 vals[R_MAXUPS][R_MAXOPS][48];
	struct merge_upstream	 ups[R_MAXUPS];
	struct rlist		 ref[R_MAXUPS];
	struct rfate		 fate[R_MAXORIG + 1];
	struct rexpect_conflict	 conf[R_MAXORIG * R_MAXUPS];
	struct merge_result	 res;
	size_t			 norig, nups, nwant, ngot, nconf, u, i, p, k;
	int			 it, conflicts_total = 0;

	for (it = 0; it < R_ITERATIONS; it++) {
		norig = 3 + rnd(&seed, 6);
		for (i = 0; i < norig; i++)
			orig[i] = (struct merge_header){
			    .name = (char *)onames[rnd(&seed,
			    nitems(onames))], .value = (char *)ovals[i] };
		nups = 1 + rnd(&seed, R_MAXUPS);
		for (u = 0; u < nups; u++) {
			ups[u].mods = mods[u];
			ups[u].nmods = rnd(&seed, R_MAXOPS + 1);
			gen_script(&seed, (int)u, norig, mods[u],
			    ups[u].nmods, vals[u]);
		}

		/* Each upstream alone: reference and simulator agree. */
		for (u = 0; u < nups; u++) {
			ref[u].n = 0;
			ref_put(&ref[u], 0, 0, hidden.name, hidden.value);
			for (i = 0; i < norig; i++)
				ref_put(&ref[u], ref[u].n, (int)i + 1,
				    orig[i].name, orig[i].value);
			for (i = 0; i < ups[u].nmods; i++)
				ref_apply(&ref[u], &mods[u][i]);
			for (i = 0, nwant = 0; i < ref[u].n; i++)
				if (!ref[u].e[i].gone)
					want[nwant++] = (struct merge_header){
					    (char *)ref[u].e[i].name,
					    (char *)ref[u].e[i].value };
			apply_hidden(orig, norig, mods[u], ups[u].nmods,
			    &got, &ngot);
			assert_headers(got, ngot, want, nwant);
			merge_headers_free(got, ngot);
		}

		/* Fates of originals by priority, and the conflicts. */
		nconf = 0;
		for (p = 1; p <= norig; p++)
			fate[p].up = -1;
		for (u = 0; u < nups; u++) {
			for (i = 0; i < ref[u].n; i++) {
				const struct rent *e = &ref[u].e[i];

				if (e->orig <= 0 || !e->touched)
					continue;
				p = (size_t)e->orig;
				if (fate[p].up < 0) {
					fate[p].up = (int)u;
					fate[p].by = e;
				} else if (ref_differs(fate[p].by, e)) {
					conf[nconf++] = (struct
					    rexpect_conflict){
					    (size_t)fate[p].up, u,
					    orig[p - 1].name, false };
				}
			}
		}

		/* The expected merged list, anchor by anchor. */
		nwant = 0;
		for (p = 0; p <= norig + 1; p++) {
			for (u = 0; u < nups; u++)
				for (i = 0; i < ref[u].n; i++)
					if (ref[u].e[i].orig < 0 &&
					    !ref[u].e[i].gone &&
					    ref_anchor(&ref[u], i, norig) ==
					    p)
						want[nwant++] =
						    (struct merge_header){
						    (char *)ref[u].e[i].name,
						    (char *)ref[u].e[i].value };
			if (p == 0)
				want[nwant++] = hidden;
			if (p < 1 || p > norig)
				continue;
			if (fate[p].up < 0)
				want[nwant++] = orig[p - 1];
			else if (!fate[p].by->gone)
				want[nwant++] = (struct merge_header){
				    (char *)fate[p].by->name,
				    (char *)fate[p].by->value };
		}

		cr_assert_eq(merge_mods(orig, norig, ups, nups, NULL, 0,
		    &res), 0, "iteration %d", it);
		apply_hidden(orig, norig, res.ops, res.nops, &got, &ngot);
		assert_headers(got, ngot, want, nwant);
		merge_headers_free(got, ngot);

		/* One upstream: the merged script means what its own did. */
		if (nups == 1) {
			struct merge_header	*direct;
			size_t			 ndirect;

			apply_hidden(orig, norig, mods[0], ups[0].nmods,
			    &direct, &ndirect);
			apply_hidden(orig, norig, res.ops, res.nops, &got,
			    &ngot);
			assert_headers(got, ngot, direct, ndirect);
			merge_headers_free(got, ngot);
			merge_headers_free(direct, ndirect);
		}

		/* The script has its three phases in order. */
		for (i = 1; i < res.nops; i++)
			cr_assert_leq(res.ops[i - 1].kind == MOD_ADDHEADER ? 2 :
			    res.ops[i - 1].kind == MOD_CHGHEADER ? 1 : 0,
			    res.ops[i].kind == MOD_ADDHEADER ? 2 :
			    res.ops[i].kind == MOD_CHGHEADER ? 1 : 0,
			    "iteration %d: op %zu out of phase", it, i);

		cr_assert_eq(res.nconflicts, nconf, "iteration %d", it);
		for (i = 0; i < res.nconflicts; i++) {
			const struct merge_conflict *c = &res.conflicts[i];

			cr_assert_eq(c->kind, CONFLICT_HEADER);
			for (k = 0; k < nconf; k++)
				if (!conf[k].seen && conf[k].winner ==
				    c->winner && conf[k].loser == c->loser &&
				    strcmp(conf[k].what, c->what) == 0)
					break;
			cr_assert_lt(k, nconf, "iteration %d: unexpected "
			    "conflict %zu/%zu on %s", it, c->winner,
			    c->loser, c->what);
			conf[k].seen = true;
		}
		conflicts_total += (int)nconf;
		merge_result_fini(&res);
	}
	/* The generator must actually reach the interesting cases. */
	cr_assert_gt(conflicts_total, 50);
}

/*
 * Phases.  A later phase's script, made against what the earlier phases
 * produced, composed into one script: applying that to the original
 * must give what the MTA gives applying the phases one after another.
 * The reference below is separate from merge.c: a flat list where the
 * MTA's hidden Received: sits wherever earlier inserts left it.
 */

#define P_MAXENT	64

struct pent {
	bool		 hidden;
	const char	*name;
	const char	*value;
};

static void
p_put(struct pent *l, size_t *n, size_t at, struct pent e)
{
	cr_assert_lt(*n, (size_t)P_MAXENT);
	memmove(&l[at + 1], &l[at], (*n - at) * sizeof *l);
	l[at] = e;
	(*n)++;
}

/* p_apply - Postfix's semantics; a deleted entry is unlinked */
static void
p_apply(struct pent *l, size_t *n, const struct mod *m)
{
	struct pent	 e = { false, m->name, m->value };
	size_t		 i, k;

	switch (m->kind) {
	case MOD_ADDHEADER:
		p_put(l, n, *n, e);
		break;
	case MOD_INSHEADER:
		p_put(l, n, m->index < *n ? m->index : *n, e);
		break;
	case MOD_CHGHEADER:
		k = m->index > 0 ? m->index : 1;
		for (i = 0; i < *n; i++)
			if (!l[i].hidden && strcasecmp(l[i].name, m->name) == 0
			    && --k == 0)
				break;
		if (i == *n) {
			if (*m->value != '\0')
				p_put(l, n, *n, e);
		} else if (*m->value == '\0') {
			memmove(&l[i], &l[i + 1], (*n - i - 1) * sizeof *l);
			(*n)--;
		} else
			l[i] = e;
		break;
	default:
		break;
	}
}

/* p_visible - the list without the hidden entry, and where it was */
static size_t
p_visible(const struct pent *l, size_t n, struct merge_header *out,
    size_t *t)
{
	size_t	 k = 0;

	for (size_t i = 0; i < n; i++) {
		if (l[i].hidden) {
			*t = i;
			continue;
		}
		out[k].name = (char *)l[i].name;
		out[k].value = (char *)l[i].value;
		k++;
	}
	return k;
}

Test(merge, compose_dkim_like_phase_two)
{
	/* Phase 1 tags the Subject, deletes a header and puts one on top;
	 * phase 2 signs: inserts at 1 what it computed from phase 1's
	 * result, and changes the tagged Subject again. */
	static struct merge_header orig[] = {
		{ "From", "a@example.org" }, { "Subject", "report" },
		{ "X-Internal", "secret" }, { "To", "b@example.net" },
	};
	static struct mod p1[] = {
		CHG(1, "Subject", "[ext] report"), CHG(1, "X-Internal", ""),
		INS(0, "X-Top", "t"),
	};
	static struct mod p2[] = {
		INS(1, "DKIM-Signature", "sig"),
		CHG(1, "Subject", "[ext] report (signed)"),
	};
	/* As an MTA applying the phases in turn: phase 2's insert at 1
	 * goes between X-Top and the MTA's own Received:. */
	static const struct merge_header want[] = {
		{ "X-Top", "t" }, { "DKIM-Signature", "sig" },
		{ "Received", "(hidden) by mx.example" },
		{ "From", "a@example.org" },
		{ "Subject", "[ext] report (signed)" },
		{ "To", "b@example.net" },
	};
	struct merge_upstream	 u1 = { p1, nitems(p1) }, u2;
	struct merge_result	 total, r2;
	struct merge_header	*cur, *got;
	size_t			 ncur, t, ngot;

	cr_assert_eq(merge_mods(orig, nitems(orig), &u1, 1, NULL, 0, &total),
	    0);
	merge_visible(orig, nitems(orig), total.ops, total.nops, &cur, &ncur,
	    &t);
	cr_assert_eq(t, 1, "X-Top sits above the hidden header");
	cr_assert_eq(ncur, 4);
	cr_assert_str_eq(cur[0].name, "X-Top");
	cr_assert_str_eq(cur[2].value, "[ext] report");
	u2 = (struct merge_upstream){ p2, nitems(p2) };
	cr_assert_eq(merge_mods_at(cur, ncur, t, &u2, 1, NULL, 0, &r2), 0);
	merge_compose(&total, &r2);
	apply_hidden(orig, nitems(orig), total.ops, total.nops, &got, &ngot);
	assert_headers(got, ngot, want, nitems(want));
	merge_headers_free(got, ngot);
	merge_headers_free(cur, ncur);
	merge_result_fini(&r2);
	merge_result_fini(&total);
}

Test(merge, compose_later_phase_wins_sender_and_body)
{
	static struct mod p1[] = {
		{ .kind = MOD_CHGFROM, .name = "<one@example.org>" },
		{ .kind = MOD_ADDRCPT, .name = "<added@example.org>" },
		{ .kind = MOD_REPLBODY, .body = (uint8_t *)"one\r\n",
		    .bodylen = 5 },
		{ .kind = MOD_QUARANTINE, .name = "first" },
	};
	static struct mod p2[] = {
		{ .kind = MOD_DELRCPT, .name = "<added@example.org>" },
		{ .kind = MOD_CHGFROM, .name = "<two@example.org>" },
		{ .kind = MOD_REPLBODY, .body = (uint8_t *)"two\r\n",
		    .bodylen = 5 },
		{ .kind = MOD_QUARANTINE, .name = "second" },
	};
	struct merge_upstream	 u1 = { p1, nitems(p1) }, u2 = { p2, nitems(p2) };
	struct merge_result	 total, r2;

	cr_assert_eq(merge_mods(NULL, 0, &u1, 1, NULL, 0, &total), 0);
	cr_assert_eq(merge_mods(NULL, 0, &u2, 1, NULL, 0, &r2), 0);
	merge_compose(&total, &r2);
	cr_assert_eq(total.nops, 5);
	cr_assert_eq(total.ops[0].kind, MOD_CHGFROM);
	cr_assert_str_eq(total.ops[0].name, "<two@example.org>");
	/* Recipients keep phase order: added, then deleted again. */
	cr_assert_eq(total.ops[1].kind, MOD_ADDRCPT);
	cr_assert_eq(total.ops[2].kind, MOD_DELRCPT);
	cr_assert_eq(total.ops[3].kind, MOD_REPLBODY);
	cr_assert_eq(memcmp(total.ops[3].body, "two\r\n", 5), 0);
	cr_assert_eq(total.ops[4].kind, MOD_QUARANTINE);
	cr_assert_str_eq(total.ops[4].name, "first");
	merge_result_fini(&r2);
	merge_result_fini(&total);
}

Test(merge, random_phases_compose_like_sequential_application,
    .timeout = 60)
{
	static const char *const onames[] = {
		"Subject", "X-A", "x-a", "Received", "To",
	};
	static const char *const ovals[] = {
		"o1", "o2", "o3", "o4", "o5", "o6",
	};
	uint64_t		 seed = 0x7068617365730a01ull;
	struct merge_header	 orig[8], *cur, *got, want[P_MAXENT];
	struct mod		 m1[2][R_MAXOPS], m2[R_MAXOPS];
	char			 v1[2][R_MAXOPS][48], v2[R_MAXOPS][48];
	struct merge_upstream	 ups1[2], up2;
	struct merge_result	 total, r2;
	struct pent		 l[P_MAXENT];
	size_t			 norig, ncur, t, tref, nl, ngot, nwant, nup1;
	int			 it, tops = 0;

	for (it = 0; it < 1500; it++) {
		norig = 2 + rnd(&seed, 5);
		for (size_t i = 0; i < norig; i++)
			orig[i] = (struct merge_header){ (char *)onames[
			    rnd(&seed, nitems(onames))], (char *)ovals[i] };
		nup1 = 1 + rnd(&seed, 2);
		for (size_t u = 0; u < nup1; u++) {
			ups1[u].mods = m1[u];
			ups1[u].nmods = rnd(&seed, R_MAXOPS + 1);
			gen_script(&seed, (int)u, norig, m1[u], ups1[u].nmods,
			    v1[u]);
		}
		cr_assert_eq(merge_mods(orig, norig, ups1, nup1, NULL, 0,
		    &total), 0);

		/* The MTA after phase 1, hidden header where it ends up. */
		nl = 0;
		p_put(l, &nl, 0, (struct pent){ true, hidden.name,
		    hidden.value });
		for (size_t i = 0; i < norig; i++)
			p_put(l, &nl, nl, (struct pent){ false, orig[i].name,
			    orig[i].value });
		for (size_t i = 0; i < total.nops; i++)
			p_apply(l, &nl, &total.ops[i]);
		merge_visible(orig, norig, total.ops, total.nops, &cur, &ncur,
		    &t);
		nwant = p_visible(l, nl, want, &tref);
		assert_headers(cur, ncur, want, nwant);
		cr_assert_eq(t, tref, "iteration %d: hidden at %zu, want %zu",
		    it, t, tref);
		if (t > 0)
			tops++;

		/* Phase 2 asks against what it saw, in the MTA's frame. */
		up2.mods = m2;
		up2.nmods = 1 + rnd(&seed, R_MAXOPS);
		gen_script(&seed, 7, ncur, m2, up2.nmods, v2);
		for (size_t i = 0; i < up2.nmods; i++)
			p_apply(l, &nl, &m2[i]);
		for (size_t i = 0; i < nl; i++)
			want[i] = (struct merge_header){ (char *)l[i].name,
			    (char *)l[i].value };
		nwant = nl;
		/* Phase 1's strings go with its script in merge_compose. */
		for (size_t i = 0; i < nwant; i++) {
			want[i].name = strdup(want[i].name);
			want[i].value = strdup(want[i].value);
		}

		cr_assert_eq(merge_mods_at(cur, ncur, t, &up2, 1, NULL, 0,
		    &r2), 0);
		merge_compose(&total, &r2);
		apply_hidden(orig, norig, total.ops, total.nops, &got, &ngot);
		/* Every header in order, the hidden one where an MTA
		 * applying the phases in turn would have it. */
		assert_headers(got, ngot, want, nwant);
		for (size_t i = 0; i < nwant; i++) {
			free(want[i].name);
			free(want[i].value);
		}
		merge_headers_free(got, ngot);
		merge_headers_free(cur, ncur);
		merge_result_fini(&r2);
		merge_result_fini(&total);
	}
	cr_assert_gt(tops, 50, "the cases with headers above the hidden one "
	    "must be exercised (%d)", tops);
}

/*
 * Long scripts.  The small random tests above never fill the order
 * labels merge.c gives list entries, so they never make it spread them
 * again; these scripts do (bursts of inserts at one index), and are
 * checked against a plain array model of Postfix's semantics written
 * here: merge_apply_headers() must give the model's list, and the
 * merged script of one upstream applied must give its own requests
 * applied.
 */
#define L_ROUNDS	4
#define L_ORIG		40
#define L_MODS		6000

struct lent {
	const char	*name;
	const char	*value;
	bool		 hidden;
};

/* l_apply - one request on the model: the array, n entries live only */
static void
l_apply(struct lent *l, size_t *n, const struct mod *m)
{
	size_t	 i, k, at;

	switch (m->kind) {
	case MOD_ADDHEADER:
		l[(*n)++] = (struct lent){ m->name, m->value, false };
		return;
	case MOD_INSHEADER:
		at = m->index < *n ? m->index : *n;
		memmove(&l[at + 1], &l[at], (*n - at) * sizeof *l);
		l[at] = (struct lent){ m->name, m->value, false };
		(*n)++;
		return;
	case MOD_CHGHEADER:
		k = m->index > 0 ? m->index : 1;
		for (i = 0; i < *n; i++)
			if (!l[i].hidden && strcasecmp(l[i].name, m->name) == 0
			    && --k == 0)
				break;
		if (i == *n) {
			if (*m->value != '\0')
				l[(*n)++] = (struct lent){ m->name, m->value,
				    false };
		} else if (*m->value == '\0') {
			memmove(&l[i], &l[i + 1], (*n - i - 1) * sizeof *l);
			(*n)--;
		} else {
			l[i].name = m->name;
			l[i].value = m->value;
		}
		return;
	default:
		cr_assert_fail("unexpected kind %d", (int)m->kind);
	}
}

Test(merge, long_random_scripts_apply_like_a_plain_list, .timeout = 60)
{
	static const char *const names[] = {
		"Subject", "X-A", "x-a", "Received", "To", "X-New",
	};
	struct merge_header	 in[L_ORIG + 1], *got, *mine;
	struct merge_upstream	 up;
	struct merge_result	 res;
	struct lent		*l;
	struct mod		*m;
	char			(*vals)[24];
	uint64_t		 s = 0x5eed;
	size_t			 n, ngot, nmine, j, burst = 0;
	uint32_t		 at = 0;

	l = calloc(L_ORIG + 1 + L_MODS, sizeof *l);
	m = calloc(L_MODS, sizeof *m);
	vals = calloc(L_ORIG + L_MODS, sizeof *vals);
	cr_assert(l != NULL && m != NULL && vals != NULL);
	for (int round = 0; round < L_ROUNDS; round++) {
		in[0] = hidden;
		for (j = 0; j < L_ORIG; j++) {
			snprintf(vals[j], sizeof vals[j], "o%zu", j);
			in[j + 1] = (struct merge_header){
			    (char *)names[rnd(&s, nitems(names))], vals[j] };
		}
		for (j = 0; j < L_MODS; j++) {
			char	*v = vals[L_ORIG + j];
			uint32_t r = rnd(&s, 100);

			snprintf(v, sizeof vals[0], "r%dv%zu", round, j);
			m[j] = (struct mod){ .name = (char *)names[rnd(&s,
			    nitems(names))], .value = v };
			if (burst > 0 || r < 2) {
				/* 50 to 250 inserts in a row at one index. */
				if (burst == 0) {
					burst = 50 + rnd(&s, 200);
					at = rnd(&s, (uint32_t)(L_ORIG + j + 2));
				}
				burst--;
				m[j].kind = MOD_INSHEADER;
				m[j].index = at;
			} else if (r < 45) {
				m[j].kind = MOD_INSHEADER;
				m[j].index = rnd(&s, (uint32_t)(L_ORIG + j + 2));
			} else if (r < 90) {
				m[j].kind = MOD_CHGHEADER;
				m[j].index = rnd(&s, 40);
				if (rnd(&s, 3) == 0)
					m[j].value = "";
			} else {
				m[j].kind = MOD_ADDHEADER;
			}
		}

		/* The simulator against the model. */
		n = 0;
		l[n++] = (struct lent){ hidden.name, hidden.value, true };
		for (j = 0; j < L_ORIG; j++)
			l[n++] = (struct lent){ in[j + 1].name,
			    in[j + 1].value, false };
		for (j = 0; j < L_MODS; j++)
			l_apply(l, &n, &m[j]);
		merge_apply_headers(in, L_ORIG + 1, true, m, L_MODS, &mine,
		    &nmine);
		cr_assert_eq(nmine, n, "round %d: %zu headers, model %zu",
		    round, nmine, n);
		for (j = 0; j < n; j++) {
			cr_assert_str_eq(mine[j].name, l[j].name,
			    "round %d, header %zu", round, j);
			cr_assert_str_eq(mine[j].value, l[j].value,
			    "round %d, header %zu", round, j);
		}

		/* One upstream: its merged script does what it asked. */
		up = (struct merge_upstream){ m, L_MODS };
		cr_assert_eq(merge_mods(&in[1], L_ORIG, &up, 1, NULL, 0,
		    &res), 0);
		merge_apply_headers(in, L_ORIG + 1, true, res.ops, res.nops,
		    &got, &ngot);
		cr_assert_eq(ngot, nmine, "round %d", round);
		for (j = 0; j < ngot; j++) {
			cr_assert_str_eq(got[j].name, mine[j].name,
			    "round %d, header %zu", round, j);
			cr_assert_str_eq(got[j].value, mine[j].value,
			    "round %d, header %zu", round, j);
		}
		merge_headers_free(got, ngot);
		merge_headers_free(mine, nmine);
		merge_result_fini(&res);
	}
	free(l);
	free(m);
	free(vals);
}
