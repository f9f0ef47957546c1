/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * cond - apply_if / skip_if conditions (see cond.h for the semantics).
 *
 * Pure: no I/O, no locks, no logging, no globals; the caller logs why.
 * Concurrency: none needed.  Ownership: struct cond owns its strings.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include "cond.h"
#include "xalloc.h"

void
cond_init(struct cond *c)
{
	memset(c, 0, sizeof *c);
	c->auth = -1;
	c->size_over = -1;
}

void
cond_fini(struct cond *c)
{
	for (size_t i = 0; i < c->nnets; i++) {
		free(c->nets[i].text); c->nets[i].text = NULL;
	}
	free(c->nets); c->nets = NULL;
	for (size_t i = 0; i < c->nsenders; i++) {
		free(c->senders[i]); c->senders[i] = NULL;
	}
	free(c->senders); c->senders = NULL;
	for (size_t i = 0; i < c->nrcpts; i++) {
		free(c->rcpts[i]); c->rcpts[i] = NULL;
	}
	free(c->rcpts); c->rcpts = NULL;
	for (size_t i = 0; i < c->nmacros; i++) {
		free(c->macros[i].name); c->macros[i].name = NULL;
		free(c->macros[i].value); c->macros[i].value = NULL;
	}
	free(c->macros); c->macros = NULL;
	cond_init(c);
}

/* parse_addr - an IPv4 or IPv6 address into 16 bytes; family or 0 */
static int
parse_addr(const char *s, uint8_t out[16])
{
	memset(out, 0, 16);
	if (inet_pton(AF_INET, s, out) == 1)
		return AF_INET;
	if (inet_pton(AF_INET6, s, out) == 1)
		return AF_INET6;
	return 0;
}

int
cond_parse_net(const char *s, struct cond_net *out)
{
	char		 host[64], *end;
	const char	*slash = strchr(s, '/');
	size_t		 hl = slash != NULL ? (size_t)(slash - s) : strlen(s);
	unsigned long	 bits;
	unsigned	 max;

	memset(out, 0, sizeof *out);
	if (hl == 0 || hl >= sizeof host)
		return -EINVAL;
	memcpy(host, s, hl);
	host[hl] = '\0';
	if ((out->family = parse_addr(host, out->addr)) == 0)
		return -EINVAL;
	max = out->family == AF_INET ? 32 : 128;
	if (slash == NULL)
		bits = max;
	else {
		if (slash[1] < '0' || slash[1] > '9')
			return -EINVAL;
		errno = 0;
		bits = strtoul(slash + 1, &end, 10);
		if (errno != 0 || *end != '\0' || bits > max)
			return -EINVAL;
	}
	out->bits = (unsigned)bits;
	/* Bits below the prefix are a typo more often than a wish. */
	for (unsigned b = out->bits; b < max; b++)
		if ((out->addr[b / 8] & (0x80u >> (b % 8))) != 0)
			return -EINVAL;
	out->text = xstrdup(s);
	return 0;
}

bool
cond_is_domain(const char *s)
{
	size_t	 label = 0, n = 0;

	if (*s == '.')
		s++;
	if (*s == '\0')
		return false;
	for (; *s != '\0'; s++, n++) {
		unsigned char	 ch = (unsigned char)*s;

		if (ch == '.') {
			if (label == 0)
				return false;
			label = 0;
			continue;
		}
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		    (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' ||
		    ch == '[' || ch == ']' || ch == ':'))
			return false;
		if (++label > 63)
			return false;
	}
	return label > 0 && n <= 253;
}

long long
cond_size_param(const char *const *argv, size_t argc)
{
	char			*end;
	unsigned long long	 v;

	for (size_t i = 1; i < argc; i++) {
		if (argv[i] == NULL || strncasecmp(argv[i], "SIZE=", 5) != 0)
			continue;
		if (argv[i][5] < '0' || argv[i][5] > '9')
			return -1;
		errno = 0;
		v = strtoull(argv[i] + 5, &end, 10);
		if (errno != 0 || *end != '\0' || v > (unsigned long long)
		    (1ULL << 62))
			return -1;
		return (long long)v;
	}
	return -1;
}

