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
