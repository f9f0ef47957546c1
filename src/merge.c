/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * merge - verdict ranking and end-of-message modification merging.
 *
 * Turns the answers of N upstreams that all saw the same original
 * message into one answer for the MTA: a verdict by rank, and one edit
 * script built from N independent sets of modification requests.  It
 * does not decide which upstreams are active, apply on_error actions,
 * log conflicts or talk to libmilter: fanout.c and front.c do that with
 * what we return.
 *
 * Design (shared/PROTOCOL.md 5.3).  Each upstream's header requests are
 * replayed, in arrival order, on a private list [H*, Orig[1..n]] with
 * Postfix's semantics (5.1), where H* stands for the MTA's own hidden
 * Received:.  The replay remembers which entries are originals, so the
 * private lists can be merged by identity, not by index: an original
 * keeps the change of the lowest-index upstream that touched it, and a
 * new entry is anchored to the next original after it in its list (TOP
 * above H*, END past the last original).  The merged list is then
 * expressed as one sequential script: inserts by descending anchor,
 * changes by descending position (so earlier indexes stay valid), then
 * appends.  merge_apply_headers() is the Postfix simulator the replay
 * uses; the tests check the script against it.
 *
 * Concurrency: none needed; no shared state, const tables only.
 * Ownership: nothing is kept; results hold copies (see merge.h).
 */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "codec.h"
#include "merge.h"
#include "xalloc.h"

/*
 * How strongly each verdict binds the message; the merged verdict is
 * the strongest.  REJECT beats TEMPFAIL (a permanent answer beats a
 * "try later"), TEMPFAIL beats DISCARD (a retry loses nothing; a silent
 * drop cannot be undone), and ACCEPT is the weakest vote because it only
 * means "this filter wants nothing more": the merged answer is ACCEPT
 * only when every active upstream accepted.  SKIP sits between: "no
 * more body" still lets the others continue.  NONE did not vote.
 */
static const unsigned char verdict_rank[VERDICT_COUNT] = {
	[VERDICT_NONE]		= 0,
	[VERDICT_ACCEPT]	= 1,
	[VERDICT_SKIP]		= 2,
	[VERDICT_CONTINUE]	= 3,
	[VERDICT_DISCARD]	= 4,
	[VERDICT_TEMPFAIL]	= 5,
	[VERDICT_REJECT]	= 6,
};

enum verdict
merge_verdict(enum verdict a, enum verdict b)
{
	assert((unsigned)a < VERDICT_COUNT && (unsigned)b < VERDICT_COUNT);
	return verdict_rank[b] > verdict_rank[a] ? b : a;
}

enum verdict
merge_stage(const struct merge_vote *votes, size_t n, int *decider)
{
	enum verdict	 v = VERDICT_NONE;
	int		 who = -1;
	size_t		 i;

	assert(n == 0 || votes != NULL);
	assert(n <= INT_MAX);
	for (i = 0; i < n; i++) {
		assert((unsigned)votes[i].verdict < VERDICT_COUNT);
		/* Strictly stronger only, so the first of equals decides. */
		if (verdict_rank[votes[i].verdict] > verdict_rank[v]) {
			v = votes[i].verdict;
			who = (int)i;
		}
	}
	if (decider != NULL)
		*decider = who;
	return v;
}

/*
 * Header lists.  Entries are never unlinked: a deleted one stays as
 * "dead" so that an original deleted by an upstream still marks the
 * place its neighbours were inserted at.  Dead entries are invisible to
 * index counting, as Postfix's unlinked ones are.
 */
enum ent_kind {
	ENT_HIDDEN = 0,		/* the MTA's own Received:, H* */
	ENT_ORIG,		/* an original header */
	ENT_NEW			/* added or inserted by a request */
};

struct ent {
	enum ent_kind	 kind;
	size_t		 pos;		/* ENT_ORIG: 1-based original position */
	const char	*name;		/* borrowed */
	const char	*value;		/* borrowed */
	bool		 changed;	/* ENT_ORIG: value (and name) replaced */
	bool		 dead;		/* deleted */
};

