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
 * Cost: O(n log n) for n requests and headers (expected, and amortized
 * for the order labels; see "Header lists"), so that an upstream's
 * 200,000 inserts merge in well under a second; max_modifications
 * (conf.h) bounds n per upstream.
 *
 * Concurrency: none needed; no shared state, const tables only.
 * Ownership: nothing is kept; results hold copies (see merge.h).
 */
#include <assert.h>
#include <ctype.h>
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
 * Names.  Header names compare case-insensitively; each distinct name
 * gets a small number (a group) through an open-addressing hash table,
 * with one value per group for the caller (a tree root, a counter).
 */
struct names {
	size_t		*slot;		/* group + 1; 0: empty */
	size_t		 nslot;		/* a power of two, or 0 */
	const char	**name;		/* per group; borrowed */
	size_t		*val;		/* per group; the caller's */
	size_t		 n;
	size_t		 cap;
};

#define NAMES_NONE	SIZE_MAX

/* name_hash - FNV-1a over the bytes folded to lower case */
static size_t
name_hash(const char *s)
{
	uint64_t	 h = 14695981039346656037ull;

	for (; *s != '\0'; s++) {
		h ^= (unsigned char)tolower((unsigned char)*s);
		h *= 1099511628211ull;
	}
	return (size_t)(h ^ (h >> 32));
}

/* names_grow - double the table (and start it) */
static void
names_grow(struct names *t)
{
	size_t	 n = t->nslot == 0 ? 64 : t->nslot * 2, i, k;

	free(t->slot);
	t->slot = xcalloc(n, sizeof *t->slot);
	t->nslot = n;
	for (i = 0; i < t->n; i++) {
		for (k = name_hash(t->name[i]) & (n - 1); t->slot[k] != 0;
		    k = (k + 1) & (n - 1))
			;
		t->slot[k] = i + 1;
	}
}

/*
 * names_id - the group of name; with add, a new group (val 0) when the
 * name is new, else NAMES_NONE
 */
static size_t
names_id(struct names *t, const char *name, bool add)
{
	size_t	 k, g;

	if (t->nslot == 0 && !add)
		return NAMES_NONE;
	if (t->nslot == 0 || 2 * (t->n + 1) > t->nslot)
		names_grow(t);
	for (k = name_hash(name) & (t->nslot - 1); t->slot[k] != 0;
	    k = (k + 1) & (t->nslot - 1)) {
		g = t->slot[k] - 1;
		if (strcasecmp(t->name[g], name) == 0)
			return g;
	}
	if (!add)
		return NAMES_NONE;
	if (t->n == t->cap) {
		t->cap = t->cap == 0 ? 16 : t->cap * 2;
		t->name = xreallocarray(t->name, t->cap, sizeof *t->name);
		t->val = xreallocarray(t->val, t->cap, sizeof *t->val);
	}
	g = t->n++;
	t->name[g] = name;
	t->val[g] = 0;
	t->slot[k] = g + 1;
	return g;
}

/* names_clear - forget every name, keep the memory */
static void
names_clear(struct names *t)
{
	if (t->nslot > 0)
		memset(t->slot, 0, t->nslot * sizeof *t->slot);
	t->n = 0;
}

static void
names_fini(struct names *t)
{
	free(t->slot);
	free(t->name);
	free(t->val);
	memset(t, 0, sizeof *t);
}

/*
 * Header lists.  Entries are never unlinked: a deleted one stays as
 * "dead" so that an original deleted by an upstream still marks the
 * place its neighbours were inserted at.  Dead entries are invisible to
 * index counting, as Postfix's unlinked ones are.
 *
 * A list is a treap (a binary search tree by position, balanced by
 * random priorities) whose nodes count the entries and the live entries
 * under them, so that the (i+1)-th live entry, the place of an insert,
 * is found in O(log n) and an insert or a delete costs O(log n)
 * (expected).  Each name has a second treap over its entries, in list
 * order, for the k-th live entry of a name that chgheader wants.  To
 * find a new entry's place in that one by comparing list positions in
 * O(1), every entry carries an order label, increasing along the list
 * (order maintenance, Bender et al., "Two simplified algorithms for
 * maintaining order in a list", 2002): a new entry takes the middle of
 * its neighbours' labels, and when they are adjacent the smallest
 * aligned label range around them that is sparse enough is spread out
 * again, O(log n) amortized.  So replaying n requests costs O(n log n),
 * not the O(n^2) of an array with memmove and linear scans (200,000
 * inserts took 15 s that way).  Nodes are array indexes, 0 standing for
 * "none": v[0] is a sentinel whose counts stay 0.  v[1] is a dead head
 * that every list starts with, so that each entry has a predecessor;
 * being dead, it counts for no index and is never shown.
 */
