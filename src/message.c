/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * message - one transaction's state and its log line.  See message.h.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "codec.h"
#include "log.h"
#include "message.h"
#include "xalloc.h"

void
message_init(struct message *m, size_t replay_memory, const char *replay_dir)
{
	memset(m, 0, sizeof *m);
	spool_init(&m->body, replay_memory, replay_dir);
}

void
message_clear(struct message *m)
{
	merge_headers_free(m->hdrs, m->nhdrs);
	m->hdrs = NULL;
	m->nhdrs = m->hdrcap = 0;
	for (size_t i = 0; i < m->nrejected; i++)
		free(m->rejected[i]);
	m->nrejected = 0;
	for (size_t i = 0; i < m->nrcpts; i++)
		free(m->rcpts[i].addr);
	m->nrcpts = 0;
	if (m->have_result)
		merge_result_fini(&m->result);
	m->have_result = false;
	free(m->queueid);
	m->queueid = NULL;
	free(m->sender);
	m->sender = NULL;
	spool_reset(&m->body);
	m->spool_err = 0;
	m->decider = NULL;
	m->end_why = NULL;
	memset(m->applied, 0, sizeof m->applied);
	m->active = false;
}

void
message_fini(struct message *m)
{
	message_clear(m);
	free(m->rejected);
	free(m->rcpts);
	spool_fini(&m->body);
}

void
message_begin(struct message *m, const char *sender)
{
	message_clear(m);
	m->active = true;
	m->sender = xstrdup(sender);
}

void
message_set_queueid(struct message *m, const char *qid)
{
	if (m->queueid != NULL && strcmp(m->queueid, qid) == 0)
		return;
	free(m->queueid);
	m->queueid = xstrdup(qid);
}

void
message_note_header(struct message *m, const char *name, const char *value)
{
	if (m->nhdrs == m->hdrcap) {
		m->hdrcap = m->hdrcap == 0 ? 32 : m->hdrcap * 2;
		m->hdrs = xreallocarray(m->hdrs, m->hdrcap, sizeof *m->hdrs);
	}
	m->hdrs[m->nhdrs].name = xstrdup(name);
	m->hdrs[m->nhdrs].value = xstrdup(value);
	m->nhdrs++;
}

void
message_note_rcpt(struct message *m, const char *addr, enum verdict v,
    const char *by)
{
	if (m->nrcpts == m->rcptcap) {
		m->rcptcap = m->rcptcap == 0 ? 8 : m->rcptcap * 2;
		m->rcpts = xreallocarray(m->rcpts, m->rcptcap,
		    sizeof *m->rcpts);
	}
	m->rcpts[m->nrcpts].addr = xstrdup(addr);
	m->rcpts[m->nrcpts].verdict = v;
	m->rcpts[m->nrcpts].by = v == VERDICT_CONTINUE ? NULL : by;
	m->nrcpts++;
	if (v != VERDICT_REJECT && v != VERDICT_TEMPFAIL)
		return;
	if (m->nrejected == m->rejcap) {
		m->rejcap = m->rejcap == 0 ? 8 : m->rejcap * 2;
		m->rejected = xreallocarray(m->rejected, m->rejcap,
		    sizeof *m->rejected);
	}
	m->rejected[m->nrejected++] = xstrdup(addr);
}

const char *
message_name(const struct message *m, const char *fallback)
{
	return m->queueid != NULL ? m->queueid : fallback;
}

void
message_put(struct buf *b, const char *fmt, ...)
{
	va_list	 ap;
	size_t	 room;
	int	 n;

	/* Formatted once, in place, when it fits (the decision line's
	 * pieces nearly always do once the buffer has some room): it is
	 * the log line of every message, and a measuring pass first
	 * doubled its cost. */
	room = b->cap - b->len < 128 ? 256 : b->cap - b->len;
	va_start(ap, fmt);
	n = vsnprintf((char *)buf_reserve(b, room), room, fmt, ap);
	va_end(ap);
	if (n <= 0)
		return;
	if ((size_t)n >= room) {
		va_start(ap, fmt);
		vsnprintf((char *)buf_reserve(b, (size_t)n + 1), (size_t)n + 1,
		    fmt, ap);
		va_end(ap);
	}
	buf_commit(b, (size_t)n);
}

void
message_describe(const struct message *m, struct buf *line,
    enum verdict merged, size_t napplied)
{
	bool	 by = m->decider != NULL && merged != VERDICT_CONTINUE &&
		    merged != VERDICT_ACCEPT && merged != VERDICT_NONE;

	if (merged == VERDICT_NONE && m->end_why != NULL)
		message_put(line, "; merged aborted (%s at %s)", m->end_why,
		    proto_stage_name(m->end_stage));
	else
		message_put(line, "; merged %s%s%s", merged == VERDICT_NONE ?
		    "aborted" : proto_verdict_name(merged), by ? " by " : "",
		    by ? m->decider : "");
	message_put(line, "; %zu modification%s applied", napplied,
	    napplied == 1 ? "" : "s");
	if (napplied > 0) {
		const char	*sep = " (";

		for (int k = 0; k < MOD_KIND_COUNT; k++) {
			if (m->applied[k] == 0)
				continue;
			message_put(line, "%s%s=%zu", sep,
			    codec_mod_kind_name((enum mod_kind)k),
			    m->applied[k]);
			sep = ", ";
		}
		if (sep[0] == ',')
			message_put(line, ")");
	}
	message_put(line, "; from %s; rcpts",
	    m->sender != NULL ? m->sender : "");
	if (m->nrcpts == 0)
		message_put(line, " none");
	for (size_t i = 0; i < m->nrcpts; i++) {
		const struct message_rcpt *r = &m->rcpts[i];

		message_put(line, " %s=%s%s%s%s", r->addr,
		    proto_verdict_name(r->verdict), r->by != NULL ? " by " : "",
		    r->by != NULL ? r->by : "", i + 1 < m->nrcpts ? "," : "");
	}
}

void
message_json(const struct message *m, json_t *o, enum verdict merged,
    size_t napplied)
{
	bool	 by = m->decider != NULL && merged != VERDICT_CONTINUE &&
		    merged != VERDICT_ACCEPT && merged != VERDICT_NONE;
	json_t	*mods = json_object(), *rcpts = json_array();

	json_object_set_new(o, "merged", json_string(merged == VERDICT_NONE ?
	    "aborted" : proto_verdict_name(merged)));
	json_object_set_new(o, "decider", by ? log_jstr(m->decider) :
	    json_null());
	if (merged == VERDICT_NONE && m->end_why != NULL)
		json_object_set_new(o, "aborted", json_pack("{s:s, s:s}",
		    "why", m->end_why, "stage",
		    proto_stage_name(m->end_stage)));
	json_object_set_new(o, "modifications_applied",
	    json_integer((json_int_t)napplied));
	for (int k = 0; k < MOD_KIND_COUNT; k++)
		if (m->applied[k] != 0)
			json_object_set_new(mods,
			    codec_mod_kind_name((enum mod_kind)k),
			    json_integer((json_int_t)m->applied[k]));
	json_object_set_new(o, "modifications", mods);
	json_object_set_new(o, "sender", log_jstr(m->sender));
	for (size_t i = 0; i < m->nrcpts; i++) {
		const struct message_rcpt *r = &m->rcpts[i];

		json_array_append_new(rcpts, json_pack("{s:o, s:s, s:o}",
		    "address", log_jstr(r->addr), "verdict",
		    proto_verdict_name(r->verdict), "decider",
		    r->by != NULL ? log_jstr(r->by) : json_null()));
	}
	json_object_set_new(o, "recipients", rcpts);
}
