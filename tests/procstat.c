/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * procstat - counters of a process from /proc.
 *
 * Concurrency: no state.  Ownership: nothing kept.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "procstat.h"

long
ps_fds(pid_t pid)
{
	char		 path[64];
	DIR		*d;
	struct dirent	*e;
	long		 n = 0;

	snprintf(path, sizeof path, "/proc/%ld/fd", (long)pid);
	if ((d = opendir(path)) == NULL)
		return errno == ENOENT ? -ESRCH : -errno;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

double
ps_cpu_seconds(pid_t pid)
{
	char			 path[64], line[1024], *p;
	unsigned long long	 ut, st;
	FILE			*f;
	int			 n;

	snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
	if ((f = fopen(path, "r")) == NULL)
		return errno == ENOENT ? -ESRCH : -errno;
	p = fgets(line, sizeof line, f);
	fclose(f);
	/* The command name may hold spaces and parentheses: fields are
	 * counted from the last ')'; utime and stime are the 14th and
	 * 15th, the 12th and 13th after it. */
	if (p == NULL || (p = strrchr(line, ')')) == NULL)
		return -EPROTO;
	n = sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
	    "%llu %llu", &ut, &st);
	if (n != 2)
		return -EPROTO;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* status_field - the number after "key" in /proc/PID/status */
static long
status_field(pid_t pid, const char *key)
{
	char	 path[64], line[256];
	size_t	 klen = strlen(key);
	FILE	*f;
	long	 v = -ENOENT;

	snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
	if ((f = fopen(path, "r")) == NULL)
		return errno == ENOENT ? -ESRCH : -errno;
	while (fgets(line, sizeof line, f) != NULL)
		if (strncmp(line, key, klen) == 0) {
			v = strtol(line + klen, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

long
ps_threads(pid_t pid)
{
	return status_field(pid, "Threads:");
}

long
ps_rss_kb(pid_t pid)
{
	return status_field(pid, "VmRSS:");
}

long
ps_hwm_kb(pid_t pid)
{
	return status_field(pid, "VmHWM:");
}

static double
mono(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int
ps_wait_steady(pid_t pid, double steady_s, double timeout_s, long *fds,
    long *threads)
{
	struct timespec	 pause = { 0, 20 * 1000 * 1000 };
	double		 t, since = mono(), deadline = since + timeout_s;
	long		 f, n;

	*fds = ps_fds(pid);
	*threads = ps_threads(pid);
	for (int i = 0; i < 1000000; i++) {
		if (*fds < 0 || *threads < 0)
			return -ESRCH;
		t = mono();
		if (t - since >= steady_s)
			return 0;
		if (t >= deadline)
			return -ETIMEDOUT;
		nanosleep(&pause, NULL);
		f = ps_fds(pid);
		n = ps_threads(pid);
		if (f != *fds || n != *threads)
			since = mono();
		*fds = f;
		*threads = n;
	}
	return -ETIMEDOUT;
}
