/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * pool - worker threads with one epoll event loop each.
 *
 * Design: each loop owns an epoll set, an eventfd that wakes it, and a
 * mailbox of jobs.  The loop drains its mailbox before each epoll_wait,
 * never in the middle of a batch of events, so a job that closes a
 * socket can never leave a stale event for it in the batch being
 * handled.
 *
 * pool_run() saves the wake-up of a sleeping loop: the caller runs the
 * job itself, holding the loop's run lock, which the loop thread holds
 * whenever it is not asleep in epoll_wait (pool_enter() and pool_leave()
 * let a caller hold it for longer work of its own).  A job so run may
 * change the epoll set while the loop sleeps, and an event the loop
 * collected in the meantime is then handled after the job; that is why
 * such a job must never free a handle (pool.h), while the jobs of the
 * mailbox run only between batches and may.
 *
 * Locking: loop->lock protects loop->mailbox, loop->stopping and
 * loop->sleeping only; no job or handler runs with it held.  loop->run
 * is taken before loop->lock, or tried (never waited for) under it.
 */
/* pthread_setname_np is a GNU extension; only this file needs it. */
#define _GNU_SOURCE
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "pool.h"
#include "xalloc.h"

#define POOL_STACK_SIZE	(256 * 1024)
#define POOL_EVENTS	64

TAILQ_HEAD(pool_jobq, pool_job);

struct pool_loop {
	int			 epfd;
	int			 wakefd;
	pthread_t		 thread;
	unsigned		 index;
	pthread_mutex_t		 lock;	/* mailbox, stopping, sleeping */
	/* Held by whoever runs the loop's jobs and handlers: its thread,
	 * except while asleep in epoll_wait, or a pool_run() caller. */
	pthread_mutex_t		 run;
	struct pool_jobq	 mailbox;
	bool			 stopping;
	bool			 sleeping;	/* in epoll_wait: post wakes */
};

struct pool {
	struct pool_loop	*loops;
	unsigned		 nloops;
	atomic_uint		 next;
};

static _Thread_local const struct pool_loop *current_loop;

/*
 * drain - run every job posted so far; returns false once stopping.
 * *sleep tells whether the loop may block in epoll_wait: it had nothing
 * to run, and from now on a post wakes it.
 */
static bool
drain(struct pool_loop *l, bool *sleep)
{
	struct pool_jobq	 q = TAILQ_HEAD_INITIALIZER(q);
	struct pool_job		*job;
	bool			 stopping;

	pthread_mutex_lock(&l->lock);
	TAILQ_CONCAT(&q, &l->mailbox, entry);
	stopping = l->stopping;
	l->sleeping = *sleep = TAILQ_EMPTY(&q) && !stopping;
	pthread_mutex_unlock(&l->lock);
	while ((job = TAILQ_FIRST(&q)) != NULL) {
		TAILQ_REMOVE(&q, job, entry);
		job->run(job);		/* may free job: don't touch it */
	}
	return !stopping;
}

/* loop_main - worker thread body: jobs, then socket events, until stop */
static void *
loop_main(void *arg)
{
	struct pool_loop	*l = arg;
	struct epoll_event	 ev[POOL_EVENTS];
	struct pool_io		*io;
	uint64_t		 v;
	int			 n;
	bool			 sleep;
	char			 name[16];

	current_loop = l;
	snprintf(name, sizeof name, "mux-pool-%u", l->index);
#ifdef HAVE_PTHREAD_SETNAME_NP
	pthread_setname_np(pthread_self(), name);
#endif
	pthread_mutex_lock(&l->run);
	for (;;) {
		if (!drain(l, &sleep))
			break;
		/* Asleep, the loop lets pool_run() callers in. */
		if (sleep)
			pthread_mutex_unlock(&l->run);
		n = epoll_wait(l->epfd, ev, POOL_EVENTS, sleep ? -1 : 0);
		if (sleep) {
			pthread_mutex_lock(&l->lock);
			l->sleeping = false;
			pthread_mutex_unlock(&l->lock);
			pthread_mutex_lock(&l->run);
		}
		if (n == -1) {
			if (errno == EINTR)
				continue;
			log_panic("pool: epoll_wait: %s", strerror(errno));
		}
		for (int i = 0; i < n; i++) {
			io = ev[i].data.ptr;
			if (io == NULL) {
				/* The wake eventfd: read only when it fired,
				 * not on every turn of the loop. */
				if (read(l->wakefd, &v, sizeof v) == -1 &&
				    errno != EAGAIN)
					log_warn("pool: read eventfd");
				continue;
			}
			io->ready(io, ev[i].events);
		}
	}
	pthread_mutex_unlock(&l->run);
	return NULL;
}

