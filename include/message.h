/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * message - one SMTP transaction as miltermux sees it: its identity,
 * what the MTA told of it (queue id, sender, recipients and their
 * answers, headers, the body for later phases), the merged result, and
 * how it ended; and the one log line that explains it.
 *
 * A message lives from MAIL to its end (a verdict that ends it, the end
 * of message, an abort, the MTA gone); message_begin() starts the next
 * one in the same storage.  Its sequence number is what every upstream
 * exchange carries (exchange.h): an answer counts only for the message
 * whose number it bears.
 *
 * Concurrency: the owner's (fanout's) caller thread only, except seq,
 * which the owner changes and reads under its own lock.  Ownership:
 * strings are copied in; borrowed ones (decider, end_why) must outlive
 * the message (configuration names, string literals).
 */
#ifndef MESSAGE_H
#define MESSAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "merge.h"
#include "proto.h"
#include "spool.h"

/* A recipient and what the MTA was answered for it. */
struct message_rcpt {
	char		*addr;
	enum verdict	 verdict;
	const char	*by;		/* the deciding upstream, or NULL */
};

struct message {
	uint64_t		 seq;		/* owner's lock */
	bool			 active;	/* between MAIL and its end */
	char			*queueid;	/* the MTA's, or NULL */
	char			*sender;
	struct message_rcpt	*rcpts;
	size_t			 nrcpts, rcptcap;
	/* The refused ones, for the merge (recipient edits on them are
	 * dropped). */
	char			**rejected;
	size_t			 nrejected, rejcap;
	/* The headers as the MTA sent them, when edits or later phases
	 * need them. */
	struct merge_header	*hdrs;
	size_t			 nhdrs, hdrcap;
	struct spool		 body;		/* for later phases */
	int			 spool_err;	/* 0, or why it failed */
	struct merge_result	 result;	/* end of message */
	bool			 have_result;
	const char		*decider;	/* of the merged verdict */
	const char		*end_why;	/* why the MTA gave up */
	enum stage		 end_stage;	/* ... at which stage */
	/* What the MTA took of the merged edit script, by kind. */
	size_t			 applied[MOD_KIND_COUNT];
};

void	message_init(struct message *, size_t replay_memory,
	    const char *replay_dir);
void	message_fini(struct message *);
/* Forgets everything of the message but its number; not active. */
void	message_clear(struct message *);
/* Clears, then starts a message from sender (the owner bumps seq). */
void	message_begin(struct message *, const char *sender);
/* The MTA's queue id, once it is known (it may change: kept latest). */
void	message_set_queueid(struct message *, const char *);
void	message_note_header(struct message *, const char *name,
	    const char *value);
/* A recipient and its merged answer; reject and tempfail refuse it. */
void	message_note_rcpt(struct message *, const char *addr, enum verdict,
	    const char *by);
/* The name log lines use: the queue id, else fallback. */
const char *message_name(const struct message *, const char *fallback);
/*
 * Appends to line how the message ended: the merged verdict and who
 * decided it (or "aborted" and why), the modifications applied, the
 * sender and each recipient with its answer.  merged VERDICT_NONE:
 * aborted.
 */
void	message_describe(const struct message *, struct buf *line,
	    enum verdict merged, size_t napplied);
/*
 * The same facts as message_describe as JSON fields added to o: "merged",
 * "decider", "aborted", "modifications" {kind: count}, "sender",
 * "recipients" [{"address", "verdict", "decider"}].
 */
struct json_t;
void	message_json(const struct message *, struct json_t *o,
	    enum verdict merged, size_t napplied);
/* Appends formatted text to a line being built (no NUL). */
void	message_put(struct buf *, const char *fmt, ...)
	    __attribute__((format(printf, 2, 3)));

#endif /* MESSAGE_H */
