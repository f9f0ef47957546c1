/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * front - the libmilter face of miltermux: one callback per stage, each
 * turned into a fanout event and the merged answer turned back into a
 * libmilter status, reply text and modifications.
 *
 * Only front.c includes <libmilter/mfapi.h>.
 *
 * Concurrency: libmilter runs callbacks of different connections on
 * different threads at once; one connection's callbacks never overlap.
 * Per-connection state lives behind smfi_setpriv().
 * Ownership: the pool given to front_set_pool() is borrowed for
 * the life of the process.
 */
#ifndef FRONT_H
#define FRONT_H

#include <stdbool.h>
#include <sys/socket.h>

#include "conf.h"
#include "pool.h"

/*
 * Registers the callbacks with libmilter and sets the listen socket.
 * Returns 0, or -EINVAL when libmilter refuses the registration or the
 * socket spec.
 */
int	front_init(const char *listen);
/* The pool that serves upstream sockets; set before front_run(). */
void	front_set_pool(struct pool *);
/* This start's tag: session ids are TAG.conn-N, unique across restarts. */
const char *front_instance(void);
/*
 * The descriptor budget that the session cap is derived from: limit,
 * the process's RLIMIT_NOFILE, and base, the descriptors it holds
 * apart from sessions.  Set once, before front_run(); unset (0), the
 * cap is max_sessions alone.
 */
void	front_set_fd_budget(unsigned long limit, unsigned long base);
/*
 * The most MTA sessions served at once under config c: its
 * max_sessions, but never more than the descriptor budget leaves room
 * for (each session holds the MTA's socket, one per enabled upstream,
 * and a replay file when there are phases; some descriptors stay spare
 * so that libmilter's accept never runs out).  Sessions beyond it are
 * refused at their connect stage with c's top-level on_failure.
 */
unsigned front_session_cap(const struct conf *c);
/* Opens the listening socket now (before privileges are dropped). */
int	front_open_socket(void);
/* Runs libmilter's main loop until it is told to stop. */
int	front_run(void);
/* Stops accepting; smfi_main then returns.  Any thread. */
void	front_stop(void);
/* Called on a libmilter thread, without locks held. */
typedef void front_idle_fn(void);
/*
 * Stopping: /healthz says 503 from now on; open sessions go on, and when
 * the last one ends, idle() is called (once or more; also when none was
 * open, if a refused connection passed by).  With refuse, new MTA
 * connections are refused at their first command (libmilter closes
 * them); without, the caller has closed the listener (handover_close)
 * and the sessions still to come were accepted before: they are served.
 * Call once, from any thread.
 */
void	front_drain(front_idle_fn *idle, bool refuse);
/* Open MTA sessions (negotiated, not yet closed).  Any thread. */
unsigned front_active(void);
/* libmilter's listening socket, or -1 if not found */
int	front_listen_fd(void);
/* The listening socket's address; false if unknown */
bool	front_listen_addr(struct sockaddr_storage *ss);

#endif /* FRONT_H */
