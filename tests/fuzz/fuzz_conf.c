/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * fuzz_conf - the configuration loader on arbitrary bytes.
 *
 * conf_parse() gets the input as a file's text.  Checked: it accepts
 * (a snapshot, no message) or refuses (no snapshot, at least one
 * message); every message is "fuzz.json:LINE:COL: KEY.PATH: message"
 * with LINE and COL inside the text (conf.h); an accepted snapshot is
 * within the documented limits, and its conf_dump() is accepted again
 * and dumps the same (conf.h: "a form conf_parse accepts").  The input
 * also goes, as a string, to conf_parse_address().
 *
 * Off the network: conf.c, built with
 * FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION as "make fuzz" does, asks
 * getaddrinfo() for numeric hosts and ports only, so no name service
 * (DNS, /etc/hosts, NIS) is ever asked and no packet is ever sent.
 *
 * Concurrency: single-threaded.  Ownership: all per input, freed.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "fuzz.h"

#define NAME	"fuzz.json"

/* check_message - "NAME:LINE:COL: " with a position inside the text */
static void
check_message(const char *msg, size_t lines, size_t len)
{
	const char	*p = msg;
	char		*end;
	unsigned long	 line, col;

	if (strncmp(p, NAME ":", strlen(NAME ":")) != 0)
		goto bad;
	p += strlen(NAME ":");
	line = strtoul(p, &end, 10);
	if (end == p || *end != ':' || line < 1 || line > lines)
		goto bad;
	p = end + 1;
	col = strtoul(p, &end, 10);
	/* Columns count characters: at most one past the last byte. */
	if (end == p || *end != ':' || end[1] != ' ' || col < 1 ||
	    col > len + 1)
		goto bad;
	return;
bad:
	fprintf(stderr, "message without a position in the text: %s\n", msg);
	FUZZ_CHECK(!"message form");
}

/* check_conf - limits conf.h and miltermux.json(5) promise */
static void
check_conf(const struct conf *c)
{
	size_t	 enabled = 0;

	FUZZ_CHECK(c->listen != NULL && c->path != NULL);
	FUZZ_CHECK(c->threads >= 1 && c->threads <= 1024);
	FUZZ_CHECK((unsigned)c->on_failure < ONFAIL_COUNT);
	FUZZ_CHECK(c->nupstreams >= 1 && c->upstreams != NULL);
	for (size_t i = 0; i < c->nupstreams; i++) {
		FUZZ_CHECK(c->upstreams[i].name != NULL &&
		    c->upstreams[i].address != NULL);
		FUZZ_CHECK((unsigned)c->upstreams[i].on_failure <
		    ONFAIL_COUNT);
		FUZZ_CHECK(c->upstreams[i].addr.salen > 0);
		if (c->upstreams[i].enabled)
			enabled++;
	}
	FUZZ_CHECK(enabled == c->nenabled && enabled >= 1);
	for (int s = 0; s < MACRO_STAGE_COUNT; s++) {
		FUZZ_CHECK(c->macros[s] != NULL);
		for (size_t i = 0; i < c->nmacros[s]; i++)
			FUZZ_CHECK(c->macros[s][i] != NULL);
	}
}

/* check_dump - the dump is accepted and dumps to itself */
static void
check_dump(const struct conf *c)
{
	struct conf_errors	 errs = { 0 };
	struct conf		*c2;
	char			*d1, *d2;
	int			 rc;

	d1 = conf_dump(c);
	rc = conf_parse(d1, strlen(d1), NAME, &c2, &errs);
	if (rc != 0) {
		fprintf(stderr, "dump refused:\n%s\n", d1);
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.v[i]);
		FUZZ_CHECK(!"conf_dump() gave a file conf_parse() refuses");
	}
	check_conf(c2);
	FUZZ_CHECK(c2->threads == c->threads &&
	    c2->nupstreams == c->nupstreams && c2->nenabled == c->nenabled &&
	    c2->on_failure == c->on_failure);
	FUZZ_CHECK(memcmp(&c2->timeouts, &c->timeouts, sizeof c->timeouts) ==
	    0);
	for (size_t i = 0; i < c->nupstreams; i++) {
		FUZZ_CHECK(strcmp(c2->upstreams[i].name,
		    c->upstreams[i].name) == 0);
		FUZZ_CHECK(c2->upstreams[i].addr.salen ==
		    c->upstreams[i].addr.salen);
		FUZZ_CHECK(memcmp(&c2->upstreams[i].timeouts,
		    &c->upstreams[i].timeouts, sizeof c->timeouts) == 0);
	}
	d2 = conf_dump(c2);
	if (strcmp(d1, d2) != 0) {
		fprintf(stderr, "first dump:\n%s\nsecond dump:\n%s\n", d1, d2);
		FUZZ_CHECK(!"conf_dump(conf_parse(conf_dump(c))) differs");
	}
	free(d2);
	free(d1);
	conf_release(c2);
	conf_errors_fini(&errs);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct conf_errors	 errs = { 0 };
	struct conf_addr	 addr;
	struct conf		*c = NULL;
	char			*text, eb[256];
	size_t			 lines = 1;
	int			 rc;

	/* A copy without a NUL after it: conf_parse() must not need one. */
	text = malloc(size > 0 ? size : 1);
	FUZZ_CHECK(text != NULL);
	if (size > 0)
		memcpy(text, data, size);
	for (size_t i = 0; i < size; i++)
		if (text[i] == '\n')
			lines++;

	rc = conf_parse(text, size, NAME, &c, &errs);
	if (rc == 0) {
		FUZZ_CHECK(c != NULL && errs.n == 0);
		check_conf(c);
		check_dump(c);
		conf_release(c);
	} else {
		FUZZ_CHECK(rc < 0 && c == NULL && errs.n >= 1);
		for (size_t i = 0; i < errs.n; i++)
			check_message(errs.v[i], lines, size);
	}
	conf_errors_fini(&errs);
	free(text);

	/* The same bytes as one socket address, if they are a string. */
	if (size < 256 && memchr(data, '\0', size) == NULL) {
		text = malloc(size + 1);
		FUZZ_CHECK(text != NULL);
		memcpy(text, data, size);
		text[size] = '\0';
		eb[0] = '\0';
		rc = conf_parse_address(text, &addr, eb, sizeof eb);
		FUZZ_CHECK(rc == 0 || (rc == -EINVAL && eb[0] != '\0'));
		FUZZ_CHECK(rc != 0 || addr.salen > 0);
		free(text);
	}
	return 0;
}
