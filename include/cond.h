/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * cond - the "apply_if" and "skip_if" conditions of an upstream: does it
 * take part, given what is known at a stage?
 *
 * A condition is an object whose keys are ANDed; each key is decided at
 * the first stage where its fact is known, and is unknown before:
 *   client         connect   the client's address in one of the CIDRs
 *   macro          connect   each named macro has exactly that value
 *                            (a macro without a value at connect is
 *                            unknown then, and a mismatch at MAIL)
 *   auth           MAIL      {auth_authen} has a value (true) or not
 *   sender_domain  MAIL      the MAIL FROM domain is in the list
 *   size_over      MAIL      the SIZE= parameter of MAIL FROM exceeds
 *                            it (no SIZE=: the size is unknown, which
 *                            never matches)
 *   rcpt_domain    RCPT      this recipient's domain is in the list
 * A domain matches itself; ".example.org" matches every domain below
 * example.org; both case-insensitively.  The condition is YES when every
 * key is yes, NO when one key is no, UNKNOWN otherwise.  An upstream
 * stays out when its apply_if is NO or its skip_if is YES.
 *
 * Pure: no I/O, no locks, no logging, no globals.
 * Concurrency: none needed.  Ownership: a struct cond owns its strings
 * (cond_fini); facts are borrowed for the call.
 */
#ifndef COND_H
#define COND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cond_tri {
	COND_NO = 0,
	COND_YES,
	COND_UNKNOWN,
	COND_TRI_COUNT
};

/* Where the facts stand: what cond_eval may take as known. */
enum cond_level {
	COND_AT_CONNECT = 0,
	COND_AT_MAIL,
	COND_AT_RCPT,
	COND_LEVEL_COUNT
};

struct cond_net {
	int		 family;	/* AF_INET or AF_INET6 */
	uint8_t		 addr[16];	/* masked to bits */
	unsigned	 bits;
	char		*text;		/* as written */
};

struct cond_macro {
	char	*name;
	char	*value;
};

struct cond {
	bool			 set;		/* given at all */
	struct cond_net		*nets;		/* "client"; NULL: no key */
	size_t			 nnets;
	bool			 has_client;
	int			 auth;		/* -1: no key, else 0 or 1 */
	char			**senders;	/* lower case */
	size_t			 nsenders;
	bool			 has_sender;
	char			**rcpts;	/* lower case */
	size_t			 nrcpts;
	bool			 has_rcpt;
	struct cond_macro	*macros;
	size_t			 nmacros;
	long long		 size_over;	/* -1: no key */
};

/* Looks a macro up; NULL when it has no value. */
typedef const char *cond_macro_fn(void *arg, const char *name);

struct cond_facts {
	enum cond_level	 level;
	const char	*client;	/* address text; NULL or "": none */
	const char	*sender;	/* MAIL FROM address, <> or not */
	const char	*rcpt;		/* RCPT TO address */
	long long	 size;		/* SIZE=, or -1 */
	cond_macro_fn	*macro;
	void		*macro_arg;
};

/* An empty condition (no key, not set). */
void		cond_init(struct cond *);
void		cond_fini(struct cond *);
/*
 * Parses "10.0.0.0/8", "::1/128", or an address alone (a host).
 * Returns 0, or -EINVAL (bad address, prefix out of range, bits set
 * below the prefix).  Takes a copy of s into out->text.
 */
int		cond_parse_net(const char *s, struct cond_net *out);
/* Is s a domain as the lists take it (labels, optional leading dot)? */
bool		cond_is_domain(const char *s);
/* The SIZE= value among ESMTP parameters argv[1..argc), or -1. */
long long	cond_size_param(const char *const *argv, size_t argc);
/* Does the condition need facts of the session (client, macro)? */
bool		cond_has_session_key(const struct cond *);
/*
 * The condition at facts.  For NO, why gets the first key that failed
 * ("client 192.0.2.1", "sender_domain example.com", ...); for YES the
 * keys that matched, comma-separated; for UNKNOWN it is emptied.
 */
enum cond_tri	cond_eval(const struct cond *, const struct cond_facts *,
		    char *why, size_t whylen);
/*
 * Does an upstream with these conditions stay out?  True when apply_if
 * is NO or skip_if is YES; why then reads "apply_if: ..." or
 * "skip_if: ...".  Unset conditions never keep it out.
 */
bool		cond_stays_out(const struct cond *apply_if,
		    const struct cond *skip_if, const struct cond_facts *,
		    char *why, size_t whylen);

#endif /* COND_H */