bool
cond_has_session_key(const struct cond *c)
{
	return c->set && (c->has_client || c->nmacros > 0);
}

/* net_match - is addr (text) inside n? */
static bool
net_match(const struct cond_net *n, int family, const uint8_t a[16])
{
	unsigned	 full = n->bits / 8, rest = n->bits % 8;

	if (family != n->family)
		return false;
	if (memcmp(a, n->addr, full) != 0)
		return false;
	return rest == 0 ||
	    ((a[full] ^ n->addr[full]) & (0xffu << (8 - rest)) & 0xffu) == 0;
}

/* client_addr - the client's address as bytes; an IPv4-mapped IPv6
 * address counts as the IPv4 one.  Returns the family or 0. */
static int
client_addr(const char *s, uint8_t a[16])
{
	static const uint8_t	 mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
				    0xff, 0xff };
	int			 f;

	if (s == NULL || *s == '\0')
		return 0;
	if (strncasecmp(s, "IPv6:", 5) == 0)
		s += 5;
	if (*s == '[') {
		char	 tmp[64];
		size_t	 l = strcspn(s + 1, "]");

		if (l >= sizeof tmp)
			return 0;
		memcpy(tmp, s + 1, l);
		tmp[l] = '\0';
		f = parse_addr(tmp, a);
	} else
		f = parse_addr(s, a);
	if (f == AF_INET6 && memcmp(a, mapped, 12) == 0) {
		memmove(a, a + 12, 4);
		memset(a + 4, 0, 12);
		f = AF_INET;
	}
	return f;
}

/* domain_of - the domain of an address ("<a@b.c>" or "a@b.c"), its
 * length in *len; NULL when it has none (the null sender, a local
 * name) */
static const char *
domain_of(const char *addr, size_t *len)
{
	const char	*at, *end;

	if (addr == NULL)
		return NULL;
	if ((at = strrchr(addr, '@')) == NULL)
		return NULL;
	at++;
	end = at + strcspn(at, ">");
	if (end == at)
		return NULL;
	*len = (size_t)(end - at);
	return at;
}

/* domain_in - d (of length l) against a list of lower-case domains */
static bool
domain_in(const char *d, size_t l, char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const char	*e = list[i];
		size_t		 el = strlen(e);

		if (e[0] == '.') {
			/* Below it: the domain ends in ".example.org". */
			if (l > el && strncasecmp(d + l - el, e, el) == 0)
				return true;
		} else if (l == el && strncasecmp(d, e, l) == 0)
			return true;
	}
	return false;
}

