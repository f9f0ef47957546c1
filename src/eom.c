/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * eom - end of message over the phases: the first phase has had the
 * content from the MTA, each later one is shown the message as the ones
 * before left it (replay), and their edit scripts compose into one.
 *
 * Each phase has its own budget, counted from its own start: a slow or
 * failed phase never eats a later one's time, and no upstream is blamed
 * for another's.
 *
 * Concurrency: the connection's caller thread (see fanout_int.h).
 * Ownership: the composed script is kept in the message (fo->msg).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "fanout_int.h"
#include "log.h"
#include "merge.h"
#include "spool.h"
#include "xalloc.h"

/* fix_leadspc - give back the space the MTA would have added */
static void
fix_leadspc(struct mod *m)
{
	char	*v;

	if ((m->kind != MOD_ADDHEADER && m->kind != MOD_INSHEADER &&
	    m->kind != MOD_CHGHEADER) || m->value == NULL ||
	    m->value[0] == '\0')
		return;
	v = xasprintf(" %s", m->value);
	free(m->value);
	m->value = v;
}

static const char *const conflict_names[CONFLICT_KIND_COUNT] = {
	[CONFLICT_HEADER]	= "header",
	[CONFLICT_SENDER]	= "sender",
	[CONFLICT_BODY]		= "body",
};

/*
 * merge_phase - merge the modifications of a phase's upstreams (0: all)
 * made against the headers hdrs; t is how many of those sit above the
 * MTA's hidden header (earlier phases put them there).  0 or -errno.
 */
static int
merge_phase(struct fanout *fo, unsigned phase, const struct merge_header *hdrs,
    size_t nhdrs, size_t t, struct merge_result *out)
{
	struct merge_upstream	*ups = xcalloc(fo->n == 0 ? 1 : fo->n,
				    sizeof *ups);
	struct mod		**kept = xcalloc(fo->n == 0 ? 1 : fo->n,
				    sizeof *kept);
	const char		*qid = message_name(&fo->msg, fo->connid);
	int			 rc;

	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];
		struct exchange	*f = s->cur;

		if (f == NULL || !f->done || f->x.error != 0 || s->failed ||
		    (phase != 0 && s->cfg->phase != phase))
			continue;
		if (s->cfg->mode == MODE_MONITOR) {
			/* Logged and counted, never applied. */
			s->mon_mods += f->x.nmods;
			continue;
		}
		if (s->leadspc_fix)
			for (size_t k = 0; k < f->x.nmods; k++)
				fix_leadspc(&f->x.mods[k]);
		/* What its "actions" allow, and its mapped header. */
		kept[i] = fo_gate_mods(fo, i, f->x.mods, f->x.nmods,
		    &ups[i].nmods);
		ups[i].mods = kept[i];
	}
	rc = merge_mods_at(hdrs, nhdrs, t, ups, fo->n,
	    (const char *const *)fo->msg.rejected, fo->msg.nrejected, out);
	for (size_t i = 0; i < fo->n; i++)
		free(kept[i]);
	free(kept);
	free(ups);
	if (rc != 0) {
		log_warnc(rc, "%s: merge of modifications failed", qid);
		memset(out, 0, sizeof *out);
		return rc;
	}
	for (size_t i = 0; i < out->nconflicts; i++) {
		const struct merge_conflict *c = &out->conflicts[i];

		log_info("%s: conflict: %s%s%s changed by %s and %s; %s wins",
		    qid, conflict_names[c->kind], c->what != NULL ? " " : "",
		    c->what != NULL ? c->what : "",
		    fo->slots[c->winner].cfg->name,
		    fo->slots[c->loser].cfg->name,
		    fo->slots[c->winner].cfg->name);
	}
	return 0;
}

struct replay {
	struct fanout			*fo;
	const struct fanout_event	*ev;
	unsigned			 phase;
	double				 base;
};

/* replay_body - one piece of the body to a later phase */
static int
replay_body(void *arg, const uint8_t *p, size_t len)
{
	struct replay		*r = arg;
	struct fanout_event	 b = { .stage = STAGE_BODY, .data = p,
				    .len = len };

	fo_send_content(r->fo, &b, r->phase, r->base);
	return 0;
}

/*
 * replay - show a later phase the message as the earlier phases left
 * it: their headers, end of headers, and the body (a replacement if one
 * was made, else the MTA's, kept in fo->msg.body).
 */
