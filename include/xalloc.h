/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * xalloc - allocation wrappers that die instead of failing.
 *
 * Out of memory is not a branch at every call site (Postfix, OpenSMTPD):
 * these log and abort.  Concurrency: thread-safe.  Ownership: caller owns
 * every result, free with free().
 */
#ifndef XALLOC_H
#define XALLOC_H

#include <stddef.h>

void	*xmalloc(size_t);
void	*xcalloc(size_t, size_t);
void	*xreallocarray(void *, size_t, size_t);
char	*xstrdup(const char *);
char	*xstrndup(const char *, size_t);
void	*xmemdup(const void *, size_t);
/* Formatted allocation; caller owns the result. */
char	*xasprintf(const char *, ...) __attribute__((format(printf, 1, 2)));

#endif /* XALLOC_H */
