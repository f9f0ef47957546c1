/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_names - the macro name lists (src/names.c): distinct names in
 * the order first seen, lists split on spaces and commas, the cap of
 * Sendmail's 50 per stage, and the joined form asked of the MTA.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "names.h"

Test(names, distinct_in_first_seen_order)
{
	struct names	 l = { 0 };
	char		*j;

	names_add_list(&l, "i {auth_authen}, j  _");
	names_add_list(&l, "{auth_authen} i {auth} {auth_authen2}");
	names_add(&l, "{auth_a", 7);
	names_add(&l, "j", 1);
	names_add(&l, "", 0);
	cr_assert_eq(l.n, 7);
	cr_assert_str_eq(names_at(&l, 0), "i");
	cr_assert_str_eq(names_at(&l, 1), "{auth_authen}");
	cr_assert_str_eq(names_at(&l, 4), "{auth}");
	cr_assert_str_eq(names_at(&l, 5), "{auth_authen2}");
	cr_assert_str_eq(names_at(&l, 6), "{auth_a");
	j = names_join(&l);
	cr_assert_str_eq(j, "i {auth_authen} j _ {auth} {auth_authen2} "
	    "{auth_a");
	free(j);
	names_fini(&l);
	cr_assert_eq(l.n, 0);
	cr_assert_null(names_join(&l));
	names_add_list(&l, NULL);
	names_add_list(&l, " , ");
	cr_assert_eq(l.n, 0);
}

Test(names, at_most_fifty)
{
	struct names	 l = { 0 };
	char		 name[16];

	for (int i = 0; i < 80; i++) {
		snprintf(name, sizeof name, "{m%d}", i);
		names_add_list(&l, name);
	}
	cr_assert_eq(l.n, NAMES_MAX);
	cr_assert_str_eq(names_at(&l, NAMES_MAX - 1), "{m49}");
	/* Still distinct once full, and nothing moved. */
	names_add_list(&l, "{m3}");
	cr_assert_eq(l.n, NAMES_MAX);
	cr_assert_str_eq(names_at(&l, 3), "{m3}");
	names_fini(&l);
}