int
pool_new(unsigned nthreads, struct pool **out)
{
	struct pool		*p;
	struct pool_loop	*l;
	struct epoll_event	 ev;
	pthread_attr_t		 attr;
	sigset_t		 all, old;
	int			 err = 0;
	unsigned		 i;

	p = xcalloc(1, sizeof *p);
	p->loops = xcalloc(nthreads, sizeof *p->loops);
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, POOL_STACK_SIZE);
	/* Workers inherit a full mask: signals belong to main's sigwait
	 * thread and to libmilter's. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (i = 0; i < nthreads; i++) {
		l = &p->loops[i];
		l->index = i;
		TAILQ_INIT(&l->mailbox);
		pthread_mutex_init(&l->lock, NULL);
		pthread_mutex_init(&l->run, NULL);
		l->epfd = epoll_create1(EPOLL_CLOEXEC);
		l->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (l->epfd == -1 || l->wakefd == -1) {
			err = -errno;
			break;
		}
		memset(&ev, 0, sizeof ev);
		ev.events = EPOLLIN;
		ev.data.ptr = NULL;
		if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) == -1) {
			err = -errno;
			break;
		}
		if ((err = pthread_create(&l->thread, &attr, loop_main, l))
		    != 0) {
			err = -err;
			break;
		}
		p->nloops++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (err != 0) {
		if (i < nthreads) {
			if (p->loops[i].epfd != -1)
				close(p->loops[i].epfd);
			if (p->loops[i].wakefd != -1)
				close(p->loops[i].wakefd);
		}
		pool_free(p);
		return err;
	}
	*out = p;
	return 0;
}

void
pool_free(struct pool *p)
{
	struct pool_loop	*l;
	uint64_t		 one = 1;

	if (p == NULL)
		return;
	for (unsigned i = 0; i < p->nloops; i++) {
		l = &p->loops[i];
		pthread_mutex_lock(&l->lock);
		l->stopping = true;
		pthread_mutex_unlock(&l->lock);
		if (write(l->wakefd, &one, sizeof one) == -1)
			log_warn("pool: wake loop %u", i);
	}
	for (unsigned i = 0; i < p->nloops; i++) {
		l = &p->loops[i];
		pthread_join(l->thread, NULL);
		close(l->epfd);
		close(l->wakefd);
		pthread_mutex_destroy(&l->lock);
		pthread_mutex_destroy(&l->run);
	}
	free(p->loops);
	p->loops = NULL;
	free(p);
}

struct pool_loop *
pool_pick(struct pool *p)
{
	unsigned	 i;

	i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
	return &p->loops[i % p->nloops];
}

void
pool_post(struct pool_loop *l, struct pool_job *job)
{
	uint64_t	 one = 1;
	bool		 wake;

	pthread_mutex_lock(&l->lock);
	TAILQ_INSERT_TAIL(&l->mailbox, job, entry);
	wake = l->sleeping;
	l->sleeping = false;
	pthread_mutex_unlock(&l->lock);
	/* Only a loop that may be asleep in epoll_wait needs the eventfd;
	 * one that is running drains its mailbox before it waits again. */
	if (wake && write(l->wakefd, &one, sizeof one) == -1)
		log_warn("pool: wake loop %u", l->index);
}

bool
pool_enter(struct pool_loop *l, bool wait)
{
	bool	 now;

	if (wait) {
		/* Callers are no loop threads and hold no l->lock. */
		pthread_mutex_lock(&l->run);
		current_loop = l;
		return true;
	}
	/*
	 * Only a caller that is no loop itself, only when the loop sleeps
	 * with an empty mailbox (nothing to overtake), and only if the run
	 * lock is free: trylock under l->lock never waits, so the order
	 * run -> lock of the loop thread cannot deadlock with us.
	 */
	pthread_mutex_lock(&l->lock);
	now = current_loop == NULL && l->sleeping && !l->stopping &&
	    TAILQ_EMPTY(&l->mailbox) && pthread_mutex_trylock(&l->run) == 0;
	pthread_mutex_unlock(&l->lock);
	if (now)
		current_loop = l;
	return now;
}

void
pool_leave(struct pool_loop *l)
{
	current_loop = NULL;
	pthread_mutex_unlock(&l->run);
}

void
pool_run(struct pool_loop *l, struct pool_job *job)
{
	if (!pool_enter(l, false)) {
		pool_post(l, job);
		return;
	}
	job->run(job);
	pool_leave(l);
}

int
pool_io_add(struct pool_loop *l, struct pool_io *io, uint32_t events)
{
	struct epoll_event	 ev;

	memset(&ev, 0, sizeof ev);
	ev.events = events;
	ev.data.ptr = io;
	return epoll_ctl(l->epfd, EPOLL_CTL_ADD, io->fd, &ev) == -1 ?
	    -errno : 0;
}

int
pool_io_mod(struct pool_loop *l, struct pool_io *io, uint32_t events)
{
	struct epoll_event	 ev;

	memset(&ev, 0, sizeof ev);
	ev.events = events;
	ev.data.ptr = io;
	return epoll_ctl(l->epfd, EPOLL_CTL_MOD, io->fd, &ev) == -1 ?
	    -errno : 0;
}

void
pool_io_del(struct pool_loop *l, struct pool_io *io)
{
	if (epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL) == -1)
		log_warn("pool: epoll_ctl del fd %d", io->fd);
}

int
pool_on_loop(const struct pool_loop *l)
{
	return current_loop == l;
}
