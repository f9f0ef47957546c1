/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * gate - what each upstream of a connection may take part in and do:
 * its conditions (apply_if, skip_if: cond.h) keep it out of the
 * session, of a message or of a recipient; its "actions" allow-list
 * drops the modifications it may not make; its "verdicts" map turns
 * its verdicts into others, or into a header.
 *
 * Exactness: each condition is decided at the first stage where its
 * facts are known.  An upstream with a client or macro condition is
 * connected only at the MTA's connect, once those are known, and never
 * if it stays out of the session.  Sender, auth and size are known at
 * MAIL: an upstream that stays out of the message gets none of its
 * stages (the next message of the session is decided anew).  A
 * rcpt_domain condition is decided per recipient: the upstream is shown
 * only the recipients it applies to (it counts as continue for the
 * others); one shown none is sent an abort once the recipients are
 * known and gets none of the message's content.  An upstream that is
 * out counts as continue; the decision log says why.
 *
 * Concurrency: the connection's caller thread (fanout_int.h), except
 * fo_gate_verdict, which runs on a loop thread under fo->lock.
 * Ownership: slot strings (out_why) are freed by fanout.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cond.h"
#include "fanout_int.h"
#include "log.h"
#include "xalloc.h"

/* WHY_MAX - bytes of a reason kept for the decision log */
#define WHY_MAX		400

static void
set_out(struct slot *s, const char *why)
{
	free(s->out_why);
	s->out_why = xstrdup(why);
}

static const char *
macro_of(void *arg, const char *name)
{
	const struct fanout_event	*ev = arg;

	return ev->macro != NULL ? ev->macro(ev->macro_arg, name) : NULL;
}

static bool
has_cond(const struct conf_upstream *u)
{
	return u->apply_if.set || u->skip_if.set;
}

/* fo_gate_connect - decide the upstreams opened once the client is
 * known: keep them out of the session, or connect them now */
void
fo_gate_connect(struct fanout *fo, const struct fanout_event *ev)
{
	struct cond_facts	 f = { .level = COND_AT_CONNECT, .size = -1,
				    .macro = macro_of,
				    .macro_arg = (void *)(uintptr_t)ev };
	char			 why[WHY_MAX];
	size_t			 nopen = 0;
	double			 t = fo_mono();

	f.client = ev->argc > 1 && ev->family != 'L' && ev->family != 'U' ?
	    ev->argv[1] : NULL;
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];

		if (!s->later)
			continue;
		s->later = false;
		if (cond_stays_out(&s->cfg->apply_if, &s->cfg->skip_if, &f,
		    why, sizeof why)) {
			s->out_session = true;
			set_out(s, why);
			log_debug("%s: upstream %s: skipped for the session "
			    "(%s)", fo->connid, s->cfg->name, why);
			continue;
		}
		fo_open_slot(fo, i, t);
		nopen++;
		s->later = true;	/* marks it for fo_opened_slot */
	}
	if (nopen == 0)
		return;
	fo_open_wait(fo, t);
	for (size_t i = 0; i < fo->n; i++)
		if (fo->slots[i].later) {
			fo->slots[i].later = false;
			fo_opened_slot(fo, i);
		}
}

/* fo_gate_mail - which upstreams stay out of the message begun */
void
fo_gate_mail(struct fanout *fo, const struct fanout_event *ev)
{
	struct cond_facts	 f = { .level = COND_AT_MAIL,
				    .macro = macro_of,
				    .macro_arg = (void *)(uintptr_t)ev };
	char			 why[WHY_MAX];

	f.client = fo->client_addr;
	f.sender = ev->argc > 0 ? ev->argv[0] : NULL;
	f.size = fo->msg_size = cond_size_param(ev->argv, ev->argc);
	fo->gate_rcpts_done = false;
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];

		s->rcpts_shown = s->rcpts_hidden = 0;
		if (s->out_session || !has_cond(s->cfg))
			continue;
		if (cond_stays_out(&s->cfg->apply_if, &s->cfg->skip_if, &f,
		    why, sizeof why)) {
			s->out_msg = true;
			set_out(s, why);
		}
	}
}

/* fo_gate_rcpt - which upstreams are shown this recipient */
void
fo_gate_rcpt(struct fanout *fo, const struct fanout_event *ev)
{
	struct cond_facts	 f = { .level = COND_AT_RCPT,
				    .macro = macro_of,
				    .macro_arg = (void *)(uintptr_t)ev };
	char			 why[WHY_MAX];

	f.client = fo->client_addr;
	f.sender = fo->msg.sender;
	f.rcpt = ev->argc > 0 ? ev->argv[0] : NULL;
	f.size = fo->msg_size;
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];

		if (!s->cfg->cond_rcpt || s->out_session || s->out_msg)
			continue;
		if (cond_stays_out(&s->cfg->apply_if, &s->cfg->skip_if, &f,
		    why, sizeof why)) {
			s->out_rcpt = true;
			s->rcpts_hidden++;
			set_out(s, why);
			log_debug("%s: upstream %s: recipient %s not shown (%s)",
			    message_name(&fo->msg, fo->connid), s->cfg->name,
			    f.rcpt != NULL ? f.rcpt : "", why);
		} else if (!ev->rejected)
			s->rcpts_shown++;
	}
}