enum ent_kind {
	ENT_HIDDEN = 0,		/* the MTA's own Received:, H* */
	ENT_ORIG,		/* an original header */
	ENT_NEW			/* added or inserted by a request */
};

enum tree {
	TREE_ALL = 0,		/* every entry, in list order */
	TREE_NAME,		/* the entries of one name, in list order */
	TREE_COUNT
};

struct link {
	size_t		 l, r, p;	/* children, parent; 0: none */
	size_t		 size;		/* entries in the subtree */
	size_t		 live;		/* of which not dead */
};

struct ent {
	enum ent_kind	 kind;
	size_t		 pos;		/* ENT_ORIG: 1-based original position */
	const char	*name;		/* borrowed */
	const char	*value;		/* borrowed */
	bool		 changed;	/* ENT_ORIG: value (and name) replaced */
	bool		 dead;		/* deleted */
	size_t		 group;		/* its name; NAMES_NONE for H* */
	uint64_t	 prio;
	uint64_t	 label;		/* increasing along the list */
	struct link	 t[TREE_COUNT];
};

struct hlist {
	struct ent	*v;		/* v[0]: sentinel; entries v[1..n] */
	size_t		 n;
	size_t		 cap;
	size_t		 root;		/* of TREE_ALL */
	struct names	 names;		/* val: root of the name's TREE_NAME */
	uint64_t	 seed;		/* priorities; fixed, so runs repeat */
};

#define LK(l, x, k)	((l)->v[(x)].t[(k)])

/*
 * Order labels run from 0 to OM_END (exclusive).  A label range of 2^j
 * may hold at most 2^j / OM_T^j / 2 entries after a spread, so that
 * neighbours are at least 2 apart; the whole range thus holds some
 * 2 * 10^9 entries, more than memory would (an entry takes over 100
 * bytes).  A smaller OM_T spreads more often; 1.4 was the fastest of
 * those tried on 200,000 inserts at one place and at random places.
 */
#define OM_BITS		62
#define OM_END		((uint64_t)1 << OM_BITS)
#define OM_T		1.4

static void	hlist_insert(struct hlist *, const struct ent *, size_t);

/* hlist_clear - empty the list but for its dead head; keep the memory */
static void
hlist_clear(struct hlist *l)
{
	/* Linked as H* is, in no name's tree; then a dead new entry, which
	 * every walk skips. */
	struct ent	 head = { .kind = ENT_HIDDEN, .name = "", .value = "" };

	l->n = 0;
	l->root = 0;
	names_clear(&l->names);
	hlist_insert(l, &head, 0);
	l->v[1].kind = ENT_NEW;
	l->v[1].dead = true;
	LK(l, 1, TREE_ALL).live = 0;
}

/* hlist_init - an empty list */
static void
hlist_init(struct hlist *l)
{
	memset(l, 0, sizeof *l);
	l->cap = 16;
	l->v = xcalloc(l->cap, sizeof *l->v);
	l->seed = 0x9e3779b97f4a7c15ull;
	hlist_clear(l);
}

/* hlist_fini - release the arrays; the strings are borrowed */
static void
hlist_fini(struct hlist *l)
{
	free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
	names_fini(&l->names);
}