struct hlist {
	struct ent	*v;
	size_t		 n;
	size_t		 cap;
};

/* hlist_insert - put a copy of *e at v[at], shifting the rest up */
static void
hlist_insert(struct hlist *l, size_t at, const struct ent *e)
{
	assert(at <= l->n);
	if (l->n == l->cap) {
		l->cap = l->cap == 0 ? 16 : l->cap * 2;
		l->v = xreallocarray(l->v, l->cap, sizeof *l->v);
	}
	memmove(&l->v[at + 1], &l->v[at], (l->n - at) * sizeof *l->v);
	l->v[at] = *e;
	l->n++;
}

/* hlist_fini - release the array; the strings are borrowed */
static void
hlist_fini(struct hlist *l)
{
	free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
}

/*
 * hlist_apply - apply one header request with Postfix's semantics
 *
 * insheader(i) goes immediately before the (i+1)-th live entry, so dead
 * entries in front of that one stay in front of the new entry; past the
 * end it appends.  chgheader(name, k) hits the k-th live entry of that
 * name (case-insensitive, 0 means 1), never H*; Postfix writes the
 * header back with the requested name, so a change takes it too.  Other
 * kinds, and header requests without their strings, are ignored.
 */
static void
hlist_apply(struct hlist *l, const struct mod *m)
{
	struct ent	 e = { .kind = ENT_NEW, .name = m->name,
			    .value = m->value };
	struct ent	*p;
	size_t		 i, k, seen;

	if (m->name == NULL || m->value == NULL)
		return;
	switch (m->kind) {
	case MOD_ADDHEADER:
		hlist_insert(l, l->n, &e);
		break;
	case MOD_INSHEADER:
		for (i = 0, seen = 0; i < l->n; i++) {
			if (l->v[i].dead)
				continue;
			if (seen++ == m->index)
				break;
		}
		hlist_insert(l, i, &e);
		break;
	case MOD_CHGHEADER:
		k = m->index == 0 ? 1 : m->index;
		p = NULL;
		for (i = 0, seen = 0; i < l->n; i++) {
			if (l->v[i].dead || l->v[i].kind == ENT_HIDDEN ||
			    strcasecmp(l->v[i].name, m->name) != 0)
				continue;
			if (++seen == k) {
				p = &l->v[i];
				break;
			}
		}
		if (p == NULL) {
			if (m->value[0] != '\0')
				hlist_insert(l, l->n, &e);
		} else if (m->value[0] == '\0') {
			p->dead = true;
		} else {
			p->name = m->name;
			p->value = m->value;
			p->changed = true;
		}
		break;
	default:
		break;
	}
}

void
merge_apply_headers(const struct merge_header *in, size_t n,
    bool hidden_first, const struct mod *ops, size_t nops,
    struct merge_header **out, size_t *nout)
{
	struct hlist		 l = { 0 };
	struct merge_header	*res;
	struct ent		 e;
	size_t			 i, k;

	for (i = 0; i < n; i++) {
		e = (struct ent){
			.kind = hidden_first && i == 0 ? ENT_HIDDEN : ENT_ORIG,
			.pos = i, .name = in[i].name, .value = in[i].value };
		hlist_insert(&l, l.n, &e);
	}
	for (i = 0; i < nops; i++)
		hlist_apply(&l, &ops[i]);

	res = xcalloc(l.n, sizeof *res);
	for (i = 0, k = 0; i < l.n; i++) {
		if (l.v[i].dead)
			continue;
		res[k].name = xstrdup(l.v[i].name);
		res[k].value = xstrdup(l.v[i].value);
		k++;
	}
	hlist_fini(&l);
	*out = res;
	*nout = k;
}

void
merge_headers_free(struct merge_header *h, size_t n)
{
	size_t	 i;

	if (h == NULL)
		return;
	for (i = 0; i < n; i++) {
		free(h[i].name);
		free(h[i].value);
	}
	free(h);
}

