/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * procstat - what a running process holds, read from /proc: open file
 * descriptors, threads, resident memory, CPU time.  The leak and soak tests
 * sample miltermux with it.
 *
 * Concurrency: no state.  Ownership: nothing allocated.
 * Errors: each returns the value, or a negative errno (-ESRCH when the
 * process is gone).
 */
#ifndef PROCSTAT_H
#define PROCSTAT_H

#include <sys/types.h>

/*
 * A sanitizer build (miltermux is built with the same flags as the
 * tests) keeps freed memory in quarantine and pads every block: its
 * resident memory says nothing about leaks or bounds, so the tests
 * check descriptors and threads there, not memory.
 */
#if defined(MILTERMUX_SANITIZED) || defined(__SANITIZE_ADDRESS__) || \
    defined(__SANITIZE_THREAD__)
#define PS_MEMORY_MEANINGFUL	0
#else
#define PS_MEMORY_MEANINGFUL	1
#endif

/* Entries in /proc/PID/fd. */
long	ps_fds(pid_t);
/* "Threads:" of /proc/PID/status. */
long	ps_threads(pid_t);
/* "VmRSS:" and "VmHWM:" (peak RSS) of /proc/PID/status, in KiB. */
long	ps_rss_kb(pid_t);
long	ps_hwm_kb(pid_t);

/* CPU time used so far, user and system, in seconds (utime + stime
 * of /proc/PID/stat); negative errno on error. */
double	ps_cpu_seconds(pid_t);

/*
 * Polls until the process's descriptor and thread counts have not
 * changed for steady_s, at most timeout_s; sets *fds and *threads to the
 * last counts.  For a baseline: a daemon that just came up may still be
 * opening descriptors or starting threads.  0, or -ETIMEDOUT (the counts
 * are then the last seen), or -ESRCH.
 */
int	ps_wait_steady(pid_t, double steady_s, double timeout_s, long *fds,
	    long *threads);

#endif /* PROCSTAT_H */
