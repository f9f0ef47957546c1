/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * netio - non-blocking socket primitives for the upstream client.
 *
 * Concurrency: no shared state.  Ownership: see netio.h.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <string.h>
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

/* is_tcp_listener - a listening TCP socket? */
static int
is_tcp_listener(int fd)
{
	struct sockaddr_storage	 ss;
	socklen_t		 len = sizeof ss;
	int			 v = 0;

	if (getsockname(fd, (struct sockaddr *)&ss, &len) == -1 ||
	    (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
		return 0;
	len = sizeof v;
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) == -1 ||
	    v != SOCK_STREAM)
		return 0;
	len = sizeof v;
	return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 &&
	    v != 0;
}

int
netio_nodelay_listeners(void)
{
	DIR		*d;
	struct dirent	*e;
	char		*end;
	long		 fd;
	int		 one = 1, n = 0;

	if ((d = opendir("/proc/self/fd")) == NULL)
		return -errno;
	while ((e = readdir(d)) != NULL) {
		fd = strtol(e->d_name, &end, 10);
		if (*end != '\0' || end == e->d_name || fd == dirfd(d))
			continue;
		if (is_tcp_listener((int)fd) && setsockopt((int)fd,
		    IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0)
			n++;
	}
	closedir(d);
	return n;
}

void
netio_quickack(int fd)
{
#ifdef TCP_QUICKACK
	int	 one = 1;

	/* Fails with ENOPROTOOPT on a unix socket: nothing to do there. */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
#else
	(void)fd;
#endif
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

bool
netio_is_quiet(int fd)
{
	char	 c;
	ssize_t	 n;

	do
		n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
	while (n == -1 && errno == EINTR);
	return n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

int
netio_listener_name(struct sockaddr_storage *ss, socklen_t *len)
{
	DIR		*d;
	struct dirent	*e;
	char		*end;
	long		 fd;
	int		 on, type, rc = -ENOENT;
	socklen_t	 olen;

	if ((d = opendir("/proc/self/fd")) == NULL)
		return -errno;
	while (rc != 0 && (e = readdir(d)) != NULL) {
		fd = strtol(e->d_name, &end, 10);
		if (*end != '\0' || end == e->d_name || fd == dirfd(d))
			continue;
		olen = sizeof on;
		if (getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &on,
		    &olen) != 0 || !on)
			continue;
		olen = sizeof type;
		if (getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type,
		    &olen) != 0 || type != SOCK_STREAM)
			continue;
		*len = sizeof *ss;
		if (getsockname((int)fd, (struct sockaddr *)ss, len) == 0)
			rc = 0;
	}
	closedir(d);
	return rc;
}

bool
netio_accepted_from(int fd, const struct sockaddr_storage *ss,
    socklen_t len)
{
	struct sockaddr_storage	 me, peer;
	socklen_t		 mlen = sizeof me, plen = sizeof peer, olen;
	struct stat		 st;
	int			 on = 1;

	olen = sizeof on;
	if (fd < 0 || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode) ||
	    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &olen) != 0 ||
	    on || getsockname(fd, (struct sockaddr *)&me, &mlen) != 0 ||
	    getpeername(fd, (struct sockaddr *)&peer, &plen) != 0 ||
	    me.ss_family != ss->ss_family)
		return false;
	switch (ss->ss_family) {
	case AF_UNIX:
		return mlen == len && memcmp(&me, ss, len) == 0;
	case AF_INET: {
		const struct sockaddr_in *a = (const void *)ss;
		const struct sockaddr_in *b = (const void *)&me;

		return a->sin_port == b->sin_port &&
		    (a->sin_addr.s_addr == htonl(INADDR_ANY) ||
		    a->sin_addr.s_addr == b->sin_addr.s_addr);
	}
	case AF_INET6: {
		const struct sockaddr_in6 *a = (const void *)ss;
		const struct sockaddr_in6 *b = (const void *)&me;

		return a->sin6_port == b->sin6_port &&
		    (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr) ||
		    memcmp(&a->sin6_addr, &b->sin6_addr,
		    sizeof a->sin6_addr) == 0);
	}
	default:
		return false;
	}
}
