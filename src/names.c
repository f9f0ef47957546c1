/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * names - distinct macro names (names.h).
 *
 * A session merges the default lists, the configured extra names and
 * each upstream's own request, some two hundred names for three
 * upstreams.  This used to be kept as space-separated strings, copied
 * and tokenized again for every name added and for every stage sent:
 * nearly half of miltermux's instructions per session went there.  Now
 * a name is copied once, found again by length and bytes, and read by
 * offset.
 */
#include <stdlib.h>
#include <string.h>

#include "names.h"
#include "xalloc.h"

void
names_add(struct names *l, const char *p, size_t len)
{
	if (len == 0 || l->n >= NAMES_MAX)
		return;
	for (size_t i = 0; i < l->n; i++) {
		const char	*q = l->buf + l->off[i];

		if (strncmp(q, p, len) == 0 && q[len] == '\0')
			return;
	}
	if (l->len + len + 1 > l->cap) {
		l->cap = (l->len + len + 1) * 2 + 64;
		l->buf = xreallocarray(l->buf, l->cap, 1);
	}
	l->off[l->n++] = (uint32_t)l->len;
	memcpy(l->buf + l->len, p, len);
	l->len += len;
	l->buf[l->len++] = '\0';
}

void
names_add_list(struct names *l, const char *list)
{
	const char	*p = list;
	size_t		 n;

	if (list == NULL)
		return;
	for (;;) {
		p += strspn(p, " ,");
		if (*p == '\0')
			return;
		n = strcspn(p, " ,");
		names_add(l, p, n);
		p += n;
	}
}

char *
names_join(const struct names *l)
{
	char	*s, *w;

	if (l->n == 0)
		return NULL;
	/* l->len counts a NUL per name: a space each, and the last one */
	w = s = xmalloc(l->len);
	for (size_t i = 0; i < l->n; i++) {
		const char	*q = names_at(l, i);
		size_t		 k = strlen(q);

		if (i > 0)
			*w++ = ' ';
		memcpy(w, q, k);
		w += k;
	}
	*w = '\0';
	return s;
}

void
names_fini(struct names *l)
{
	free(l->buf);
	memset(l, 0, sizeof *l);
}