/* pull - recount x's subtree in tree k from its children */
static void
pull(struct hlist *l, size_t x, enum tree k)
{
	struct link	*a = &LK(l, x, k);

	a->size = 1 + LK(l, a->l, k).size + LK(l, a->r, k).size;
	a->live = (l->v[x].dead ? 0 : 1) + LK(l, a->l, k).live +
	    LK(l, a->r, k).live;
}

/* rotate_up - put x in its parent's place in tree k (root at *root) */
static void
rotate_up(struct hlist *l, enum tree k, size_t *root, size_t x)
{
	size_t	 p = LK(l, x, k).p, g = LK(l, p, k).p, b;

	if (LK(l, p, k).l == x) {
		b = LK(l, x, k).r;
		LK(l, p, k).l = b;
		LK(l, x, k).r = p;
	} else {
		b = LK(l, x, k).l;
		LK(l, p, k).r = b;
		LK(l, x, k).l = p;
	}
	if (b != 0)
		LK(l, b, k).p = p;
	LK(l, p, k).p = x;
	LK(l, x, k).p = g;
	if (g == 0)
		*root = x;
	else if (LK(l, g, k).l == p)
		LK(l, g, k).l = x;
	else
		LK(l, g, k).r = x;
	pull(l, p, k);
	pull(l, x, k);
}

/*
 * tree_insert - link the live entry x into tree k right before entry b
 * (b == 0: at the end), then restore the heap order of priorities
 */
static void
tree_insert(struct hlist *l, enum tree k, size_t *root, size_t x, size_t b)
{
	size_t	 p, y;

	LK(l, x, k) = (struct link){ .size = 1, .live = 1 };
	if (*root == 0) {
		*root = x;
		return;
	}
	if (b == 0) {
		for (p = *root; LK(l, p, k).r != 0; p = LK(l, p, k).r)
			;
		LK(l, p, k).r = x;
	} else if (LK(l, b, k).l == 0) {
		p = b;
		LK(l, p, k).l = x;
	} else {
		for (p = LK(l, b, k).l; LK(l, p, k).r != 0;
		    p = LK(l, p, k).r)
			;
		LK(l, p, k).r = x;
	}
	LK(l, x, k).p = p;
	for (y = p; y != 0; y = LK(l, y, k).p) {
		LK(l, y, k).size++;
		LK(l, y, k).live++;
	}
	while ((p = LK(l, x, k).p) != 0 && l->v[x].prio > l->v[p].prio)
		rotate_up(l, k, root, x);
}

/* tree_live_at - the live entry with i live ones before it, or 0 */
static size_t
tree_live_at(const struct hlist *l, enum tree k, size_t root, size_t i)
{
	size_t	 x = root, n;

	while (x != 0) {
		n = LK(l, LK(l, x, k).l, k).live;
		if (i < n) {
			x = LK(l, x, k).l;
			continue;
		}
		i -= n;
		if (!l->v[x].dead) {
			if (i == 0)
				return x;
			i--;
		}
		x = LK(l, x, k).r;
	}
	return 0;
}

/* tree_first, tree_next - walk tree k in order; 0 at the end */
static size_t
tree_first(const struct hlist *l, enum tree k, size_t x)
{
	if (x != 0)
		while (LK(l, x, k).l != 0)
			x = LK(l, x, k).l;
	return x;
}

static size_t
tree_next(const struct hlist *l, enum tree k, size_t x)
{
	size_t	 p;

	if (LK(l, x, k).r != 0)
		return tree_first(l, k, LK(l, x, k).r);
	while ((p = LK(l, x, k).p) != 0 && LK(l, p, k).r == x)
		x = p;
	return p;
}

/* tree_last, tree_prev - walk tree k backwards; 0 at the start */
static size_t
tree_last(const struct hlist *l, enum tree k, size_t x)
{
	if (x != 0)
		while (LK(l, x, k).r != 0)
			x = LK(l, x, k).r;
	return x;
}

static size_t
tree_prev(const struct hlist *l, enum tree k, size_t x)
{
	size_t	 p;

	if (LK(l, x, k).l != 0)
		return tree_last(l, k, LK(l, x, k).l);
	while ((p = LK(l, x, k).p) != 0 && LK(l, p, k).l == x)
		x = p;
	return p;
}

