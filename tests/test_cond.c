/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_cond - the apply_if / skip_if conditions (cond.c), called
 * directly: CIDR parsing and matching (IPv4, IPv6, IPv4-mapped), domain
 * lists, the stage at which each key is decided, and the reasons the
 * decision log shows.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "cond.h"
#include "xalloc.h"

struct net_case {
	const char	*net;
	int		 rc;
};

static const struct net_case net_cases[] = {
	{ "10.0.0.0/8", 0 }, { "192.0.2.1", 0 }, { "0.0.0.0/0", 0 },
	{ "::1/128", 0 }, { "2001:db8::/32", 0 }, { "::/0", 0 },
	{ "10.0.0.1/8", -EINVAL },	/* bits below the prefix */
	{ "10.0.0.0/33", -EINVAL }, { "::1/129", -EINVAL },
	{ "10.0.0.0/", -EINVAL }, { "10.0.0/8", -EINVAL },
	{ "example.org", -EINVAL }, { "", -EINVAL },
	{ "/8", -EINVAL }, { "10.0.0.0/8x", -EINVAL },
	{ "10.0.0.0/-1", -EINVAL },
};

Test(cond, parses_cidrs)
{
	for (size_t i = 0; i < sizeof net_cases / sizeof net_cases[0]; i++) {
		const struct net_case	*tc = &net_cases[i];
		struct cond_net		 n;

		cr_assert_eq(cond_parse_net(tc->net, &n), tc->rc, "%s",
		    tc->net);
		if (tc->rc == 0) {
			cr_assert_str_eq(n.text, tc->net);
			free(n.text);
		}
	}
}

/* A condition built by hand, as conf.c would. */
static void
add_net(struct cond *c, const char *s)
{
	c->set = c->has_client = true;
	c->nets = xreallocarray(c->nets, c->nnets + 1, sizeof *c->nets);
	cr_assert_eq(cond_parse_net(s, &c->nets[c->nnets]), 0, "%s", s);
	c->nnets++;
}

static void
add_dom(char ***list, size_t *n, bool *has, const char *d)
{
	*list = xreallocarray(*list, *n + 1, sizeof **list);
	(*list)[(*n)++] = xstrdup(d);
	*has = true;
}

static const char *
macros(void *arg, const char *name)
{
	const char *const	*kv = arg;

	for (; kv != NULL && kv[0] != NULL; kv += 2)
		if (strcmp(kv[0], name) == 0)
			return kv[1];
	return NULL;
}

static enum cond_tri
eval(const struct cond *c, enum cond_level lv, const char *client,
    const char *sender, const char *rcpt, long long size,
    const char *const *kv, char *why)
{
	struct cond_facts	 f = { lv, client, sender, rcpt, size, macros,
				    (void *)(uintptr_t)kv };

	return cond_eval(c, &f, why, 200);
}

Test(cond, client_cidrs_match_ipv4_ipv6_and_mapped)
{
	struct cond	 c;
	char		 why[200];

	cond_init(&c);
	add_net(&c, "10.0.0.0/8");
	add_net(&c, "192.0.2.128/25");
	add_net(&c, "2001:db8::/32");
	add_net(&c, "::1/128");
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "10.9.8.7", 0, 0, -1, 0, why),
	    COND_YES);
	cr_assert_str_eq(why, "client 10.9.8.7");
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "11.0.0.1", 0, 0, -1, 0, why),
	    COND_NO);
	cr_assert_str_eq(why, "client 11.0.0.1");
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "192.0.2.200", 0, 0, -1, 0,
	    why), COND_YES);
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "192.0.2.127", 0, 0, -1, 0,
	    why), COND_NO);
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "2001:db8:1::5", 0, 0, -1, 0,
	    why), COND_YES);
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "2001:db9::5", 0, 0, -1, 0,
	    why), COND_NO);
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "::1", 0, 0, -1, 0, why),
	    COND_YES);
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "::2", 0, 0, -1, 0, why),
	    COND_NO);
	/* An IPv4-mapped client is its IPv4 address; Sendmail's form. */
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "::ffff:10.1.1.1", 0, 0, -1,
	    0, why), COND_YES);
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "IPv6:2001:db8::1", 0, 0, -1,
	    0, why), COND_YES);
	/* No address (a unix socket, a name): never inside. */
	cr_assert_eq(eval(&c, COND_AT_CONNECT, NULL, 0, 0, -1, 0, why),
	    COND_NO);
	cr_assert_str_eq(why, "client unknown");
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "/var/run/x", 0, 0, -1, 0,
	    why), COND_NO);
	cond_fini(&c);
}

