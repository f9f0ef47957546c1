/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * conf - the JSON configuration: load, validate, dump, and publish as
 * an immutable refcounted snapshot.
 *
 * Only conf.c includes <jansson.h>; no json_t leaves it.  Every problem
 * in a file is reported, each as one line
 * "FILE:LINE:COLUMN: KEY.PATH: message" (line and column of the
 * offending key or value; omitted only where nothing in the text can be
 * pointed at, e.g. a missing required key names its parent object).
 * Addresses are resolved at load time, so no lookup happens per message.
 *
 * Concurrency: conf_load/conf_parse/conf_dump touch no shared state.
 * conf_publish/conf_acquire/conf_release are thread-safe; conf_lock
 * protects only the current-snapshot pointer, and snapshots are never
 * modified once published.
 * Ownership: conf_load returns a snapshot with one reference that the
 * caller owns (conf_release, or hand it to conf_publish).
 */
#ifndef CONF_H
#define CONF_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>

#include "cond.h"
#include "proto.h"

enum on_failure {
	ONFAIL_ACCEPT = 0,	/* go on as if the upstream were absent */
	ONFAIL_TEMPFAIL,
	ONFAIL_REJECT,
	ONFAIL_COUNT
};

/* What an upstream's answers do (miltermux.json(5) "mode"). */
enum upstream_mode {
	MODE_ENFORCE = 0,	/* merged and applied */
	MODE_MONITOR,		/* waited for; logged and counted only */
	MODE_SHADOW,		/* a copy off the latency path (shadow.h) */
	MODE_COUNT
};

struct conf_timeouts {
	double	connect;	/* seconds: connect and option negotiation */
	double	command;	/* seconds: each envelope stage as a whole */
	double	content;	/* seconds: header, body, eom stages */
};

/* Upstream connection reuse; top level holds the defaults. */
struct conf_reuse {
	bool		 enabled;
	unsigned	 idle_max;	/* idle connections per endpoint */
	double		 idle_timeout;	/* seconds */
};

/* A socket address in libmilter's syntax, parsed and resolved. */
struct conf_addr {
	struct sockaddr_storage	sa;
	socklen_t		salen;
};

/* What an upstream's verdict becomes ("verdicts"). */
struct conf_vmap {
	enum verdict	 to;		/* VERDICT_NONE: kept as it is */
	/* With to CONTINUE, a header added to the message instead. */
	char		*hname;
	char		*hvalue;
};

/*
 * One replica of an upstream: one of the addresses of its "address"
 * array, or its one address.  label is the name logs, metrics and
 * health.c know it by: the upstream's name alone for a single address
 * (so that such an upstream is known exactly as before pools), and
 * "NAME[ADDRESS]" in a pool.
 */
struct conf_replica {
	char			*address;	/* as written */
	struct conf_addr	 addr;		/* zero: disabled, unresolved */
	char			*label;
};

struct conf_upstream {
	char			*name;
	char			*address;	/* as written; a pool's first */
	struct conf_addr	 addr;		/* a pool's first */
	/* Config order; one unless "address" was an array (pool). */
	struct conf_replica	*replicas;
	size_t			 nreplicas;
	bool			 pool;		/* "address" was an array */
	bool			 enabled;
	enum on_failure		 on_failure;
	struct conf_timeouts	 timeouts;	/* with top-level defaults */
	unsigned		 phase;		/* 1.., ordered phases */
	unsigned		 failures;	/* in a row, then marked down */
	double			 retry_after;	/* seconds down, then a probe */
	/* Modification requests per message; one more fails it. */
	unsigned		 max_mods;
	/* "apply_if", "skip_if" (cond.h); .set false when absent. */
	struct cond		 apply_if, skip_if;
	/* Derived: a key known at connect (client, macro), so it is
	 * connected only once the client is known; a rcpt_domain key. */
	bool			 cond_session;
	bool			 cond_rcpt;
	/* "actions": a bit (1u << enum mod_kind) per kind it may make;
	 * CONF_ACTIONS_ALL when absent. */
	uint32_t		 actions;
	bool			 actions_set;
	/* "verdicts", indexed by the upstream's verdict. */
	struct conf_vmap	 verdicts[VERDICT_COUNT];
	bool			 verdicts_set;
	enum upstream_mode	 mode;
	/* Shadow only: messages waiting for it, and bytes recorded or
	 * waiting for it, at most; beyond either, messages are dropped. */
	unsigned		 shadow_queue;
	size_t			 shadow_queue_bytes;
	/* Connection reuse (connpool.h): keep negotiated connections
	 * across MTA sessions with QUIT_NC; at most reuse_idle_max idle
	 * ones, each for at most reuse_idle_timeout seconds. */
	struct conf_reuse	 reuse;
};

/* Every modification kind (codec.h, MOD_KIND_COUNT of them). */
#define CONF_ACTIONS_ALL	0x1ffu