/* The result under construction, with the capacities it lacks. */
struct builder {
	struct merge_result	*out;
	size_t			 opcap;
	size_t			 confcap;
};

/* push_op - append one operation with copies of the strings (may be NULL) */
static struct mod *
push_op(struct builder *b, enum mod_kind kind, size_t index,
    const char *name, const char *value)
{
	struct merge_result	*r = b->out;
	struct mod		*m;

	assert(index <= UINT32_MAX);
	if (r->nops == b->opcap) {
		b->opcap = b->opcap == 0 ? 8 : b->opcap * 2;
		r->ops = xreallocarray(r->ops, b->opcap, sizeof *r->ops);
	}
	m = &r->ops[r->nops++];
	memset(m, 0, sizeof *m);
	m->kind = kind;
	m->index = (uint32_t)index;
	m->name = name != NULL ? xstrdup(name) : NULL;
	m->value = value != NULL ? xstrdup(value) : NULL;
	return m;
}

/* push_conflict - record that upstream loser was overruled by winner */
static void
push_conflict(struct builder *b, enum merge_conflict_kind kind,
    size_t winner, size_t loser, const char *what)
{
	struct merge_result	*r = b->out;
	struct merge_conflict	*c;

	if (r->nconflicts == b->confcap) {
		b->confcap = b->confcap == 0 ? 4 : b->confcap * 2;
		r->conflicts = xreallocarray(r->conflicts, b->confcap,
		    sizeof *r->conflicts);
	}
	c = &r->conflicts[r->nconflicts++];
	c->kind = kind;
	c->winner = winner;
	c->loser = loser;
	c->what = what != NULL ? xstrdup(what) : NULL;
}