/*
 * om_spread - make room for a label right after entry p: find the
 * smallest aligned range of 2^j labels around p's that is sparse enough
 * (see OM_T) and give its entries evenly spaced labels
 */
static void
om_spread(struct hlist *l, size_t p)
{
	uint64_t	 lp = l->v[p].label, lo, size, gap;
	double		 cap = 1;
	size_t		 first = p, last = p, x, count = 1;

	for (unsigned j = 1; j <= OM_BITS; j++) {
		size = (uint64_t)1 << j;
		cap *= 2 / OM_T;
		lo = lp & ~(size - 1);
		/* The ranges nest: extend the last one's ends. */
		for (; (x = tree_prev(l, TREE_ALL, first)) != 0 &&
		    l->v[x].label >= lo; first = x)
			count++;
		for (; (x = tree_next(l, TREE_ALL, last)) != 0 &&
		    l->v[x].label - lo < size; last = x)
			count++;
		if (2 * (double)count > cap)
			continue;
		gap = size / count;
		for (x = first; count-- > 0; x = tree_next(l, TREE_ALL, x)) {
			l->v[x].label = lo;
			lo += gap;
		}
		return;
	}
	assert(!"order labels exhausted");
}

/*
 * om_label - the label for a new entry between p and its successor s
 * (0: none)
 */
static uint64_t
om_label(struct hlist *l, size_t p, size_t s)
{
	uint64_t	 lp = l->v[p].label, ls;

	ls = s != 0 ? l->v[s].label : OM_END;
	if (ls - lp < 2) {
		om_spread(l, p);
		lp = l->v[p].label;
		ls = s != 0 ? l->v[s].label : OM_END;
	}
	assert(ls - lp >= 2);
	return lp + (ls - lp) / 2;
}

/*
 * hlist_insert - put a copy of *e right before entry b (0: at the end)
 * and into its name's tree
 */
static void
hlist_insert(struct hlist *l, const struct ent *e, size_t b)
{
	size_t	 x, g, y, after, p;

	if (l->n + 1 == l->cap) {
		l->cap *= 2;
		l->v = xreallocarray(l->v, l->cap, sizeof *l->v);
	}
	x = ++l->n;
	l->v[x] = *e;
	l->v[x].dead = false;
	/* xorshift64*: any fixed sequence of distinct-ish values will do. */
	l->seed ^= l->seed >> 12;
	l->seed ^= l->seed << 25;
	l->seed ^= l->seed >> 27;
	l->v[x].prio = l->seed * 2685821657736338717ull;
	/* The label before linking: a spread walks the list as it was. */
	p = b != 0 ? tree_prev(l, TREE_ALL, b) :
	    tree_last(l, TREE_ALL, l->root);
	l->v[x].label = p != 0 ? om_label(l, p, b) : 0;
	tree_insert(l, TREE_ALL, &l->root, x, b);
	if (e->kind == ENT_HIDDEN) {
		l->v[x].group = NAMES_NONE;
		return;
	}
	g = names_id(&l->names, e->name, true);
	l->v[x].group = g;
	/* Before the first entry of the name that comes after x. */
	after = 0;
	if (b != 0) {
		for (y = l->names.val[g]; y != 0;) {
			if (l->v[y].label > l->v[x].label) {
				after = y;
				y = LK(l, y, TREE_NAME).l;
			} else {
				y = LK(l, y, TREE_NAME).r;
			}
		}
	}
	tree_insert(l, TREE_NAME, &l->names.val[g], x, after);
}