/* say - append to why, keys separated by ", " */
static void	say(char *why, size_t whylen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void
say(char *why, size_t whylen, const char *fmt, ...)
{
	size_t	 used;
	va_list	 ap;

	if (whylen == 0)
		return;
	used = strlen(why);
	if (used > 0 && used + 2 < whylen) {
		memcpy(why + used, ", ", 3);
		used += 2;
	}
	va_start(ap, fmt);
	vsnprintf(why + used, whylen - used, fmt, ap);
	va_end(ap);
}

static enum cond_tri
key_result(bool match, char *why, size_t whylen, char *no, size_t nolen,
    const char *text)
{
	if (match)
		say(why, whylen, "%s", text);
	else if (nolen > 0)
		snprintf(no, nolen, "%s", text);
	return match ? COND_YES : COND_NO;
}

static enum cond_tri
eval(const struct cond *c, const struct cond_facts *f, char *why,
    size_t whylen)
{
	char		 text[300];
	bool		 unknown = false, m;
	const char	*v, *d;
	size_t		 dl = 0;
	uint8_t		 a[16];
	int		 fam;
	char		 no[300] = "";

	if (c->has_client) {
		fam = client_addr(f->client, a);
		m = false;
		for (size_t i = 0; fam != 0 && i < c->nnets && !m; i++)
			m = net_match(&c->nets[i], fam, a);
		snprintf(text, sizeof text, "client %s", f->client != NULL &&
		    *f->client != '\0' ? f->client : "unknown");
		if (key_result(m, why, whylen, no, sizeof no, text) == COND_NO)
			goto no;
	}
	for (size_t i = 0; i < c->nmacros; i++) {
		v = f->macro != NULL ? f->macro(f->macro_arg,
		    c->macros[i].name) : NULL;
		if (v == NULL && f->level == COND_AT_CONNECT) {
			unknown = true;
			continue;
		}
		m = v != NULL && strcmp(v, c->macros[i].value) == 0;
		snprintf(text, sizeof text, "macro %s=%s", c->macros[i].name,
		    v != NULL ? v : "(unset)");
		if (key_result(m, why, whylen, no, sizeof no, text) == COND_NO)
			goto no;
	}
	if (f->level == COND_AT_CONNECT) {
		if (c->auth >= 0 || c->has_sender || c->has_rcpt ||
		    c->size_over >= 0)
			unknown = true;
		goto out;
	}
	if (c->auth >= 0) {
		v = f->macro != NULL ? f->macro(f->macro_arg, "{auth_authen}") :
		    NULL;
		m = (v != NULL && *v != '\0') == (c->auth == 1);
		snprintf(text, sizeof text, "auth %s", v != NULL && *v != '\0' ?
		    v : "none");
		if (key_result(m, why, whylen, no, sizeof no, text) == COND_NO)
			goto no;
	}
	if (c->has_sender) {
		d = domain_of(f->sender, &dl);
		m = d != NULL && domain_in(d, dl, c->senders, c->nsenders);
		snprintf(text, sizeof text, "sender_domain %.*s",
		    d != NULL ? (int)dl : 6, d != NULL ? d : "(none)");
		if (key_result(m, why, whylen, no, sizeof no, text) == COND_NO)
			goto no;
	}
	if (c->size_over >= 0) {
		m = f->size >= 0 && f->size > c->size_over;
		if (f->size >= 0)
			snprintf(text, sizeof text, "size %lld", f->size);
		else
			snprintf(text, sizeof text, "size unknown");
		if (key_result(m, why, whylen, no, sizeof no, text) == COND_NO)
			goto no;
	}
	if (c->has_rcpt) {
		if (f->level < COND_AT_RCPT) {
			unknown = true;
			goto out;
		}
		d = domain_of(f->rcpt, &dl);
		m = d != NULL && domain_in(d, dl, c->rcpts, c->nrcpts);
		snprintf(text, sizeof text, "rcpt_domain %.*s",
		    d != NULL ? (int)dl : 6, d != NULL ? d : "(none)");
		if (key_result(m, why, whylen, no, sizeof no, text) == COND_NO)
			goto no;
	}
out:
	return unknown ? COND_UNKNOWN : COND_YES;
no:
	if (whylen > 0)
		snprintf(why, whylen, "%s", no);
	return COND_NO;
}

enum cond_tri
cond_eval(const struct cond *c, const struct cond_facts *f, char *why,
    size_t whylen)
{
	enum cond_tri	 r;

	if (whylen > 0)
		why[0] = '\0';
	r = eval(c, f, why, whylen);
	if (r == COND_UNKNOWN && whylen > 0)
		why[0] = '\0';
	return r;
}

bool
cond_stays_out(const struct cond *apply_if, const struct cond *skip_if,
    const struct cond_facts *f, char *why, size_t whylen)
{
	char	 w[400];

	if (apply_if != NULL && apply_if->set &&
	    cond_eval(apply_if, f, w, sizeof w) == COND_NO) {
		snprintf(why, whylen, "apply_if: %s", w);
		return true;
	}
	if (skip_if != NULL && skip_if->set &&
	    cond_eval(skip_if, f, w, sizeof w) == COND_YES) {
		snprintf(why, whylen, "skip_if: %s", w);
		return true;
	}
	if (whylen > 0)
		why[0] = '\0';
	return false;
}
