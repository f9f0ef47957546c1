/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * merge - verdict ranking and end-of-message modification merging.
 *
 * Pure: no I/O, no locks, no logging, no globals.  Conflicts are
 * returned to the caller, which logs them with names.
 *
 * Policy (README, "How answers are merged"): reject beats tempfail beats
 * discard beats continue; accept only when every active upstream
 * accepted.  Every upstream saw the original message, so each
 * upstream's header requests are replayed on a private copy of the
 * original list with Postfix's semantics (shared/PROTOCOL.md 5.1), the
 * copies are merged, and one edit script is emitted whose sequential
 * application by the MTA gives the merged list (5.3).  On a conflict the
 * upstream listed first (lowest index) wins.
 *
 * Concurrency: caller serialises; no shared state.
 * Ownership: results are deep copies; caller owns them and frees them
 * with merge_result_fini() / merge_headers_free().
 */
#ifndef MERGE_H
#define MERGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "proto.h"

/*
 * The strongest of two verdicts by rank: ACCEPT < SKIP < CONTINUE <
 * DISCARD < TEMPFAIL < REJECT; NONE is weaker than all and means "did
 * not vote".
 */
enum verdict	merge_verdict(enum verdict a, enum verdict b);

struct merge_vote {
	enum verdict	 verdict;	/* VERDICT_NONE: not active */
	const char	*text;		/* 'y' text or NULL; borrowed */
};

/*
 * Merges one stage's votes, given in config order.  Returns the merged
 * verdict (VERDICT_NONE when nobody voted) and sets *decider to the
 * index of the first vote with that verdict (whose text the MTA should
 * see), or -1 when nobody voted.
 */
enum verdict	merge_stage(const struct merge_vote *votes, size_t n,
		    int *decider);

/* A header as the MTA sent it (value raw, as negotiated with the MTA). */
struct merge_header {
	char	*name;
	char	*value;
};

/* One upstream's end-of-message requests, in the order it sent them. */
struct merge_upstream {
	const struct mod	*mods;
	size_t			 nmods;
};

enum merge_conflict_kind {
	CONFLICT_HEADER = 0,	/* one original header changed/deleted twice */
	CONFLICT_SENDER,	/* two different sender changes */
	CONFLICT_BODY,		/* two body replacements */
	CONFLICT_KIND_COUNT
};

struct merge_conflict {
	enum merge_conflict_kind	 kind;
	size_t				 winner;	/* upstream index */
	size_t				 loser;		/* upstream index */
	char				*what;		/* header name, or NULL */
};

struct merge_result {
	struct mod		*ops;		/* edit script, emission order */
	size_t			 nops;
	struct merge_conflict	*conflicts;
	size_t			 nconflicts;
};

/*
 * Merges the requests of nups upstreams (index = config order = priority)
 * made against the original headers orig[0..norig).  rejected[] lists
 * recipients the MTA-facing side refused at RCPT; delrcpt requests for
 * them are dropped (compared without angle brackets, case-insensitively).
 *
 * The script's order: header inserts by descending anchor; changes and
 * deletes of original headers per name by descending occurrence, indexes
 * shifted by same-name inserts above them; appended headers; chgfrom;
 * delrcpt; addrcpt/addrcpt_par (deduplicated); one replbody holding the
 * winner's whole body; one quarantine (first reason).  Applying the
 * header part with merge_apply_headers() to orig gives every upstream's
 * edit on the header it meant.  Returns 0, or -EINVAL on a malformed
 * request (NULL name where one is needed).
 */
int	merge_mods(const struct merge_header *orig, size_t norig,
	    const struct merge_upstream *ups, size_t nups,
	    const char *const *rejected, size_t nrejected,
	    struct merge_result *out);
void	merge_result_fini(struct merge_result *);

/*
 * Applies the header requests among ops[0..nops) to in[0..n) exactly as
 * Postfix does (shared/PROTOCOL.md 5.1: insheader(i) inserts before the
 * (i+1)-th live entry, past the end appends; chgheader counts per name,
 * case-insensitively, 1-based, 0 as 1; "" deletes; not found appends a
 * non-empty value; addheader appends).  With hidden_first, in[0] is the
 * MTA's own Received: that milters never see: insheader counts it,
 * chgheader never matches it, and it stays in *out.  Other kinds are
 * ignored.  *out is a new list; the caller frees it with
 * merge_headers_free().  Used to replay a merged message to a later
 * phase and by the tests.
 */
void	merge_apply_headers(const struct merge_header *in, size_t n,
	    bool hidden_first, const struct mod *ops, size_t nops,
	    struct merge_header **out, size_t *nout);
void	merge_headers_free(struct merge_header *, size_t);

/*
 * As merge_mods, when h of the headers orig[] sit above the MTA's hidden
 * Received: (earlier phases inserted them at index 0): the requests'
 * indexes count the hidden header where the MTA has it, and so do the
 * script's.  merge_mods is merge_mods_at with h == 0.  -EINVAL if h >
 * norig.
 */
int	merge_mods_at(const struct merge_header *orig, size_t norig, size_t h,
	    const struct merge_upstream *ups, size_t nups,
	    const char *const *rejected, size_t nrejected,
	    struct merge_result *out);

/*
 * Phases.  A later phase sees the headers the earlier phases' script
 * produced, as the MTA shows them (merge_visible), and its script,
 * merged with merge_mods_at against those, applies to the message the
 * MTA holds after the earlier script.  merge_compose() appends it to
 * the earlier script, so that applying the result to the original
 * headers equals applying the phases one after another.  The later
 * phase's sender change and body replacement replace the earlier ones
 * (it edited what they produced); recipient changes keep phase order;
 * the first quarantine stays; all conflicts are kept.
 */
void	merge_compose(struct merge_result *total,
	    const struct merge_result *next);

/*
 * The visible headers after script ops applied to orig, and in *t how
 * many of them sit above the MTA's hidden Received: header.  Caller
 * frees *out with merge_headers_free().
 */
void		merge_visible(const struct merge_header *orig, size_t norig,
		    const struct mod *ops, size_t nops,
		    struct merge_header **out, size_t *nout, size_t *t);

#endif /* MERGE_H */
