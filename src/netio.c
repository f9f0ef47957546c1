/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * netio - non-blocking socket primitives for the upstream client.
 *
 * Concurrency: no shared state.  Ownership: see netio.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "netio.h"

int
netio_connect(const struct sockaddr *sa, socklen_t salen, int *inprogress)
{
	int	 fd, one = 1, err;

	*inprogress = 0;
	fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0);
	if (fd == -1)
		return -errno;
	if (sa->sa_family != AF_UNIX &&
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == -1) {
		err = errno;
		close(fd);
		return -err;
	}
	if (connect(fd, sa, salen) == -1) {
		if (errno == EINPROGRESS || errno == EAGAIN) {
			/* AF_UNIX answers EAGAIN when the backlog is full;
			 * treat it as pending like TCP's EINPROGRESS. */
			if (errno == EAGAIN) {
				close(fd);
				return -EAGAIN;
			}
			*inprogress = 1;
			return fd;
		}
		err = errno;
		close(fd);
		return -err;
	}
	return fd;
}

int
netio_connect_result(int fd)
{
	int		 err = 0;
	socklen_t	 len = sizeof err;

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
		return -errno;
	return err == 0 ? 0 : -err;
}

int
netio_flush(int fd, struct buf *b)
{
	ssize_t	 n;

	while (buf_avail(b) > 0) {
		n = send(fd, buf_head(b), buf_avail(b), MSG_NOSIGNAL);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -errno;
		}
		buf_consume(b, (size_t)n);
	}
	return 0;
}

int
netio_fill(int fd, struct buf *b, size_t max)
{
	ssize_t	 n;

	for (;;) {
		n = recv(fd, buf_reserve(b, max), max, 0);
		if (n > 0) {
			buf_commit(b, (size_t)n);
			return (int)n;
		}
		if (n == 0)
			return -ECONNRESET;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return 0;
		return -errno;
	}
}

bool
netio_has_data(int fd)
{
	char	 c;
	ssize_t	 n;

	do
		n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
	while (n == -1 && errno == EINTR);
	return n == 1;
}
