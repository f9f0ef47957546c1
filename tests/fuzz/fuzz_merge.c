/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * fuzz_merge - the end-of-message modification merge on generated
 * requests.
 *
 * The input bytes are read as a small program: the original headers,
 * 1..3 upstreams with up to 16 requests each, and recipients the MTA
 * refused.  Names and values come mostly from short word lists, so that
 * requests collide on names, indexes and addresses as real milters'
 * do; original values are unique ("o1", "o2"...) and requested ones
 * never start with 'o'.  merge_mods() must take every well-formed set
 * and refuse (-EINVAL, leaving nothing) a set with a malformed request.
 *
 * Headers are checked against a model of what the merge promises
 * (merge.h, shared/PROTOCOL.md 5.3), computed here without any
 * script: each upstream's requests are replayed on its own list
 * [H*, Orig...] with Postfix's semantics, remembering which entry is
 * which original; the replay must agree with merge_apply_headers(); an
 * original gets the change or delete of the first upstream that touched
 * it; a new entry lands before the original (or H*, or the end) that
 * followed it in its upstream's list, after the entries of upstreams
 * listed before it there.  Applying the merged script to [H*, Orig...]
 * must give exactly that list; for one upstream that is its own
 * requests applied.  The rest is checked against merge.h: one chgfrom,
 * the first upstream's last; deletes then adds of recipients, without
 * duplicates or refused addresses; one body, the first replacing
 * upstream's chunks joined; one quarantine, the first reason; conflicts
 * name a winner listed before the loser.
 *
 * Concurrency: single-threaded.  Ownership: all per input, freed.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "codec.h"
#include "merge.h"
#include "fuzz.h"

#define MAX_ORIG	8
#define MAX_UPS		3
#define MAX_MODS	16
#define MAX_REJECTED	3
#define MAX_STR		12	/* bytes of a string taken from the input */
#define MAX_ENT		(1 + MAX_ORIG + MAX_MODS)

/* The input, read front to back; past its end every read gives 0. */
struct reader {
	const uint8_t	*p;
	size_t		 n;
};

static uint8_t
rd_u8(struct reader *r)
{
	uint8_t	 v;

	if (r->n == 0)
		return 0;
	v = *r->p++;
	r->n--;
	return v;
}

/* Strings made for one input, freed together. */
struct pool {
	char	*v[1024];
	size_t	 n;
};

static char *
pool_add(struct pool *pl, char *s)
{
	FUZZ_CHECK(s != NULL && pl->n < sizeof pl->v / sizeof pl->v[0]);
	pl->v[pl->n++] = s;
	return s;
}

static void
pool_free(struct pool *pl)
{
	while (pl->n > 0)
		free(pl->v[--pl->n]);
}

/* rd_raw - up to MAX_STR bytes of the input, without NULs, prefixed */
static char *
rd_raw(struct reader *r, struct pool *pl, const char *prefix)
{
	size_t	 len = rd_u8(r) % (MAX_STR + 1), pl0 = strlen(prefix), i;
	char	*s = malloc(pl0 + len + 1);

	FUZZ_CHECK(s != NULL);
	memcpy(s, prefix, pl0);
	for (i = 0; i < len; i++)
		s[pl0 + i] = (char)(rd_u8(r) | 1);	/* never NUL */
	s[pl0 + len] = '\0';
	return pool_add(pl, s);
}

static const char *const header_names[] = {
	"Subject", "subject", "X-A", "x-a", "Received", "To", "DKIM-Signature",
	"X-Spam"
};
static const char *const values[] = {
	"", "v", "v1", "v2", " leading space", "v\r\n\tfolded", "", "v1"
};
static const char *const addrs[] = {
	"<a@example.org>", "a@example.org", "<A@EXAMPLE.ORG>", "<b@example.net>",
	"<>", "b@example.net", "<c@example.com>", ""
};
static const char *const args[] = { NULL, "SIZE=1", "NOTIFY=NEVER", "" };

#define PICK(list, byte) ((list)[(byte) % (sizeof (list) / sizeof *(list))])

