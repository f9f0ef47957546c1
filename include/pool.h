/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * pool - a fixed set of worker threads, each running an event loop.
 *
 * Upstream sockets are non-blocking; each belongs to one loop for its
 * whole life, and that loop's thread is the only one that touches it
 * (confinement instead of locks).  A worker therefore never sits on one
 * slow upstream: it waits in epoll on all of its sockets together and
 * advances whichever exchange is ready.  Other threads reach a loop by
 * posting a job to its mailbox.
 *
 * Concurrency: pool_post() and pool_run() are thread-safe; pool_io_*()
 * only from a job or handler of that loop (on its thread, or run by
 * pool_run).  Ownership: jobs and io handles are embedded in the
 * caller's structures; the pool allocates nothing per job, and the
 * caller keeps that storage alive until run() has returned or the
 * handle was removed.
 */
#ifndef POOL_H
#define POOL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

struct pool;
struct pool_loop;

struct pool_job {
	TAILQ_ENTRY(pool_job)	 entry;
	void			(*run)(struct pool_job *);
};

struct pool_io {
	int	 fd;
	void	(*ready)(struct pool_io *, uint32_t events);
};

/*
 * Starts nthreads worker loops.  Returns 0 and *out, or -errno (nothing
 * started).  The threads block every signal.
 */
int	pool_new(unsigned nthreads, struct pool **out);
/* Stops the loops after their mailboxes drain, joins, frees. */
void	pool_free(struct pool *);
/* The loop for a new socket: round robin. */
struct pool_loop *pool_pick(struct pool *);
/*
 * Queues job to run once on loop's thread, in posting order.  Never
 * fails and never blocks beyond a short mutex hold.
 */
void	pool_post(struct pool_loop *, struct pool_job *);
/*
 * Like pool_post(), except that when the loop is asleep with nothing
 * queued and the caller is not a loop thread, the caller runs job at
 * once itself, as the loop would (no thread wake-up, no wait for one).
 * The job must not free a pool_io handle (the loop may hold an event
 * for it), and the caller must hold no lock that the job takes.
 */
void	pool_run(struct pool_loop *, struct pool_job *);
/*
 * Lets the calling thread (never a loop thread) act as the loop: with
 * wait false only when pool_run() would run a job at once (the loop
 * asleep, its mailbox empty: everything posted so far has run), else
 * it returns false; with wait true it waits for the loop's turn.  Until
 * pool_leave() the caller may do what a job may (pool_run's rules).
 */
bool	pool_enter(struct pool_loop *, bool wait);
void	pool_leave(struct pool_loop *);
/* Loop thread only: watch fd for events (EPOLLIN/EPOLLOUT). */
int	pool_io_add(struct pool_loop *, struct pool_io *, uint32_t events);
int	pool_io_mod(struct pool_loop *, struct pool_io *, uint32_t events);
void	pool_io_del(struct pool_loop *, struct pool_io *);
/* True when called on loop's own thread. */
int	pool_on_loop(const struct pool_loop *);

#endif /* POOL_H */