/* hlist_kill - mark x deleted and uncount it */
static void
hlist_kill(struct hlist *l, size_t x)
{
	size_t	 y;

	l->v[x].dead = true;
	for (y = x; y != 0; y = LK(l, y, TREE_ALL).p)
		LK(l, y, TREE_ALL).live--;
	if (l->v[x].group != NAMES_NONE)
		for (y = x; y != 0; y = LK(l, y, TREE_NAME).p)
			LK(l, y, TREE_NAME).live--;
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
	size_t		 g, x;

	if (m->name == NULL || m->value == NULL)
		return;
	switch (m->kind) {
	case MOD_ADDHEADER:
		hlist_insert(l, &e, 0);
		break;
	case MOD_INSHEADER:
		hlist_insert(l, &e, tree_live_at(l, TREE_ALL, l->root,
		    m->index));
		break;
	case MOD_CHGHEADER:
		x = 0;
		if ((g = names_id(&l->names, m->name, false)) != NAMES_NONE)
			x = tree_live_at(l, TREE_NAME, l->names.val[g],
			    m->index == 0 ? 0 : (size_t)m->index - 1);
		if (x == 0) {
			if (m->value[0] != '\0')
				hlist_insert(l, &e, 0);
		} else if (m->value[0] == '\0') {
			hlist_kill(l, x);
		} else {
			/* Same name but for case: the group stays. */
			p = &l->v[x];
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
	struct hlist		 l;
	struct merge_header	*res;
	struct ent		 e;
	size_t			 i, k, x;

	hlist_init(&l);
	for (i = 0; i < n; i++) {
		e = (struct ent){
			.kind = hidden_first && i == 0 ? ENT_HIDDEN : ENT_ORIG,
			.pos = i, .name = in[i].name, .value = in[i].value };
		hlist_insert(&l, &e, 0);
	}
	for (i = 0; i < nops; i++)
		hlist_apply(&l, &ops[i]);

	res = xcalloc(l.n == 0 ? 1 : l.n, sizeof *res);
	k = 0;
	for (x = tree_first(&l, TREE_ALL, l.root); x != 0;
	    x = tree_next(&l, TREE_ALL, x)) {
		if (l.v[x].dead)
			continue;
		res[k].name = xstrdup(l.v[x].name);
		res[k].value = xstrdup(l.v[x].value);
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
	struct hlist	 l;
	struct newent	*news = NULL;
	struct ent	 e, *p;
	struct fate	*f;
	size_t		 nnews = 0, capnews = 0, first, anchor, u, i, x;

	hlist_init(&l);
	for (u = 0; u < nups; u++) {
		hlist_clear(&l);
		for (i = 0; i <= norig; i++) {
			if (i == h) {
				e = (struct ent){ .kind = ENT_HIDDEN,
				    .name = "", .value = "" };
				hlist_insert(&l, &e, 0);
			}
			if (i == norig)
				break;
			e = (struct ent){ .kind = ENT_ORIG, .pos = i + 1,
			    .name = orig[i].name, .value = orig[i].value };
			hlist_insert(&l, &e, 0);
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
		for (x = tree_first(&l, TREE_ALL, l.root);;
		    x = tree_next(&l, TREE_ALL, x)) {
			p = x != 0 ? &l.v[x] : NULL;
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
			if (p == NULL)
				break;
			if (p->kind != ENT_ORIG || !(p->changed || p->dead))
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
 *
 * The new entries are sorted by anchor with a counting sort (anchors
 * run from 0 to n + 1), and the indexes of the changes are counted in
 * one sweep down the originals, per name, so this part is linear.
 */
static void
merge_headers(const struct merge_header *orig, size_t norig, size_t h,
    const struct merge_upstream *ups, size_t nups, struct builder *b)
{
	struct fate	*fates;
	struct newent	*news;
	struct names	 names = { 0 };
	size_t		*start, *order, *idx;
	size_t		 nnews, p, i, j, g;

	fates = xcalloc(norig == 0 ? 1 : norig, sizeof *fates);
	merge_header_lists(orig, norig, h, ups, nups, b, fates, &news,
	    &nnews);

	/* order[start[p]..start[p + 1]) lists anchor p's entries. */
	start = xcalloc(norig + 3, sizeof *start);
	order = xcalloc(nnews == 0 ? 1 : nnews, sizeof *order);
	for (j = 0; j < nnews; j++)
		start[news[j].anchor + 1]++;
	for (p = 1; p < norig + 3; p++)
		start[p] += start[p - 1];
	for (j = 0; j < nnews; j++)
		order[start[news[j].anchor]++] = j;
	/* The placing moved each start to the next one: move back. */
	for (p = norig + 2; p > 0; p--)
		start[p] = start[p - 1];
	start[0] = 0;

	for (p = norig + 1; p-- > 0;)
		for (j = start[p + 1]; j-- > start[p];)
			push_op(b, MOD_INSHEADER, p, news[order[j]].name,
			    news[order[j]].value);

	/* Per name: originals so far, then new entries placed above. */
	idx = xcalloc(norig == 0 ? 1 : norig, sizeof *idx);
	for (i = 1, j = 0; i <= norig; i++) {
		for (; j < start[norig + 1] &&
		    news[order[j]].anchor <= key(i, h); j++) {
			g = names_id(&names, news[order[j]].name, true);
			names.val[g]++;
		}
		g = names_id(&names, orig[i - 1].name, true);
		idx[i - 1] = ++names.val[g];
	}
	for (i = norig; i >= 1; i--)
		if (fates[i - 1].touched)
			push_op(b, MOD_CHGHEADER, idx[i - 1],
			    fates[i - 1].name, fates[i - 1].dead ? "" :
			    fates[i - 1].value);

	for (j = start[norig + 1]; j < nnews; j++)
		push_op(b, MOD_ADDHEADER, 0, news[order[j]].name,
		    news[order[j]].value);

	names_fini(&names);
	free(idx);
	free(order);
	free(start);
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

/* rcpt_same - whether two recipient requests are duplicates */
static bool
rcpt_same(const struct mod *o, const struct mod *m)
{
	return o->kind == m->kind && strcmp(o->name, m->name) == 0 &&
	    (m->kind != MOD_ADDRCPT_PAR || str_eq(o->value, m->value));
}

/* rcpt_hash - FNV-1a over what rcpt_same compares */
static size_t
rcpt_hash(const struct mod *m)
{
	uint64_t	 h = 14695981039346656037ull;
	const char	*s;

	h = (h ^ (unsigned)m->kind) * 1099511628211ull;
	for (s = m->name; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	if (m->kind == MOD_ADDRCPT_PAR && m->value != NULL) {
		h = (h ^ 0x100) * 1099511628211ull;
		for (s = m->value; *s != '\0'; s++)
			h = (h ^ (unsigned char)*s) * 1099511628211ull;
	}
	return (size_t)(h ^ (h >> 32));
}

/*
 * merge_rcpts - every delrcpt, then every addrcpt, exact duplicates
 * dropped; an address deleted by one upstream and added by another is
 * thus present in the end.  Duplicates are found with a hash table of
 * the ops pushed (their indexes + 1), so this is linear.
 */
static void
merge_rcpts(const struct merge_upstream *ups, size_t nups,
    const char *const *rejected, size_t nrejected, struct builder *b)
{
	struct merge_result	*r = b->out;
	const struct mod	*m;
	size_t			*slot, nslot = 16, total = 0, u, i, k;
	int			 pass;

	for (u = 0; u < nups; u++)
		total += ups[u].nmods;
	while (nslot < 2 * total)
		nslot *= 2;
	slot = xcalloc(nslot, sizeof *slot);
	for (pass = 0; pass < 2; pass++) {
		for (u = 0; u < nups; u++) {
			for (i = 0; i < ups[u].nmods; i++) {
				m = &ups[u].mods[i];
				if (pass == 0 ? m->kind != MOD_DELRCPT ||
				    rcpt_is_rejected(m->name, rejected,
				    nrejected) : m->kind != MOD_ADDRCPT &&
				    m->kind != MOD_ADDRCPT_PAR)
					continue;
				for (k = rcpt_hash(m) & (nslot - 1);
				    slot[k] != 0 &&
				    !rcpt_same(&r->ops[slot[k] - 1], m);
				    k = (k + 1) & (nslot - 1))
					;
				if (slot[k] != 0)
					continue;
				slot[k] = r->nops + 1;
				push_op(b, m->kind, 0, m->name,
				    m->kind == MOD_ADDRCPT_PAR ?
				    m->value : NULL);
			}
		}
	}
	free(slot);
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
