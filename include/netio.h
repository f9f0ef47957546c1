/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * netio - the socket calls: non-blocking connect, read and write.
 *
 * Everything here works on non-blocking sockets and never waits: the
 * pool's event loops do the waiting.  Only netio.c and upstream.c make
 * socket calls.
 *
 * Concurrency: no shared state.  Ownership: fds returned belong to the
 * caller (close with close(2)).
 */
#ifndef NETIO_H
#define NETIO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "buf.h"

/*
 * Starts a non-blocking connect to sa.  Returns an fd (>= 0) with
 * *inprogress set when the connect completes later (wait for
 * writability, then netio_connect_result), or -errno.  TCP sockets get
 * TCP_NODELAY: the milter exchange writes small packets and waits for a
 * reply, which Nagle's algorithm would delay by the peer's delayed ACK.
 */
int	netio_connect(const struct sockaddr *sa, socklen_t salen,
	    int *inprogress);
/*
 * Sets TCP_NODELAY on every listening TCP socket the process has open,
 * so that the connections accepted from it start with it: Linux copies
 * the option from the listening socket at accept(2).  For a listening
 * socket opened by a library that keeps its fd to itself (libmilter).
 * Returns how many sockets it set, or -errno if the fds cannot be
 * listed.
 */
int	netio_nodelay_listeners(void);
/*
 * Has the kernel acknowledge what fd received at once instead of after
 * the delayed-ACK timer (TCP_QUICKACK, which lasts only a while: call it
 * again after each read that leaves an answer incomplete).  A no-op on
 * anything but TCP.
 */
void	netio_quickack(int fd);
/* 0 when the connect on fd succeeded, else -errno. */
int	netio_connect_result(int fd);
/*
 * Writes as much of b as the socket takes, consuming what was written.
 * Returns 0 (b may still hold bytes: wait for writability), or -errno.
 */
int	netio_flush(int fd, struct buf *b);
/*
 * Reads what is available (at most max bytes) and appends it to b.
 * Returns the byte count (> 0), 0 when nothing is available yet,
 * -ECONNRESET at end of stream, or -errno.
 */
int	netio_fill(int fd, struct buf *b, size_t max);
/*
 * Whether at least one byte is waiting to be read on fd, without
 * reading it.  End of stream and errors count as no: the next read
 * reports them.
 */
bool	netio_has_data(int fd);
/*
 * Whether an idle stream socket is still silent and open: nothing to
 * read, no end of stream, no error.  Never blocks.
 */
bool	netio_is_quiet(int fd);

/*
 * The local address of the first listening stream socket the process
 * has open, into *ss and *len: the front end's, opened by libmilter,
 * which keeps its fd to itself.  0, or -ENOENT / -errno.
 */
int	netio_listener_name(struct sockaddr_storage *ss, socklen_t *len);
/*
 * Whether fd is a connected stream socket accepted from the listener
 * named by ss (netio_listener_name): the same unix path, or the same
 * family and port (and address, unless the listener's is a wildcard).
 */
bool	netio_accepted_from(int fd, const struct sockaddr_storage *ss,
	    socklen_t len);

#endif /* NETIO_H */
