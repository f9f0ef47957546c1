/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * proto - name and property tables for the shared protocol enums.
 *
 * Concurrency: read-only tables.  Ownership: returns static strings.
 */
#include <string.h>

#include "proto.h"

const char proto_stage_cmd[STAGE_COUNT] = {
	[STAGE_CONNECT]	= MC_CONNECT,
	[STAGE_HELO]	= MC_HELO,
	[STAGE_ENVFROM]	= MC_MAIL,
	[STAGE_ENVRCPT]	= MC_RCPT,
	[STAGE_DATA]	= MC_DATA,
	[STAGE_UNKNOWN]	= MC_UNKNOWN,
	[STAGE_HEADER]	= MC_HEADER,
	[STAGE_EOH]	= MC_EOH,
	[STAGE_BODY]	= MC_BODY,
	[STAGE_EOM]	= MC_BODYEOB,
	[STAGE_ABORT]	= MC_ABORT,
	[STAGE_QUIT]	= MC_QUIT,
};

const uint32_t proto_stage_no[STAGE_COUNT] = {
	[STAGE_CONNECT]	= MP_NOCONNECT,
	[STAGE_HELO]	= MP_NOHELO,
	[STAGE_ENVFROM]	= MP_NOMAIL,
	[STAGE_ENVRCPT]	= MP_NORCPT,
	[STAGE_DATA]	= MP_NODATA,
	[STAGE_UNKNOWN]	= MP_NOUNKNOWN,
	[STAGE_HEADER]	= MP_NOHDRS,
	[STAGE_EOH]	= MP_NOEOH,
	[STAGE_BODY]	= MP_NOBODY,
};

const uint32_t proto_stage_nr[STAGE_COUNT] = {
	[STAGE_CONNECT]	= MP_NR_CONN,
	[STAGE_HELO]	= MP_NR_HELO,
	[STAGE_ENVFROM]	= MP_NR_MAIL,
	[STAGE_ENVRCPT]	= MP_NR_RCPT,
	[STAGE_DATA]	= MP_NR_DATA,
	[STAGE_UNKNOWN]	= MP_NR_UNKN,
	[STAGE_HEADER]	= MP_NR_HDR,
	[STAGE_EOH]	= MP_NR_EOH,
	[STAGE_BODY]	= MP_NR_BODY,
};

const int proto_stage_macro[STAGE_COUNT] = {
	[STAGE_CONNECT]	= MACRO_CONNECT,
	[STAGE_HELO]	= MACRO_HELO,
	[STAGE_ENVFROM]	= MACRO_ENVFROM,
	[STAGE_ENVRCPT]	= MACRO_ENVRCPT,
	[STAGE_DATA]	= MACRO_DATA,
	[STAGE_UNKNOWN]	= -1,
	[STAGE_HEADER]	= -1,
	[STAGE_EOH]	= MACRO_EOH,
	[STAGE_BODY]	= -1,
	[STAGE_EOM]	= MACRO_EOM,
	[STAGE_ABORT]	= -1,
	[STAGE_QUIT]	= -1,
};

static const char *const stage_names[STAGE_COUNT] = {
	[STAGE_CONNECT]	= "connect",
	[STAGE_HELO]	= "helo",
	[STAGE_ENVFROM]	= "envfrom",
	[STAGE_ENVRCPT]	= "envrcpt",
	[STAGE_DATA]	= "data",
	[STAGE_UNKNOWN]	= "unknown",
	[STAGE_HEADER]	= "header",
	[STAGE_EOH]	= "eoh",
	[STAGE_BODY]	= "body",
	[STAGE_EOM]	= "eom",
	[STAGE_ABORT]	= "abort",
	[STAGE_QUIT]	= "close",
};

static const char *const verdict_names[VERDICT_COUNT] = {
	[VERDICT_NONE]		= "none",
	[VERDICT_CONTINUE]	= "continue",
	[VERDICT_ACCEPT]	= "accept",
	[VERDICT_SKIP]		= "skip",
	[VERDICT_DISCARD]	= "discard",
	[VERDICT_TEMPFAIL]	= "tempfail",
	[VERDICT_REJECT]	= "reject",
};

static const char *const macro_stage_names[MACRO_STAGE_COUNT] = {
	[MACRO_CONNECT]	= "connect",
	[MACRO_HELO]	= "helo",
	[MACRO_ENVFROM]	= "envfrom",
	[MACRO_ENVRCPT]	= "envrcpt",
	[MACRO_DATA]	= "data",
	[MACRO_EOM]	= "eom",
	[MACRO_EOH]	= "eoh",
};

const char *
proto_stage_name(enum stage s)
{
	return (unsigned)s < STAGE_COUNT ? stage_names[s] : "?";
}

const char *
proto_verdict_name(enum verdict v)
{
	return (unsigned)v < VERDICT_COUNT ? verdict_names[v] : "?";
}

const char *
proto_macro_stage_name(enum macro_stage m)
{
	return (unsigned)m < MACRO_STAGE_COUNT ? macro_stage_names[m] : "?";
}

int
proto_macro_stage_lookup(const char *s)
{
	for (int i = 0; i < MACRO_STAGE_COUNT; i++)
		if (strcmp(s, macro_stage_names[i]) == 0)
			return i;
	return -1;
}
