/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * monotime - CLOCK_MONOTONIC as seconds, and back to the timespec that
 * pthread_cond_timedwait wants (with a condition variable set to that
 * clock): deadlines that a change of the wall clock does not move.
 */
#ifndef MILTERMUX_MONOTIME_H
#define MILTERMUX_MONOTIME_H

#include <time.h>

static inline double
mono_now(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline struct timespec
mono_ts(double t)
{
	struct timespec	 ts;

	ts.tv_sec = (time_t)t;
	ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

#endif