/* rd_name - a header name: mostly from the list, else from the input */
static const char *
rd_name(struct reader *r, struct pool *pl)
{
	uint8_t	 b = rd_u8(r);

	return b & 0x80 ? rd_raw(r, pl, "N") : PICK(header_names, b);
}

/* rd_value - a requested value; never starts with 'o' */
static const char *
rd_value(struct reader *r, struct pool *pl)
{
	uint8_t	 b = rd_u8(r);

	return b & 0x80 ? rd_raw(r, pl, "v") : PICK(values, b);
}

/* rd_index - small indexes mostly, and their edges */
static uint32_t
rd_index(struct reader *r)
{
	uint8_t	 b = rd_u8(r);

	if (b == 0xff)
		return UINT32_MAX;
	if (b == 0xfe)
		return 1u << 31;
	return b % 12;
}

/*
 * rd_mod - one request; *valid is cleared when the input asks for a
 * malformed one (NULL or empty name where one is needed)
 */
static void
rd_mod(struct reader *r, struct pool *pl, struct mod *m, bool *valid)
{
	uint8_t	 b = rd_u8(r), n;

	memset(m, 0, sizeof *m);
	m->kind = (enum mod_kind)(b % MOD_KIND_COUNT);
	switch (m->kind) {
	case MOD_INSHEADER:
	case MOD_CHGHEADER:
		m->index = rd_index(r);
		/* FALLTHROUGH */
	case MOD_ADDHEADER:
		m->name = (char *)rd_name(r, pl);
		m->value = (char *)rd_value(r, pl);
		break;
	case MOD_ADDRCPT:
	case MOD_DELRCPT:
		m->name = (char *)PICK(addrs, rd_u8(r));
		break;
	case MOD_ADDRCPT_PAR:
	case MOD_CHGFROM:
		m->name = (char *)PICK(addrs, rd_u8(r));
		m->value = (char *)PICK(args, rd_u8(r));
		break;
	case MOD_REPLBODY:
		n = rd_u8(r) % 8;
		m->bodylen = n;
		if (n > 0) {
			m->body = (uint8_t *)pool_add(pl, malloc(n));
			for (uint8_t i = 0; i < n; i++)
				m->body[i] = rd_u8(r);
		}
		break;
	case MOD_QUARANTINE:
		m->name = (char *)rd_value(r, pl);
		if (m->name[0] == '\0')
			m->name = "held";
		break;
	default:
		FUZZ_CHECK(!"mod kind");
	}
	/* Rarely, a request merge_mods() must refuse. */
	if (b >= 0xf8 && m->kind != MOD_REPLBODY) {
		if (m->kind <= MOD_CHGHEADER && (b & 1))
			m->name = "";
		else
			m->name = NULL;
		*valid = false;
	}
}

/*
 * The model: one upstream's private list.  An entry is H* (orig 0), an
 * original (orig 1..n) or new (orig -1); deleted entries stay, dead.
 */
struct ment {
	int		 orig;
	const char	*name;
	const char	*value;
	bool		 touched;	/* an original changed or deleted */
	bool		 dead;
};

struct mlist {
	struct ment	 v[MAX_ENT];
	size_t		 n;
};

static void
ml_insert(struct mlist *l, size_t at, struct ment e)
{
	FUZZ_CHECK(l->n < MAX_ENT && at <= l->n);
	memmove(&l->v[at + 1], &l->v[at], (l->n - at) * sizeof l->v[0]);
	l->v[at] = e;
	l->n++;
}

