/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * upgrade - SIGUSR2: replace the running binary without an outage.
 * The daemon starts a new copy of itself from the executable's path
 * (the new binary after a package upgrade), which takes the listening
 * socket over as in a manual restart (handover.c), tells systemd it is
 * the main process now, and sends its predecessor SIGTERM, on which
 * that one drains.  See upgrade.c.
 */
#ifndef MILTERMUX_UPGRADE_H
#define MILTERMUX_UPGRADE_H

#include <stdbool.h>
#include <sys/types.h>

/* At start, before anything reads argv: the executable's path and the
 * command line to start the successor with; and, when this process is
 * a successor, its predecessor from the environment. */
void	upgrade_init(int argc, char **argv);
/* The miltermux this one succeeds (0: none), and the pid file
 * descriptor it passed on (its lock held), or -1. */
pid_t	upgrade_predecessor(int *pidfd);
/* Start the successor; pidfd (or -1) is passed on.  0, or an errno. */
int	upgrade_start(int pidfd);
/* The successor started and not yet known to have failed (0: none).
 * Reaps it when it has exited, with one log line saying how. */
pid_t	upgrade_successor(void);
/* A successor was started and has not failed (it may have gone into the
 * background under a pid unknown here). */
bool	upgrade_pending(void);

#endif
