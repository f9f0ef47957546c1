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

#include "pool.h"

/*
 * Registers the callbacks with libmilter and sets the listen socket.
 * Returns 0, or -EINVAL when libmilter refuses the registration or the
 * socket spec.
 */
int	front_init(const char *listen);
/* The pool that serves upstream sockets; set before front_run(). */
void	front_set_pool(struct pool *);
/* Opens the listening socket now (before privileges are dropped). */
int	front_open_socket(void);
/* Runs libmilter's main loop until it is told to stop. */
int	front_run(void);
/* Stops accepting; smfi_main then returns.  Any thread. */
void	front_stop(void);
/* Called on a libmilter thread, without locks held. */
typedef void front_idle_fn(void);
/*
 * From now on new MTA connections are refused at their first command
 * (libmilter closes them); open sessions go on, and when the last one
 * ends, idle() is called (once or more; also when none was open, if a
 * refused connection passed by).  Call once, from any thread.
 */
void	front_drain(front_idle_fn *idle);
/* Open MTA sessions (negotiated, not yet closed).  Any thread. */
unsigned front_active(void);

#endif /* FRONT_H */