static int
replay(struct fanout *fo, const struct fanout_event *ev, unsigned phase,
    const struct merge_header *hdrs, size_t nhdrs, const struct mod *body,
    double base)
{
	struct replay		 r = { fo, ev, phase, base };
	struct fanout_event	 h = { .macro = ev->macro,
				    .macro_arg = ev->macro_arg };

	h.stage = STAGE_HEADER;
	for (size_t i = 0; i < nhdrs; i++) {
		h.name = hdrs[i].name;
		h.value = hdrs[i].value;
		fo_send_content(fo, &h, phase, base);
	}
	h.stage = STAGE_EOH;
	fo_send_content(fo, &h, phase, base);
	if (body != NULL) {
		struct buf	 crlf;

		/* The MTA keeps a replacement body as lines and shows it to
		 * the next filter with CRLF line ends (PROTOCOL.md 5.1); so
		 * does the replay. */
		buf_init(&crlf);
		for (size_t i = 0; i < body->bodylen; i++) {
			if (body->body[i] == '\n' &&
			    (i == 0 || body->body[i - 1] != '\r'))
				buf_add_u8(&crlf, '\r');
			buf_add_u8(&crlf, body->body[i]);
		}
		for (size_t off = 0; off < buf_avail(&crlf);
		    off += PROTO_MAX_DATA)
			replay_body(&r, buf_head(&crlf) + off,
			    buf_avail(&crlf) - off > PROTO_MAX_DATA ?
			    PROTO_MAX_DATA : buf_avail(&crlf) - off);
		buf_fini(&crlf);
		return 0;
	}
	return spool_read(&fo->msg.body, PROTO_MAX_DATA, replay_body, &r);
}

static const struct mod *
find_body(const struct merge_result *r)
{
	for (size_t i = 0; i < r->nops; i++)
		if (r->ops[i].kind == MOD_REPLBODY)
			return &r->ops[i];
	return NULL;
}

/*
 * end_of_message - each phase in turn: the first has had the content
 * from the MTA, each later one is shown what the ones before produced;
 * their scripts compose into one.  Each phase has its own budget, its
 * upstreams' content timeout counted from the moment the phase starts
 * (its replay included): a slow phase never eats a later one's time,
 * and an upstream is only ever blamed for its own.  The MTA hears
 * progress every second throughout.
 */
void
fo_end_of_message(struct fanout *fo, const struct fanout_event *ev,
    struct fanout_answer *ans)
{
	struct merge_result	 total = { 0 }, r;
	struct merge_header	*cur = NULL;
	size_t			 ncur = 0, t = 0;
	double			 base = fo_mono();
	enum verdict		 v = VERDICT_ACCEPT, pv;
	int			 rc;

	fo->progress = ev->progress;
	fo->progress_arg = ev->progress_arg;
	/* One clock for all phases: the MTA waits for them all. */
	fo->nextprog = base + PROGRESS_INTERVAL;
	for (size_t k = 0; k < fo->nphases; k++) {
		unsigned	 ph = fo->nphases > 1 ? fo->phases[k] : 0;

		if (k > 0)
			base = fo_mono();
		if (k > 0 && (rc = replay(fo, ev, ph, cur, ncur,
		    find_body(&total), base)) != 0) {
			log_warnc(rc, "%s: cannot replay the message to "
			    "phase %u", fo->msg.queueid != NULL ? fo->msg.queueid :
			    fo->connid, ph);
			v = VERDICT_TEMPFAIL;
			ans->verdict = v;
			fo_release_cur(fo);
			break;
		}
		fo_scatter(fo, ev, true, ph, base);
		fo_wait_all(fo, ev->progress, ev->progress_arg);
		if (fo->mta_gone != NULL) {
			v = VERDICT_NONE;
			fo_release_cur(fo);
			break;
		}
		pv = fo_settle(fo, ev, ph, ans);
		if (pv != VERDICT_CONTINUE && pv != VERDICT_ACCEPT) {
			/* This phase ends the message; later phases still
			 * in it are aborted by the caller. */
			v = pv;
			fo_release_cur(fo);
			break;
		}
		v = merge_verdict(v, pv);
		if (k == 0) {
			rc = merge_phase(fo, ph, fo->msg.hdrs, fo->msg.nhdrs, 0, &total);
		} else {
			rc = merge_phase(fo, ph, cur, ncur, t, &r);
			if (rc == 0) {
				merge_compose(&total, &r);
				merge_result_fini(&r);
			}
		}
		fo_release_cur(fo);
		if (rc != 0) {
			v = VERDICT_TEMPFAIL;
			break;
		}
		if (k + 1 < fo->nphases) {
			merge_headers_free(cur, ncur);
			merge_visible(fo->msg.hdrs, fo->msg.nhdrs, total.ops,
			    total.nops, &cur, &ncur, &t);
		}
	}
	merge_headers_free(cur, ncur);
	fo->progress = NULL;
	fo->progress_arg = NULL;
	ans->verdict = v;
	if (v == VERDICT_NONE) {	/* the MTA gave up */
		merge_result_fini(&total);
		return;
	}
	if (v == VERDICT_CONTINUE || v == VERDICT_ACCEPT) {
		fo->msg.result = total;
		fo->msg.have_result = true;
		ans->mods = &fo->msg.result;
		return;
	}
	if (v == VERDICT_TEMPFAIL && ans->text == NULL)
		ans->decider = NULL;
	merge_result_fini(&total);
}
