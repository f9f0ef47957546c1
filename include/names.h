/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * names - a short list of distinct macro names ("i", "{auth_authen}"),
 * built once per session and read at every stage: the macros an upstream
 * is sent and the list asked of the MTA.  Pure: no I/O, no locks.
 *
 * Ownership: a list owns its names; names_at's result is borrowed until
 * the next names_add or names_fini.
 */
#ifndef MILTERMUX_NAMES_H
#define MILTERMUX_NAMES_H

#include <stddef.h>
#include <stdint.h>

/* Sendmail takes at most 50 macro names per stage. */
#define NAMES_MAX	50

struct names {
	char		*buf;		/* NUL-terminated names, end to end */
	size_t		 len, cap;
	uint32_t	 off[NAMES_MAX];
	size_t		 n;
};

/* Add one name (len bytes at p) unless it is there already or the list
 * is full. */
void		 names_add(struct names *, const char *p, size_t len);
/* Add each name of a list separated by spaces or commas; NULL: none. */
void		 names_add_list(struct names *, const char *list);
/* The i-th name, i < n. */
static inline const char *
names_at(const struct names *l, size_t i)
{
	return l->buf + l->off[i];
}
/* The names separated by single spaces (caller frees), NULL if none. */
char		*names_join(const struct names *);
void		 names_fini(struct names *);

#endif