Test(cond, domains_match_exactly_or_below_a_leading_dot)
{
	struct cond	 c;
	char		 why[200];

	cond_init(&c);
	c.set = true;
	add_dom(&c.senders, &c.nsenders, &c.has_sender, "example.org");
	add_dom(&c.senders, &c.nsenders, &c.has_sender, ".example.net");
	cr_assert_eq(eval(&c, COND_AT_MAIL, 0, "<a@Example.ORG>", 0, -1, 0,
	    why), COND_YES);
	cr_assert_str_eq(why, "sender_domain Example.ORG");
	cr_assert_eq(eval(&c, COND_AT_MAIL, 0, "a@sub.example.org", 0, -1, 0,
	    why), COND_NO);
	cr_assert_eq(eval(&c, COND_AT_MAIL, 0, "<a@mx.example.net>", 0, -1,
	    0, why), COND_YES);
	cr_assert_eq(eval(&c, COND_AT_MAIL, 0, "<a@example.net>", 0, -1, 0,
	    why), COND_NO);
	cr_assert_eq(eval(&c, COND_AT_MAIL, 0, "<a@badexample.net>", 0, -1,
	    0, why), COND_NO);
	cr_assert_eq(eval(&c, COND_AT_MAIL, 0, "<>", 0, -1, 0, why), COND_NO);
	cr_assert_str_eq(why, "sender_domain (none)");
	/* Not known at connect. */
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "10.0.0.1", 0, 0, -1, 0, why),
	    COND_UNKNOWN);
	cr_assert_str_eq(why, "");
	cond_fini(&c);
}

Test(cond, each_key_is_decided_at_its_stage)
{
	struct cond		 c;
	char			 why[200];
	const char *const	 authed[] = { "{auth_authen}", "alice",
				    "{daemon_name}", "ORIGINATING", NULL };
	const char *const	 anon[] = { "{daemon_name}", "ORIGINATING",
				    NULL };
	const char *const	 other[] = { "{daemon_name}", "MTA", NULL };

	cond_init(&c);
	c.set = true;
	c.auth = 1;
	c.size_over = 1000;
	c.macros = xcalloc(1, sizeof *c.macros);
	c.macros[0].name = xstrdup("{daemon_name}");
	c.macros[0].value = xstrdup("ORIGINATING");
	c.nmacros = 1;
	add_dom(&c.rcpts, &c.nrcpts, &c.has_rcpt, "example.com");
	cr_assert(cond_has_session_key(&c));
	/* Connect: the macro decides a NO; a match leaves it unknown. */
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "10.0.0.1", 0, 0, -1, other,
	    why), COND_NO);
	cr_assert_str_eq(why, "macro {daemon_name}=MTA");
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "10.0.0.1", 0, 0, -1, anon,
	    why), COND_UNKNOWN);
	/* A macro not set at connect may come later: unknown, not NO. */
	cr_assert_eq(eval(&c, COND_AT_CONNECT, "10.0.0.1", 0, 0, -1, NULL,
	    why), COND_UNKNOWN);
	/* MAIL: auth and size decide; the recipient is still unknown. */
	cr_assert_eq(eval(&c, COND_AT_MAIL, 0, "<a@b.c>", 0, 5000, anon,
	    why), COND_NO);
	cr_assert_str_eq(why, "auth none");
	cr_assert_eq(eval(&c, COND_AT_MAIL, 0, "<a@b.c>", 0, 500, authed,
	    why), COND_NO);
	cr_assert_str_eq(why, "size 500");
	cr_assert_eq(eval(&c, COND_AT_MAIL, 0, "<a@b.c>", 0, -1, authed,
	    why), COND_NO);
	cr_assert_str_eq(why, "size unknown");
	cr_assert_eq(eval(&c, COND_AT_MAIL, 0, "<a@b.c>", 0, 5000, authed,
	    why), COND_UNKNOWN);
	/* At MAIL a macro without a value is a mismatch. */
	cr_assert_eq(eval(&c, COND_AT_MAIL, 0, "<a@b.c>", 0, 5000, NULL,
	    why), COND_NO);
	cr_assert_str_eq(why, "macro {daemon_name}=(unset)");
	/* RCPT: everything known. */
	cr_assert_eq(eval(&c, COND_AT_RCPT, 0, "<a@b.c>", "<x@example.com>",
	    5000, authed, why), COND_YES);
	cr_assert_str_eq(why, "macro {daemon_name}=ORIGINATING, auth alice, "
	    "size 5000, rcpt_domain example.com");
	cr_assert_eq(eval(&c, COND_AT_RCPT, 0, "<a@b.c>", "<x@example.net>",
	    5000, authed, why), COND_NO);
	cr_assert_str_eq(why, "rcpt_domain example.net");
	cond_fini(&c);
}