/* ml_apply - one request with the semantics merge.h gives Postfix */
static void
ml_apply(struct mlist *l, const struct mod *m)
{
	struct ment	 e = { .orig = -1, .name = m->name,
			    .value = m->value };
	size_t		 i, seen, k;

	switch (m->kind) {
	case MOD_ADDHEADER:
		ml_insert(l, l->n, e);
		break;
	case MOD_INSHEADER:
		/* Before the (index+1)-th live entry, or at the end. */
		for (i = 0, seen = 0; i < l->n; i++)
			if (!l->v[i].dead && seen++ == m->index)
				break;
		ml_insert(l, i, e);
		break;
	case MOD_CHGHEADER:
		k = m->index == 0 ? 1 : m->index;
		for (i = 0, seen = 0; i < l->n; i++) {
			if (l->v[i].dead || l->v[i].orig == 0 ||
			    strcasecmp(l->v[i].name, m->name) != 0)
				continue;
			if (++seen == k)
				break;
		}
		if (i == l->n) {
			if (m->value[0] != '\0')
				ml_insert(l, l->n, e);
		} else if (m->value[0] == '\0') {
			l->v[i].dead = true;
			l->v[i].touched = true;
		} else {
			l->v[i].name = m->name;
			l->v[i].value = m->value;
			l->v[i].touched = true;
		}
		break;
	default:
		break;
	}
}

static bool
hdr_eq(const struct merge_header *a, size_t na, const struct merge_header *b,
    size_t nb)
{
	if (na != nb)
		return false;
	for (size_t i = 0; i < na; i++)
		if (strcmp(a[i].name, b[i].name) != 0 ||
		    strcmp(a[i].value, b[i].value) != 0)
			return false;
	return true;
}

static void
dump(const char *what, const struct merge_header *h, size_t n)
{
	fprintf(stderr, "%s:\n", what);
	for (size_t i = 0; i < n; i++)
		fprintf(stderr, "  %s: %s\n", h[i].name, h[i].value);
}

/* check_headers - the merged script against the model */
static void
check_headers(const struct merge_header *in, size_t norig,
    const struct merge_upstream *ups, size_t nups,
    const struct merge_result *res)
{
	struct mlist		 lists[MAX_UPS];
	struct merge_header	*got, *priv, want[MAX_UPS * MAX_ENT];
	const struct ment	*fate[MAX_ORIG + 1] = { NULL };
	size_t			 ngot, npriv, nwant = 0, u, i, j, p, anchor;

	for (u = 0; u < nups; u++) {
		struct mlist	*l = &lists[u];

		l->n = 0;
		for (i = 0; i <= norig; i++)
			ml_insert(l, l->n, (struct ment){ .orig = (int)i,
			    .name = in[i].name, .value = in[i].value });
		for (i = 0; i < ups[u].nmods; i++)
			ml_apply(l, &ups[u].mods[i]);

		/* The model and merge_apply_headers() agree on one list. */
		merge_apply_headers(in, norig + 1, true, ups[u].mods,
		    ups[u].nmods, &priv, &npriv);
		for (i = 0, j = 0; i < l->n; i++) {
			if (l->v[i].dead)
				continue;
			FUZZ_CHECK(j < npriv);
			FUZZ_CHECK(strcmp(l->v[i].name, priv[j].name) == 0 &&
			    strcmp(l->v[i].value, priv[j].value) == 0);
			j++;
		}
		FUZZ_CHECK(j == npriv);
		merge_headers_free(priv, npriv);

		for (i = 0; i < l->n; i++)
			if (l->v[i].orig > 0 && l->v[i].touched &&
			    fate[l->v[i].orig] == NULL)
				fate[l->v[i].orig] = &l->v[i];
	}

	/* Anchors TOP (0, before H*), each original, END (norig + 1). */
	for (p = 0; p <= norig + 1; p++) {
		for (u = 0; u < nups; u++) {
			const struct mlist	*l = &lists[u];

			for (i = 0; i < l->n; i++) {
				if (l->v[i].orig >= 0 || l->v[i].dead)
					continue;
				for (j = i + 1; j < l->n &&
				    l->v[j].orig < 0; j++)
					;
				anchor = j == l->n ? norig + 1 :
				    (size_t)l->v[j].orig;
				if (anchor == p)
					want[nwant++] = (struct merge_header){
					    (char *)l->v[i].name,
					    (char *)l->v[i].value };
			}
		}
		if (p > norig)
			continue;
		if (fate[p] == NULL)
			want[nwant++] = in[p];
		else if (!fate[p]->dead)
			want[nwant++] = (struct merge_header){
			    (char *)fate[p]->name, (char *)fate[p]->value };
	}

	merge_apply_headers(in, norig + 1, true, res->ops, res->nops, &got,
	    &ngot);
	if (!hdr_eq(got, ngot, want, nwant)) {
		dump("merged script applied", got, ngot);
		dump("model", want, nwant);
		FUZZ_CHECK(!"merged headers differ from the model");
	}
	if (nups == 1) {
		merge_apply_headers(in, norig + 1, true, ups[0].mods,
		    ups[0].nmods, &priv, &npriv);
		FUZZ_CHECK(hdr_eq(got, ngot, priv, npriv));
		merge_headers_free(priv, npriv);
	}
	merge_headers_free(got, ngot);
}

