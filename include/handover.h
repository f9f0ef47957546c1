/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * handover - restart and upgrade without refusing an MTA connection
 * (see handover.c for the mechanism and its limits).
 */
#ifndef MILTERMUX_HANDOVER_H
#define MILTERMUX_HANDOVER_H

#include <stdbool.h>
#include <sys/socket.h>

/* While on, an inet socket gets SO_REUSEPORT before it is bound, and a
 * unix one replaces the running socket only once it listens. */
void	handover_binding_set(bool on);
/* The group (or -1) and mode (or -1) a unix listening socket gets
 * before it is renamed into place. */
void	handover_unix_perms(long gid, int mode);
/* libmilter's listening socket, or -1 */
int	handover_listener_fd(void);
/* Make the newest listener on the address take new connections. */
int	handover_steer(int fd);
/* Listening sockets on this address, as the kernel lists them; -1: unknown */
int	handover_listeners(const struct sockaddr_storage *ss);
/* Another listener shares the address: a new instance took over. */
bool	handover_successor(const struct sockaddr_storage *ss);
/* A connection libmilter accepted began its session (or was refused). */
void	handover_begun_one(void);
/* A connection waits in the listener's queue */
bool	handover_queued(int fd);
/* A connection waits in the listener's queue, or was accepted less than
 * 2 s ago and has not begun its session yet. */
bool	handover_pending(int fd);
/* Stop listening on fd now, the connections queued in it accepted first
 * (up to wait_s): new ones are refused by the kernel.  0 or -errno. */
int	handover_close(int fd, double wait_s);

#endif