/* fo_gate_rcpts_done - an upstream shown no recipient stays out of the
 * rest of the message; it had MAIL, so it is told of the end */
void
fo_gate_rcpts_done(struct fanout *fo)
{
	if (fo->gate_rcpts_done || !fo->msg.active)
		return;
	fo->gate_rcpts_done = true;
	for (size_t i = 0; i < fo->n; i++) {
		struct slot	*s = &fo->slots[i];
		bool		 by_apply;

		if (!s->cfg->cond_rcpt || s->out_session || s->out_msg ||
		    s->rcpts_shown > 0)
			continue;
		by_apply = s->cfg->apply_if.set && s->cfg->apply_if.has_rcpt;
		fo_abort_slot(fo, i);
		s->out_msg = true;
		set_out(s, by_apply ? "apply_if: rcpt_domain: no recipient "
		    "matched" : "skip_if: every recipient matched");
	}
}

enum verdict
fo_gate_verdict(struct fanout *fo, struct slot *s, struct exchange *f)
{
	struct upstream_xchg	*x = &f->x;
	const struct conf_vmap	*m;
	enum verdict		 was = x->verdict;

	if (x->error != 0 || x->kind != XCHG_STAGE ||
	    (unsigned)was >= VERDICT_COUNT || x->stage == STAGE_ABORT ||
	    x->stage == STAGE_QUIT)
		return VERDICT_NONE;
	m = &s->cfg->verdicts[was];
	if (m->to == VERDICT_NONE)
		return VERDICT_NONE;
	x->verdict = m->to;
	/* Its reply text belongs to the verdict it gave ("550 ..."). */
	free(x->text);
	x->text = NULL;
	if (x->stage == STAGE_CONNECT || x->stage == STAGE_HELO ||
	    x->stage == STAGE_UNKNOWN) {
		if (m->hname != NULL)
			s->hdr_session = m;
	} else if (f->msg == fo->msg.seq) {
		if (m->hname != NULL)
			s->hdr_msg = m;
		if (merge_verdict(s->mapped_from, was) != s->mapped_from) {
			s->mapped_from = was;
			s->mapped_to = m->to;
		}
	}
	return was;
}

struct mod *
fo_gate_mods(struct fanout *fo, size_t i, const struct mod *in, size_t n,
    size_t *nout)
{
	struct slot		*s = &fo->slots[i];
	const struct conf_vmap	*hdr[2];
	struct mod		*out = xcalloc(n + 3, sizeof *out);
	size_t			 k = 0, dropped[MOD_KIND_COUNT] = { 0 }, nd = 0;

	pthread_mutex_lock(&fo->lock);
	hdr[0] = s->hdr_session;
	hdr[1] = s->hdr_msg;
	pthread_mutex_unlock(&fo->lock);
	for (size_t j = 0; j < n; j++) {
		if ((unsigned)in[j].kind < MOD_KIND_COUNT &&
		    (s->cfg->actions & (1u << in[j].kind)) == 0) {
			dropped[in[j].kind]++;
			nd++;
			continue;
		}
		out[k++] = in[j];
	}
	for (int h = 0; h < 2; h++) {
		if (hdr[h] == NULL || (h == 1 && hdr[1] == hdr[0]))
			continue;
		memset(&out[k], 0, sizeof out[k]);
		out[k].kind = MOD_ADDHEADER;
		/* Borrowed from the configuration, which outlives the
		 * merge; the merge copies what it keeps. */
		out[k].name = hdr[h]->hname;
		out[k].value = hdr[h]->hvalue;
		k++;
	}
	if (nd > 0) {
		struct buf	 line = BUF_INIT;

		for (int kd = 0; kd < MOD_KIND_COUNT; kd++)
			if (dropped[kd] > 0)
				message_put(&line, "%s%zu %s", buf_avail(&line) >
				    0 ? ", " : "", dropped[kd],
				    codec_mod_kind_name((enum mod_kind)kd));
		buf_add_u8(&line, '\0');
		log_info("%s: upstream %s: dropped %s: not in its actions",
		    message_name(&fo->msg, fo->connid), s->cfg->name,
		    (const char *)buf_head(&line));
		buf_fini(&line);
	}
	*nout = k;
	return out;
}

char *
fo_gate_note(const struct slot *s)
{
	struct buf	 b = BUF_INIT;
	char		*r;

	if (s->mapped_from != VERDICT_NONE)
		message_put(&b, "verdicts: %s became %s",
		    proto_verdict_name(s->mapped_from),
		    s->hdr_msg != NULL ? "a header" :
		    proto_verdict_name(s->mapped_to));
	if (s->rcpts_hidden > 0 && !s->out_msg)
		message_put(&b, "%s%u of %u recipients shown (%s)",
		    buf_avail(&b) > 0 ? "; " : "", s->rcpts_shown,
		    s->rcpts_shown + s->rcpts_hidden, s->out_why != NULL ?
		    s->out_why : "");
	if (buf_avail(&b) == 0) {
		buf_fini(&b);
		return NULL;
	}
	buf_add_u8(&b, '\0');
	r = xstrdup((const char *)buf_head(&b));
	buf_fini(&b);
	return r;
}