static bool
addr_eq(const char *a, const char *b)
{
	size_t	 la, lb;

	if (*a == '<')
		a++;
	if (*b == '<')
		b++;
	la = strlen(a);
	lb = strlen(b);
	if (la > 0 && a[la - 1] == '>')
		la--;
	if (lb > 0 && b[lb - 1] == '>')
		lb--;
	return la == lb && strncasecmp(a, b, la) == 0;
}

static bool
str_eq(const char *a, const char *b)
{
	return a == NULL || b == NULL ? a == b : strcmp(a, b) == 0;
}

/* check_rest - everything that is not a header, against merge.h */
static void
check_rest(const struct merge_upstream *ups, size_t nups,
    const char *const *rejected, size_t nrej, const struct merge_result *res)
{
	const struct mod	*from = NULL, *q = NULL, *m, *o;
	size_t			 i, j, u, nfrom = 0, nbody = 0, nq = 0;
	size_t			 bodyup = SIZE_MAX, len;
	bool			 dels_done = false, found;

	for (u = 0; u < nups && from == NULL; u++)
		for (i = 0; i < ups[u].nmods; i++)
			if (ups[u].mods[i].kind == MOD_CHGFROM)
				from = &ups[u].mods[i];
	for (u = 0; u < nups && q == NULL; u++)
		for (i = 0; i < ups[u].nmods && q == NULL; i++)
			if (ups[u].mods[i].kind == MOD_QUARANTINE)
				q = &ups[u].mods[i];
	for (u = 0; u < nups && bodyup == SIZE_MAX; u++)
		for (i = 0; i < ups[u].nmods; i++)
			if (ups[u].mods[i].kind == MOD_REPLBODY)
				bodyup = u;

	for (i = 0; i < res->nops; i++) {
		o = &res->ops[i];
		FUZZ_CHECK((unsigned)o->kind < MOD_KIND_COUNT);
		switch (o->kind) {
		case MOD_CHGFROM:
			nfrom++;
			FUZZ_CHECK(from != NULL &&
			    strcmp(o->name, from->name) == 0 &&
			    str_eq(o->value, from->value));
			break;
		case MOD_DELRCPT:
			FUZZ_CHECK(!dels_done);
			for (j = 0; j < nrej; j++)
				FUZZ_CHECK(!addr_eq(o->name, rejected[j]));
			for (j = 0; j < i; j++)
				FUZZ_CHECK(res->ops[j].kind != MOD_DELRCPT ||
				    strcmp(res->ops[j].name, o->name) != 0);
			break;
		case MOD_ADDRCPT:
		case MOD_ADDRCPT_PAR:
			dels_done = true;
			for (j = 0; j < i; j++)
				FUZZ_CHECK(res->ops[j].kind != o->kind ||
				    strcmp(res->ops[j].name, o->name) != 0 ||
				    (o->kind == MOD_ADDRCPT_PAR &&
				    !str_eq(res->ops[j].value, o->value)));
			break;
		case MOD_REPLBODY:
			nbody++;
			FUZZ_CHECK(bodyup != SIZE_MAX);
			len = 0;
			for (j = 0; j < ups[bodyup].nmods; j++) {
				m = &ups[bodyup].mods[j];
				if (m->kind != MOD_REPLBODY || m->bodylen == 0)
					continue;
				FUZZ_CHECK(len + m->bodylen <= o->bodylen);
				FUZZ_CHECK(memcmp(o->body + len, m->body,
				    m->bodylen) == 0);
				len += m->bodylen;
			}
			FUZZ_CHECK(len == o->bodylen);
			break;
		case MOD_QUARANTINE:
			nq++;
			FUZZ_CHECK(q != NULL && strcmp(o->name, q->name) == 0);
			break;
		default:
			break;
		}
	}
	FUZZ_CHECK(nfrom == (from != NULL ? 1u : 0u));
	FUZZ_CHECK(nbody == (bodyup != SIZE_MAX ? 1u : 0u));
	FUZZ_CHECK(nq == (q != NULL ? 1u : 0u));

	/* Every add asked for is there; every delete not refused too. */
	for (u = 0; u < nups; u++) {
		for (i = 0; i < ups[u].nmods; i++) {
			m = &ups[u].mods[i];
			if (m->kind != MOD_ADDRCPT && m->kind != MOD_DELRCPT &&
			    m->kind != MOD_ADDRCPT_PAR)
				continue;
			if (m->kind == MOD_DELRCPT)
				for (j = 0; j < nrej; j++)
					if (addr_eq(m->name, rejected[j]))
						break;
			if (m->kind == MOD_DELRCPT && j < nrej)
				continue;
			found = false;
			for (j = 0; j < res->nops && !found; j++)
				found = res->ops[j].kind == m->kind &&
				    strcmp(res->ops[j].name, m->name) == 0 &&
				    (m->kind != MOD_ADDRCPT_PAR ||
				    str_eq(res->ops[j].value, m->value));
			FUZZ_CHECK(found);
		}
	}

	for (i = 0; i < res->nconflicts; i++) {
		FUZZ_CHECK(res->conflicts[i].winner < res->conflicts[i].loser);
		FUZZ_CHECK(res->conflicts[i].loser < nups);
		FUZZ_CHECK((unsigned)res->conflicts[i].kind <
		    CONFLICT_KIND_COUNT);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct reader		 r = { data, size };
	struct pool		 pl = { .n = 0 };
	struct merge_header	 in[1 + MAX_ORIG];
	struct merge_upstream	 ups[MAX_UPS];
	struct mod		 mods[MAX_UPS][MAX_MODS];
	const char		*rejected[MAX_REJECTED];
	struct merge_result	 res;
	size_t			 norig, nups, nrej, u, i;
	bool			 valid = true;
	char			 tag[16];
	int			 rc;

	norig = rd_u8(&r) % (MAX_ORIG + 1);
	nups = 1 + rd_u8(&r) % MAX_UPS;
	nrej = rd_u8(&r) % (MAX_REJECTED + 1);
	/* in[0] is the MTA's own Received:, H*, that milters never see. */
	in[0] = (struct merge_header){ "Received", "(hidden)" };
	for (i = 1; i <= norig; i++) {
		snprintf(tag, sizeof tag, "o%zu", i);
		in[i].name = (char *)rd_name(&r, &pl);
		in[i].value = pool_add(&pl, strdup(tag));
	}
	for (i = 0; i < nrej; i++)
		rejected[i] = PICK(addrs, rd_u8(&r));
	for (u = 0; u < nups; u++) {
		ups[u].nmods = rd_u8(&r) % (MAX_MODS + 1);
		ups[u].mods = mods[u];
		for (i = 0; i < ups[u].nmods; i++)
			rd_mod(&r, &pl, &mods[u][i], &valid);
	}

	rc = merge_mods(in + 1, norig, ups, nups, rejected, nrej, &res);
	if (!valid) {
		FUZZ_CHECK(rc == -EINVAL);
		FUZZ_CHECK(res.nops == 0 && res.ops == NULL &&
		    res.nconflicts == 0 && res.conflicts == NULL);
	} else {
		FUZZ_CHECK(rc == 0);
		check_headers(in, norig, ups, nups, &res);
		check_rest(ups, nups, rejected, nrej, &res);
	}
	merge_result_fini(&res);
	pool_free(&pl);
	return 0;
}