Test(cond, auth_false_matches_only_unauthenticated)
{
	struct cond		 c;
	char			 why[200];
	const char *const	 authed[] = { "{auth_authen}", "alice", NULL };
	const char *const	 empty[] = { "{auth_authen}", "", NULL };

	cond_init(&c);
	c.set = true;
	c.auth = 0;
	cr_assert_eq(eval(&c, COND_AT_MAIL, 0, "<a@b.c>", 0, -1, authed, why),
	    COND_NO);
	cr_assert_str_eq(why, "auth alice");
	cr_assert_eq(eval(&c, COND_AT_MAIL, 0, "<a@b.c>", 0, -1, empty, why),
	    COND_YES);
	cr_assert_eq(eval(&c, COND_AT_MAIL, 0, "<a@b.c>", 0, -1, NULL, why),
	    COND_YES);
	cond_fini(&c);
}

Test(cond, apply_if_no_or_skip_if_yes_keeps_it_out)
{
	struct cond		 a, s;
	struct cond_facts	 f = { COND_AT_CONNECT, "127.0.0.1", NULL,
				    NULL, -1, NULL, NULL };
	char			 why[200];

	cond_init(&a);
	cond_init(&s);
	/* Unset conditions never keep it out. */
	cr_assert_not(cond_stays_out(&a, &s, &f, why, sizeof why));
	cr_assert_str_eq(why, "");
	add_net(&a, "10.0.0.0/8");
	cr_assert(cond_stays_out(&a, &s, &f, why, sizeof why));
	cr_assert_str_eq(why, "apply_if: client 127.0.0.1");
	cond_fini(&a);
	cond_init(&a);
	add_net(&s, "127.0.0.0/8");
	cr_assert(cond_stays_out(&a, &s, &f, why, sizeof why));
	cr_assert_str_eq(why, "skip_if: client 127.0.0.1");
	/* skip_if with a key unknown yet: not out (yet). */
	add_dom(&s.senders, &s.nsenders, &s.has_sender, "example.org");
	cr_assert_not(cond_stays_out(&a, &s, &f, why, sizeof why));
	f.level = COND_AT_MAIL;
	f.sender = "<x@example.org>";
	cr_assert(cond_stays_out(&a, &s, &f, why, sizeof why));
	cr_assert_str_eq(why, "skip_if: client 127.0.0.1, "
	    "sender_domain example.org");
	cond_fini(&a);
	cond_fini(&s);
}

Test(cond, size_param_and_domain_syntax)
{
	const char *const	 a1[] = { "<a@b>", "BODY=8BITMIME",
				    "size=12345" };
	const char *const	 a2[] = { "<a@b>", "SIZE=" };
	const char *const	 a3[] = { "<a@b>", "SIZE=12x" };

	cr_assert_eq(cond_size_param(a1, 3), 12345);
	cr_assert_eq(cond_size_param(a1, 2), -1);
	cr_assert_eq(cond_size_param(a2, 2), -1);
	cr_assert_eq(cond_size_param(a3, 2), -1);
	cr_assert(cond_is_domain("example.org"));
	cr_assert(cond_is_domain(".example.org"));
	cr_assert(cond_is_domain("localhost"));
	cr_assert_not(cond_is_domain(""));
	cr_assert_not(cond_is_domain("."));
	cr_assert_not(cond_is_domain("a..b"));
	cr_assert_not(cond_is_domain("a b"));
	cr_assert_not(cond_is_domain("user@example.org"));
	cr_assert_not(cond_is_domain("example.org."));
}