/* str_eq - equality of two strings either of which may be NULL */
static bool
str_eq(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

/* mod_is_valid - whether a request carries what its kind needs */
static bool
mod_is_valid(const struct mod *m)
{
	switch (m->kind) {
	case MOD_ADDHEADER:
	case MOD_INSHEADER:
	case MOD_CHGHEADER:
		return m->name != NULL && m->name[0] != '\0' &&
		    m->value != NULL;
	case MOD_ADDRCPT:
	case MOD_ADDRCPT_PAR:
	case MOD_DELRCPT:
	case MOD_CHGFROM:
	case MOD_QUARANTINE:
		return m->name != NULL;
	case MOD_REPLBODY:
		return m->body != NULL || m->bodylen == 0;
	default:
		return false;
	}
}

/* What happened to one original header in the merged list. */
struct fate {
	bool		 touched;
	size_t		 up;		/* the winning upstream */
	const char	*name;		/* borrowed */
	const char	*value;		/* borrowed; unused when dead */
	bool		 dead;
};

/* A new header in the merged list, placed before its anchor. */
struct newent {
	size_t		 anchor;	/* MTA index of the anchor; n+1 END */
	const char	*name;		/* borrowed */
	const char	*value;		/* borrowed */
};

/* fate_differs - whether two upstreams did different things to a header */
static bool
fate_differs(const struct fate *f, const struct ent *e)
{
	if (f->dead || e->dead)
		return f->dead != e->dead;
	return strcmp(f->value, e->value) != 0;
}

/*
 * merge_header_lists - replay every upstream on its private list and
 * fold the lists into fates of originals and anchored new entries
 */
/*
 * key - where an element of the unchanged MTA list [Orig[1..h], H*,
 * Orig[h+1..n]] stands: Orig[p] is at p - 1 above the hidden header and
 * at p below it, H* at h.  An insheader at that index lands right before
 * the element; with h == 0 H* is the top.
 */
static size_t
key(size_t p, size_t h)
{
	return p <= h ? p - 1 : p;
}

static void
merge_header_lists(const struct merge_header *orig, size_t norig,
    size_t h, const struct merge_upstream *ups, size_t nups,
    struct builder *b, struct fate *fates, struct newent **newsp,
    size_t *nnewsp)
{
	struct hlist	 l = { 0 };
	struct newent	*news = NULL;
	struct ent	 e, *p;
	struct fate	*f;
	size_t		 nnews = 0, capnews = 0, first, anchor, u, i;

	for (u = 0; u < nups; u++) {
		l.n = 0;
		for (i = 0; i <= norig; i++) {
			if (i == h) {
				e = (struct ent){ .kind = ENT_HIDDEN,
				    .name = "", .value = "" };
				hlist_insert(&l, l.n, &e);
			}
			if (i == norig)
				break;
			e = (struct ent){ .kind = ENT_ORIG, .pos = i + 1,
			    .name = orig[i].name, .value = orig[i].value };
			hlist_insert(&l, l.n, &e);
		}
		for (i = 0; i < ups[u].nmods; i++)
			hlist_apply(&l, &ups[u].mods[i]);

		/*
		 * New entries wait in news[first..] until the next anchor
		 * is seen.  Upstreams are walked in index order, so on one
		 * anchor their entries end up in upstream order, each
		 * upstream's in its own order.
		 */
		first = nnews;
		for (i = 0; i <= l.n; i++) {
			p = i < l.n ? &l.v[i] : NULL;
			if (p != NULL && p->kind == ENT_NEW) {
				if (p->dead)
					continue;
				if (nnews == capnews) {
					capnews = capnews == 0 ? 8 :
					    capnews * 2;
					news = xreallocarray(news, capnews,
					    sizeof *news);
				}
				news[nnews++] = (struct newent){
				    .name = p->name, .value = p->value };
				continue;
			}
			anchor = p == NULL ? norig + 1 :
			    p->kind == ENT_HIDDEN ? h : key(p->pos, h);
			for (; first < nnews; first++)
				news[first].anchor = anchor;
			if (p == NULL || p->kind != ENT_ORIG ||
			    !(p->changed || p->dead))
				continue;

			/* The lowest index wins; identical edits agree. */
			f = &fates[p->pos - 1];
			if (!f->touched) {
				*f = (struct fate){ .touched = true, .up = u,
				    .name = p->name, .value = p->value,
				    .dead = p->dead };
			} else if (fate_differs(f, p)) {
				push_conflict(b, CONFLICT_HEADER, f->up, u,
				    orig[p->pos - 1].name);
			}
		}
	}
	hlist_fini(&l);
	*newsp = news;
	*nnewsp = nnews;
}

/*
 * merge_headers - emit the header part of the script
 *
 * With L = [H*, Orig[1..n]] as the MTA holds it, inserts by descending
 * anchor p always find Orig[p] as the (p+1)-th entry, since nothing
 * above it has moved yet; each anchor's group goes in reverse so it
 * reads g_1..g_m.  Changes then go by descending original position,
 * hence by descending occurrence within each name: nothing above the
 * target has been deleted yet, so its index is its occurrence among the
 * originals of that name plus the new same-name entries placed above
 * it.  chgheader never renames across names, so counts stay exact.
 * Appends come last and disturb nothing.
 */
static void
merge_headers(const struct merge_header *orig, size_t norig, size_t h,
    const struct merge_upstream *ups, size_t nups, struct builder *b)
{
	struct fate	*fates;
	struct newent	*news;
	size_t		 nnews, p, i, j, idx;

	fates = xcalloc(norig, sizeof *fates);
	merge_header_lists(orig, norig, h, ups, nups, b, fates, &news,
	    &nnews);

	for (p = norig + 1; p-- > 0;)
		for (j = nnews; j-- > 0;)
			if (news[j].anchor == p)
				push_op(b, MOD_INSHEADER, p, news[j].name,
				    news[j].value);

	for (i = norig; i >= 1; i--) {
		if (!fates[i - 1].touched)
			continue;
		idx = 0;
		for (j = 0; j < i; j++)
			if (strcasecmp(orig[j].name, orig[i - 1].name) == 0)
				idx++;
		for (j = 0; j < nnews; j++)
			if (news[j].anchor <= key(i, h) &&
			    strcasecmp(news[j].name, orig[i - 1].name) == 0)
				idx++;
		push_op(b, MOD_CHGHEADER, idx, fates[i - 1].name,
		    fates[i - 1].dead ? "" : fates[i - 1].value);
	}

	for (j = 0; j < nnews; j++)
		if (news[j].anchor == norig + 1)
			push_op(b, MOD_ADDHEADER, 0, news[j].name,
			    news[j].value);

	free(news);
	free(fates);
}

/*
 * merge_sender - one chgfrom: each upstream's last one counts (the MTA
 * would apply them in turn), and the lowest index wins
 */
static void
merge_sender(const struct merge_upstream *ups, size_t nups,
    struct builder *b)
{
	const struct mod	*win = NULL, *last;
	size_t			 winner = 0, u, i;

	for (u = 0; u < nups; u++) {
		last = NULL;
		for (i = 0; i < ups[u].nmods; i++)
			if (ups[u].mods[i].kind == MOD_CHGFROM)
				last = &ups[u].mods[i];
		if (last == NULL)
			continue;
		if (win == NULL) {
			win = last;
			winner = u;
		} else if (strcmp(win->name, last->name) != 0 ||
		    !str_eq(win->value, last->value)) {
			push_conflict(b, CONFLICT_SENDER, winner, u, NULL);
		}
	}
	if (win != NULL)
		push_op(b, MOD_CHGFROM, 0, win->name, win->value);
}

/* addr_span - the address without its angle brackets */
static void
addr_span(const char *s, const char **start, size_t *len)
{
	size_t	 n;

	if (*s == '<')
		s++;
	n = strlen(s);
	if (n > 0 && s[n - 1] == '>')
		n--;
	*start = s;
	*len = n;
}

/* rcpt_is_rejected - whether the MTA side already refused this address */
static bool
rcpt_is_rejected(const char *rcpt, const char *const *rejected,
    size_t nrejected)
{
	const char	*a, *r;
	size_t		 alen, rlen, i;

	addr_span(rcpt, &a, &alen);
	for (i = 0; i < nrejected; i++) {
		if (rejected[i] == NULL)
			continue;
		addr_span(rejected[i], &r, &rlen);
		if (alen == rlen && strncasecmp(a, r, alen) == 0)
			return true;
	}
	return false;
}

/*
 * merge_rcpts - every delrcpt, then every addrcpt, exact duplicates
 * dropped; an address deleted by one upstream and added by another is
 * thus present in the end
 */
static void
merge_rcpts(const struct merge_upstream *ups, size_t nups,
    const char *const *rejected, size_t nrejected, struct builder *b)
{
	struct merge_result	*r = b->out;
	const struct mod	*m, *o;
	size_t			 start, u, i, j;

	start = r->nops;
	for (u = 0; u < nups; u++) {
		for (i = 0; i < ups[u].nmods; i++) {
			m = &ups[u].mods[i];
			if (m->kind != MOD_DELRCPT ||
			    rcpt_is_rejected(m->name, rejected, nrejected))
				continue;
			for (j = start; j < r->nops; j++)
				if (strcmp(r->ops[j].name, m->name) == 0)
					break;
			if (j == r->nops)
				push_op(b, MOD_DELRCPT, 0, m->name, NULL);
		}
	}

	start = r->nops;
	for (u = 0; u < nups; u++) {
		for (i = 0; i < ups[u].nmods; i++) {
			m = &ups[u].mods[i];
			if (m->kind != MOD_ADDRCPT &&
			    m->kind != MOD_ADDRCPT_PAR)
				continue;
			for (j = start; j < r->nops; j++) {
				o = &r->ops[j];
				if (o->kind == m->kind &&
				    strcmp(o->name, m->name) == 0 &&
				    (m->kind == MOD_ADDRCPT ||
				    str_eq(o->value, m->value)))
					break;
			}
			if (j == r->nops)
				push_op(b, m->kind, 0, m->name,
				    m->kind == MOD_ADDRCPT_PAR ?
				    m->value : NULL);
		}
	}
}

/*
 * merge_body - the lowest-index replacement, whole; each upstream's
 * replacement is all its chunks in order, and an empty one counts
 */
static void
merge_body(const struct merge_upstream *ups, size_t nups,
    struct builder *b)
{
	struct mod	*op;
	uint8_t		*body;
	size_t		 winner = 0, len, u, i;
	bool		 found = false, has;

	for (u = 0; u < nups; u++) {
		has = false;
		len = 0;
		for (i = 0; i < ups[u].nmods; i++) {
			if (ups[u].mods[i].kind != MOD_REPLBODY)
				continue;
			has = true;
			len += ups[u].mods[i].bodylen;
		}
		if (!has)
			continue;
		if (found) {
			push_conflict(b, CONFLICT_BODY, winner, u, NULL);
			continue;
		}
		found = true;
		winner = u;
		body = xmalloc(len);
		len = 0;
		for (i = 0; i < ups[u].nmods; i++) {
			if (ups[u].mods[i].kind != MOD_REPLBODY ||
			    ups[u].mods[i].bodylen == 0)
				continue;
			memcpy(body + len, ups[u].mods[i].body,
			    ups[u].mods[i].bodylen);
			len += ups[u].mods[i].bodylen;
		}
		op = push_op(b, MOD_REPLBODY, 0, NULL, NULL);
		op->body = body;
		op->bodylen = len;
	}
}

/* merge_quarantine - one quarantine, with the first reason given */
static void
merge_quarantine(const struct merge_upstream *ups, size_t nups,
    struct builder *b)
{
	size_t	 u, i;

	for (u = 0; u < nups; u++)
		for (i = 0; i < ups[u].nmods; i++)
			if (ups[u].mods[i].kind == MOD_QUARANTINE) {
				push_op(b, MOD_QUARANTINE, 0,
				    ups[u].mods[i].name, NULL);
				return;
			}
}

int
merge_mods(const struct merge_header *orig, size_t norig,
    const struct merge_upstream *ups, size_t nups,
    const char *const *rejected, size_t nrejected,
    struct merge_result *out)
{
	return merge_mods_at(orig, norig, 0, ups, nups, rejected, nrejected,
	    out);
}

int
merge_mods_at(const struct merge_header *orig, size_t norig, size_t h,
    const struct merge_upstream *ups, size_t nups,
    const char *const *rejected, size_t nrejected,
    struct merge_result *out)
{
	struct builder	 b = { .out = out };
	size_t		 u, i;

	memset(out, 0, sizeof *out);
	if ((norig > 0 && orig == NULL) || (nups > 0 && ups == NULL) ||
	    (nrejected > 0 && rejected == NULL) || h > norig)
		return -EINVAL;
	for (i = 0; i < norig; i++)
		if (orig[i].name == NULL || orig[i].value == NULL)
			return -EINVAL;
	/* Check everything first, so a refusal leaves nothing behind. */
	for (u = 0; u < nups; u++) {
		if (ups[u].nmods > 0 && ups[u].mods == NULL)
			return -EINVAL;
		for (i = 0; i < ups[u].nmods; i++)
			if (!mod_is_valid(&ups[u].mods[i]))
				return -EINVAL;
	}

	merge_headers(orig, norig, h, ups, nups, &b);
	merge_sender(ups, nups, &b);
	merge_rcpts(ups, nups, rejected, nrejected, &b);
	merge_body(ups, nups, &b);
	merge_quarantine(ups, nups, &b);
	return 0;
}

void
merge_result_fini(struct merge_result *r)
{
	size_t	 i;

	if (r == NULL)
		return;
	for (i = 0; i < r->nops; i++)
		codec_mod_fini(&r->ops[i]);
	free(r->ops);
	r->ops = NULL;
	r->nops = 0;
	for (i = 0; i < r->nconflicts; i++) {
		free(r->conflicts[i].what);
		r->conflicts[i].what = NULL;
	}
	free(r->conflicts);
	r->conflicts = NULL;
	r->nconflicts = 0;
}

/*
 * Phases.
 */

static bool
is_header_op(enum mod_kind k)
{
	return k == MOD_ADDHEADER || k == MOD_INSHEADER || k == MOD_CHGHEADER;
}

static bool
is_rcpt_op(enum mod_kind k)
{
	return k == MOD_ADDRCPT || k == MOD_ADDRCPT_PAR || k == MOD_DELRCPT;
}

/* push_copy - append a deep copy of m */
static void
push_copy(struct builder *b, const struct mod *m)
{
	struct merge_result	*r = b->out;

	if (r->nops == b->opcap) {
		b->opcap = b->opcap == 0 ? 8 : b->opcap * 2;
		r->ops = xreallocarray(r->ops, b->opcap, sizeof *r->ops);
	}
	codec_mod_copy(&r->ops[r->nops++], m);
}

/* last_of - the last op of kind k in r, or NULL */
static const struct mod *
last_of(const struct merge_result *r, enum mod_kind k)
{
	for (size_t i = r->nops; i-- > 0;)
		if (r->ops[i].kind == k)
			return &r->ops[i];
	return NULL;
}

void
merge_compose(struct merge_result *total, const struct merge_result *next)
{
	struct merge_result	 out = { 0 };
	struct builder		 b = { .out = &out };
	const struct mod	*m;
	size_t			 i;

	for (i = 0; i < total->nops; i++)
		if (is_header_op(total->ops[i].kind))
			push_copy(&b, &total->ops[i]);
	for (i = 0; i < next->nops; i++) {
		if (!is_header_op(next->ops[i].kind))
			continue;
		push_copy(&b, &next->ops[i]);
	}
	if ((m = last_of(next, MOD_CHGFROM)) != NULL ||
	    (m = last_of(total, MOD_CHGFROM)) != NULL)
		push_copy(&b, m);
	for (i = 0; i < total->nops; i++)
		if (is_rcpt_op(total->ops[i].kind))
			push_copy(&b, &total->ops[i]);
	for (i = 0; i < next->nops; i++)
		if (is_rcpt_op(next->ops[i].kind))
			push_copy(&b, &next->ops[i]);
	if ((m = last_of(next, MOD_REPLBODY)) != NULL ||
	    (m = last_of(total, MOD_REPLBODY)) != NULL)
		push_copy(&b, m);
	for (i = 0; i < total->nops; i++)
		if (total->ops[i].kind == MOD_QUARANTINE)
			break;
	if ((m = i < total->nops ? &total->ops[i] :
	    last_of(next, MOD_QUARANTINE)) != NULL)
		push_copy(&b, m);
	/* Conflicts were reported per phase; keep them all. */
	for (i = 0; i < total->nconflicts; i++)
		push_conflict(&b, total->conflicts[i].kind,
		    total->conflicts[i].winner, total->conflicts[i].loser,
		    total->conflicts[i].what);
	for (i = 0; i < next->nconflicts; i++)
		push_conflict(&b, next->conflicts[i].kind,
		    next->conflicts[i].winner, next->conflicts[i].loser,
		    next->conflicts[i].what);
	merge_result_fini(total);
	*total = out;
}

void
merge_visible(const struct merge_header *orig, size_t norig,
    const struct mod *ops, size_t nops, struct merge_header **out,
    size_t *nout, size_t *t)
{
	static const char	 hidden[] = "\001hidden";
	struct merge_header	*in, *all;
	size_t			 nall, k = 0;

	in = xcalloc(norig + 1, sizeof *in);
	in[0].name = (char *)hidden;
	in[0].value = (char *)"";
	for (size_t i = 0; i < norig; i++)
		in[i + 1] = orig[i];
	merge_apply_headers(in, norig + 1, true, ops, nops, &all, &nall);
	free(in);
	*t = 0;
	for (size_t i = 0; i < nall; i++) {
		if (strcmp(all[i].name, hidden) == 0) {
			*t = i;
			free(all[i].name);
			free(all[i].value);
			continue;
		}
		all[k++] = all[i];
	}
	*out = all;
	*nout = k;
}
