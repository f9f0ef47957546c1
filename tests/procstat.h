/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * procstat - what a running process holds, read from /proc: open file
 * descriptors, threads, resident memory.  The leak and soak tests
 * sample miltermux with it.
 *
 * Concurrency: no state.  Ownership: nothing allocated.
 * Errors: each returns the value, or a negative errno (-ESRCH when the
 * process is gone).
 */
#ifndef PROCSTAT_H
#define PROCSTAT_H

#include <sys/types.h>

/* Entries in /proc/PID/fd. */
long	ps_fds(pid_t);
/* "Threads:" of /proc/PID/status. */
long	ps_threads(pid_t);
/* "VmRSS:" and "VmHWM:" (peak RSS) of /proc/PID/status, in KiB. */
long	ps_rss_kb(pid_t);
long	ps_hwm_kb(pid_t);

#endif /* PROCSTAT_H */