struct conf {
	atomic_uint		 refs;
	char			*path;
	char			*listen;
	int			 socket_mode;	/* -1: as the umask leaves it */
	char			*socket_group;	/* NULL: the starting user's */
	gid_t			 socket_gid;	/* resolved at load */
	unsigned		 threads;
	struct conf_timeouts	 timeouts;
	enum on_failure		 on_failure;
	unsigned		 failures;
	double			 retry_after;
	unsigned		 max_mods;	/* upstreams' default */
	struct conf_reuse	 reuse;		/* upstreams' default */
	double			 shutdown_grace;	/* seconds */
	/* MTA sessions served at once; 0: derived from the descriptor
	 * limit and the number of upstreams (front.c). */
	unsigned		 max_sessions;
	/* "log_format": "json": every log line one JSON object. */
	bool			 log_json;
	/* Extra macro names to request, per macro stage; NULL-terminated. */
	char			**macros[MACRO_STAGE_COUNT];
	size_t			 nmacros[MACRO_STAGE_COUNT];
	struct conf_upstream	*upstreams;	/* config order, disabled too */
	size_t			 nupstreams;
	size_t			 nenabled;
	/* How a message is kept for later phases: bytes in memory, then
	 * a temporary file in replay_dir.  Used only with two or more
	 * phases among the enabled upstreams. */
	size_t			 replay_memory;
	char			*replay_dir;
	unsigned		 nphases;	/* distinct enabled phases */
	/* The HTTP listener of metrics and health (metrics.h), inet or
	 * inet6 as written, resolved in metrics_addr; NULL: off. */
	char			*metrics_listen;
	struct conf_addr	 metrics_addr;
	/* Settings that are valid but may not work with the MTA's
	 * defaults, one line each, in the form of the errors with
	 * "warning: " before the message; in file order. */
	char			**warnings;
	size_t			 nwarnings;
};

struct conf_errors {
	char	**v;
	size_t	  n;
};

#define CONF_DEFAULT_LISTEN	"inet:8890@127.0.0.1"
#define CONF_DEFAULT_THREADS	4
#define CONF_DEFAULT_CONNECT	5.0
#define CONF_DEFAULT_COMMAND	8.0
#define CONF_DEFAULT_CONTENT	60.0
#define CONF_DEFAULT_PHASE	1
#define CONF_DEFAULT_REPLAY_MEMORY	(4u * 1024 * 1024)
#define CONF_DEFAULT_REPLAY_DIR	"/var/tmp"
#define CONF_DEFAULT_FAILURES	3
#define CONF_DEFAULT_RETRY	30.0
#define CONF_DEFAULT_GRACE	30.0
#define CONF_DEFAULT_MAX_MODS	100000
#define CONF_REPLICAS_MAX	64	/* addresses per upstream */
#define CONF_DEFAULT_SHADOW_QUEUE	100
#define CONF_DEFAULT_SHADOW_BYTES	(64u * 1024 * 1024)
/* Reuse is off unless asked for: libmilter filters see xxfi_close and
 * xxfi_connect without xxfi_negotiate after QUIT_NC, a path no MTA
 * takes, so a filter's own handling of it is untested in the wild. */
#define CONF_DEFAULT_REUSE	false
#define CONF_DEFAULT_IDLE_MAX	16
#define CONF_DEFAULT_IDLE_TIMEOUT	60.0

/*
 * The MTAs' default timeouts that miltermux's own must stay under
 * (PROTOCOL.md 7): Sendmail waits 10 s for each reply (T=R:10s) and
 * 5 minutes for the whole end of message (T=E:5m); Postfix waits
 * 30 s for each reply to a command (milter_command_timeout).
 */
#define CONF_SENDMAIL_READ	10.0
#define CONF_SENDMAIL_EOM	300.0
#define CONF_POSTFIX_COMMAND	30.0

/*
 * Reads and validates path.  Returns 0 and *out (caller owns one
 * reference), or -EINVAL / -errno with every problem appended to errs
 * (one line each, as above); on error *out is NULL.  Warnings do not
 * make a file invalid: they are in (*out)->warnings.
 */
int	conf_load(const char *path, struct conf **out, struct conf_errors *);
/*
 * The checks of -n beyond the file: the replay directory takes a file,
 * the listen address can be bound (unix: its directory is writable and
 * the path free or a socket); listen_from_cli: --listen gave it.  Each
 * problem is an error "FILE:LINE:COL: key: reason" (0 or -EINVAL); an
 * address some running process holds is a warning.
 */
int	conf_check_start(const struct conf *, bool listen_from_cli,
	    struct conf_errors *errs, struct conf_errors *warns);
/* As conf_load, on text in memory; name is used in messages. */
int	conf_parse(const char *text, size_t len, const char *name,
	    struct conf **out, struct conf_errors *);
void	conf_errors_fini(struct conf_errors *);

/*
 * Parses a socket spec (unix:/path, local:/path, inet:PORT@HOST,
 * inet6:PORT@HOST; HOST a name or address, [addr] allowed) and resolves
 * it.  Returns 0, or -EINVAL with a reason in errbuf.
 */
int	conf_parse_address(const char *spec, struct conf_addr *,
	    char *errbuf, size_t errlen);

/*
 * The effective configuration, defaults filled in, as pretty JSON
 * (a form conf_parse accepts).  Caller owns, free with free().
 */
char	*conf_dump(const struct conf *);

/* Takes ownership of the caller's reference; drops the previous one. */
void		 conf_publish(struct conf *);
/* Returns the current snapshot with a reference the caller owns. */
struct conf	*conf_acquire(void);
void		 conf_release(struct conf *);

const char	*conf_on_failure_name(enum on_failure);
const char	*conf_mode_name(enum upstream_mode);

#endif /* CONF_H */
