/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * mtaclient - a raw MTA side of the milter protocol, for tests that
 * drive miltermux the way Postfix or Sendmail would, and also the way
 * they never should: a packet cut in half, a header value holding NUL
 * bytes, a body packet of 1 MiB, a connection dropped at any stage.
 *
 * Built on codec.c for every byte it sends and reads, over one blocking
 * socket; every read and write has a deadline (poll), so a client never
 * hangs on a stuck peer.  It keeps no policy: it sends what it is told
 * and reports what came back, without judging the verdicts.
 *
 * Concurrency: one struct mta per thread; no shared state, so the soak
 * and the MTA-goes-away tests run many at once.
 * Ownership: the struct is caller storage; mta_close() releases what it
 * holds.  struct mta_result owns its text and modifications until
 * mta_result_fini().
 *
 * Errors: int functions return 0 or a negative errno: -ETIMEDOUT (no
 * answer in time), -ECONNRESET (the peer closed), -EPROTO (a malformed
 * or unexpected packet), -EMSGSIZE (a packet over max_data).  After an
 * error the stream is out of sync: only mta_close() is left.
 */
#ifndef MTACLIENT_H
#define MTACLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "codec.h"
#include "proto.h"

struct mta {
	int		 fd;		/* -1 when closed */
	double		 timeout;	/* seconds for each reply */
	size_t		 max_data;	/* largest reply accepted */
	uint32_t	 actions;	/* negotiated (the filter's answer) */
	uint32_t	 proto;
	struct buf	 rbuf;
	/* Counters, for tests that look at the traffic. */
	size_t		 packets_in;
	size_t		 max_in;	/* largest reply data seen */
};

/* A reply to one command. */
struct mta_result {
	/* VERDICT_NONE when no reply was due (a NO* or NR* step). */
	enum verdict	 verdict;
	char		*text;		/* 'y' text, or NULL */
	struct mod	*mods;		/* end of message, arrival order */
	size_t		 nmods;
	size_t		 modcap;
	unsigned	 progress;	/* 'p' packets before the verdict */
	size_t		 progress_after; /* mods before the last 'p' */
};

/*
 * Connects to spec (unix:/path or inet:PORT@127.0.0.1).  timeout is the
 * deadline for the connect and for each later reply.  Returns 0 or a
 * negative errno; on error m is closed.
 */
int	mta_open(struct mta *m, const char *spec, double timeout);

/*
 * Option negotiation: offers version 6, actions and protocol (what
 * Postfix offers: MA_ALL, and MP_ALL_V6 minus the bits the MTA does not
 * support).  Stores the filter's answer in m->actions and m->proto.
 */
int	mta_negotiate(struct mta *m, uint32_t actions, uint32_t proto);

/*
 * Sends one macro packet (cmd the stage's command, pairs alternate
 * name, value) and nothing else; no reply is due.
 */
int	mta_macros(struct mta *m, char cmd, const char *const *pairs,
	    size_t npairs);

/*
 * The stages.  Each sends the command unless the filter switched the
 * stage off (then r->verdict is VERDICT_NONE and nothing is sent), and
 * reads the reply unless it asked for none.  r may be NULL when the
 * caller only cares about errors; on error it holds nothing to free.
 * mta_eom() collects modifications and counts progress packets; the
 * other stages treat modifications as -EPROTO.
 */
int	mta_connect(struct mta *m, const char *host, const char *addr,
	    struct mta_result *r);
int	mta_helo(struct mta *m, const char *name, struct mta_result *r);
int	mta_mail(struct mta *m, const char *const *argv, size_t argc,
	    struct mta_result *r);
int	mta_rcpt(struct mta *m, const char *const *argv, size_t argc,
	    struct mta_result *r);
int	mta_data(struct mta *m, struct mta_result *r);
/* A header with a raw value of vlen bytes (NUL bytes included). */
int	mta_header(struct mta *m, const char *name, const void *value,
	    size_t vlen, struct mta_result *r);
int	mta_eoh(struct mta *m, struct mta_result *r);
/* One BODY packet of len bytes, whatever len is (the caller chunks). */
int	mta_body(struct mta *m, const void *data, size_t len,
	    struct mta_result *r);
int	mta_eom(struct mta *m, struct mta_result *r);
/*
 * End of message carrying the last len bytes of the body in the BODYEOB
 * packet itself, which the protocol allows but neither Postfix nor
 * Sendmail does (PROTOCOL.md 1.2).
 */
int	mta_eom_data(struct mta *m, const void *data, size_t len,
	    struct mta_result *r);
/* ABORT and QUIT: no reply is due. */
int	mta_abort(struct mta *m);
int	mta_quit(struct mta *m);
/*
 * QUIT_NC: the session ends, the connection stays, and the next session
 * starts with mta_connect() without a new negotiation.  No reply is due.
 */
int	mta_quit_nc(struct mta *m);

/*
 * Writes raw bytes as they are (a partial packet, garbage).  Returns 0
 * or a negative errno.
 */
int	mta_send_raw(struct mta *m, const void *data, size_t len);

/* Sends the command packets in b (whole, already encoded) and reads
 * the reply when want_reply; for the stages above and odd cases. */
int	mta_exchange(struct mta *m, const struct buf *b, bool want_reply,
	    bool at_eom, struct mta_result *r);

/* Closes the socket at once (no QUIT).  Idempotent. */
void	mta_close(struct mta *m);

void	mta_result_fini(struct mta_result *r);

#endif /* MTACLIENT_H */
