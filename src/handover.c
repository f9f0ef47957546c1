/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * handover - restart and upgrade without refusing an MTA connection.
 *
 * The procedure (miltermux(8), RESTARTING AND UPGRADING): start the new
 * miltermux on the same address (inet or unix), then send SIGTERM to
 * the old one.
 *
 * 1. Both listen at once.  libmilter opens the listening socket itself
 *    and offers no hook, so this file defines bind(): the executable's
 *    symbol wins over libc's for libmilter's calls too.  While
 *    handover_binding is set (around smfi_opensocket only) it sets
 *    SO_REUSEPORT on an inet socket before the real bind, found with
 *    dlsym(RTLD_NEXT).  The kernel only lets sockets of the same user
 *    share a port this way.
 *
 * 2. The newest listener takes every new connection.  With SO_REUSEPORT
 *    the kernel spreads connections over the group's listeners by hash;
 *    a classic BPF program attached to the group (any member may attach
 *    it; it belongs to the group) picks the listener by its index
 *    instead.  Listeners are indexed in the order they started listening,
 *    and one that leaves is replaced by the last one (Linux
 *    net/core/sock_reuseport.c), so with the old and the new instance
 *    the new one is index 1.  The program returns 1: with one listener
 *    the index is out of range and the kernel falls back to its hash,
 *    which has one choice.  So as soon as the new instance listens, the
 *    old one gets no new connection, and its SIGTERM finds at most the
 *    ones that were already queued.
 *
 * 3. The old instance drains without refusing: when SIGTERM finds
 *    another listener on its address (handover_successor, from
 *    /proc/net/tcp), sessions that still arrive are served, not
 *    tempfailed, and the process exits only once its listener's queue
 *    is empty, every connection libmilter accepted has begun its session
 *    (accept() is wrapped here too, to count them; one still silent 2 s
 *    after the last accept is taken for a port probe) and every session
 *    has ended.  Closing a listener resets the connections queued in it;
 *    with nothing queued and nothing routed to it, nothing is reset.
 *
 * A unix socket cannot be shared, but its path can be replaced at once:
 * while handover_binding is set, bind() binds it at PATH.PID.new,
 * listen() renames that over PATH once it listens (rename(2) replaces
 * the running instance's socket atomically: a connect() finds one or
 * the other), and unlink() does nothing, so that libmilter's removal of
 * the socket in its way does not leave a moment without one.  The old
 * instance, at SIGTERM, finds its path naming another socket: its
 * successor (main.c).
 */
#define _GNU_SOURCE
#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "handover.h"

#ifndef SO_ATTACH_REUSEPORT_CBPF
#define SO_ATTACH_REUSEPORT_CBPF	51
#endif

static atomic_bool	 handover_binding;
static atomic_ulong	 handover_accepted;
static atomic_ulong	 handover_begun;
/* CLOCK_MONOTONIC milliseconds of the last accept */
static atomic_llong	 handover_last_accept;

/* A connection accepted this recently may not have begun its session
 * yet; one accepted earlier that has not is a port probe, or an MTA
 * that left before its first command. */
#define HANDOVER_BEGIN_MS	2000

static long long
now_ms(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef int	 bind_fn(int, const struct sockaddr *, socklen_t);
typedef int	 accept_fn(int, struct sockaddr *, socklen_t *);
typedef int	 listen_fn(int, int);
typedef int	 unlink_fn(const char *);

/* A unix socket being opened: bound at tmp, renamed to path once it
 * listens (main thread, within handover_binding only). */
static struct {
	int	 fd;
	char	 path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char	 tmp[sizeof(((struct sockaddr_un *)0)->sun_path)];
	/* What socket_group and socket_mode ask for (-1: nothing). */
	long	 gid;
	int	 mode;
} hunix = { .fd = -1, .gid = -1, .mode = -1 };

void
handover_unix_perms(long gid, int mode)
{
	hunix.gid = gid;
	hunix.mode = mode;
}

static int
unlink_real(const char *path)
{
	static unlink_fn	*real;

	if (real == NULL)
		real = (unlink_fn *)dlsym(RTLD_NEXT, "unlink");
	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	return real(path);
}

static int	bind_unix(bind_fn *, int, const struct sockaddr *, socklen_t);

int
bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	static bind_fn	*real;
	int		 one = 1;

	if (real == NULL)
		real = (bind_fn *)dlsym(RTLD_NEXT, "bind");
	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	if (atomic_load(&handover_binding) && sa != NULL &&
	    (sa->sa_family == AF_INET || sa->sa_family == AF_INET6))
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one,
		    sizeof one);
	if (atomic_load(&handover_binding) && sa != NULL &&
	    sa->sa_family == AF_UNIX && len <= sizeof(struct sockaddr_un))
		return bind_unix(real, fd, sa, len);
	return real(fd, sa, len);
}

/*
 * bind_unix - bind a unix listening socket next to its path, so that the
 * path goes on naming a listening socket (the old instance's) until the
 * new one listens: listen() renames it into place.
 */
static int
bind_unix(bind_fn *real, int fd, const struct sockaddr *sa, socklen_t len)
{
	struct sockaddr_un	 un;
	int			 n;

	memset(&un, 0, sizeof un);
	memcpy(&un, sa, len);
	if (un.sun_path[0] == '\0')
		return real(fd, sa, len);
	un.sun_path[sizeof un.sun_path - 1] = '\0';
	n = snprintf(hunix.tmp, sizeof hunix.tmp, "%s.%ld.new", un.sun_path,
	    (long)getpid());
	if (n < 0 || (size_t)n >= sizeof hunix.tmp)
		return real(fd, sa, len);
	snprintf(hunix.path, sizeof hunix.path, "%s", un.sun_path);
	snprintf(un.sun_path, sizeof un.sun_path, "%s", hunix.tmp);
	(void)unlink_real(hunix.tmp);
	if (real(fd, (struct sockaddr *)&un, sizeof un) != 0)
		return -1;
	hunix.fd = fd;
	return 0;
}

int
listen(int fd, int backlog)
{
	static listen_fn	*real;
	int			 saved;

	if (real == NULL)
		real = (listen_fn *)dlsym(RTLD_NEXT, "listen");
	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	if (real(fd, backlog) != 0)
		return -1;
	if (atomic_load(&handover_binding) && fd == hunix.fd) {
		hunix.fd = -1;
		/* Its owner and mode before it has its name: a client that
		 * connects at once (Postfix runs as another user) must not
		 * meet the private mode it was created with.  A failure is
		 * left to the caller's own chown/chmod, which says so. */
		if (hunix.gid >= 0)
			(void)!chown(hunix.tmp, (uid_t)-1, (gid_t)hunix.gid);
		if (hunix.mode >= 0)
			(void)chmod(hunix.tmp, (mode_t)hunix.mode);
		if (rename(hunix.tmp, hunix.path) != 0) {
			saved = errno;
			(void)unlink_real(hunix.tmp);
			errno = saved;
			return -1;
		}
	}
	return 0;
}

/*
 * unlink - libmilter removes a socket in the way before it binds its
 * own; while it opens ours that is the running instance's socket, which
 * the rename in listen() replaces instead.
 */
int
unlink(const char *path)
{
	if (atomic_load(&handover_binding))
		return 0;
	return unlink_real(path);
}

int
accept(int fd, struct sockaddr *sa, socklen_t *len)
{
	static accept_fn	*real;
	int			 rc;

	if (real == NULL)
		real = (accept_fn *)dlsym(RTLD_NEXT, "accept");
	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	if ((rc = real(fd, sa, len)) >= 0) {
		atomic_store(&handover_last_accept, now_ms());
		atomic_fetch_add(&handover_accepted, 1);
	}
	return rc;
}

int
handover_listener_fd(void)
{
	struct sockaddr_storage	 ss;
	socklen_t		 len;
	int			 v, fd;

	for (fd = 0; fd < 1024; fd++) {
		len = sizeof ss;
		if (getsockname(fd, (struct sockaddr *)&ss, &len) == -1 ||
		    (ss.ss_family != AF_INET && ss.ss_family != AF_INET6 &&
		    ss.ss_family != AF_UNIX))
			continue;
		len = sizeof v;
		if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) == -1 ||
		    v != SOCK_STREAM)
			continue;
		len = sizeof v;
		if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 &&
		    v != 0)
			return fd;
	}
	return -1;
}

void
handover_binding_set(bool on)
{
	atomic_store(&handover_binding, on);
}

int
handover_steer(int fd)
{
	struct sock_filter	 code[] = {
		BPF_STMT(BPF_RET | BPF_K, 1),
	};
	struct sock_fprog	 prog = { .len = 1, .filter = code };

	if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog,
	    sizeof prog) != 0)
		return -errno;
	return 0;
}

/* local_hex - the local address as /proc/net/tcp{,6} prints it */
static bool
local_hex(const struct sockaddr_storage *ss, char *buf, size_t size)
{
	const struct sockaddr_in	*in = (const void *)ss;
	const struct sockaddr_in6	*in6 = (const void *)ss;
	uint32_t			 w[4];

	if (ss->ss_family == AF_INET) {
		snprintf(buf, size, "%08X:%04X", in->sin_addr.s_addr,
		    ntohs(in->sin_port));
		return true;
	}
	if (ss->ss_family == AF_INET6) {
		memcpy(w, &in6->sin6_addr, sizeof w);
		snprintf(buf, size, "%08X%08X%08X%08X:%04X", w[0], w[1], w[2],
		    w[3], ntohs(in6->sin6_port));
		return true;
	}
	return false;
}

int
handover_listeners(const struct sockaddr_storage *ss)
{
	char	 want[64], line[512], local[64], st[8];
	FILE	*f;
	int	 n = 0;

	if (!local_hex(ss, want, sizeof want))
		return -1;
	f = fopen(ss->ss_family == AF_INET ? "/proc/net/tcp" :
	    "/proc/net/tcp6", "re");
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof line, f) != NULL)
		if (sscanf(line, " %*s %63s %*s %7s", local, st) == 2 &&
		    strcmp(st, "0A") == 0 && strcmp(local, want) == 0)
			n++;
	fclose(f);
	return n;
}

bool
handover_successor(const struct sockaddr_storage *ss)
{
	return handover_listeners(ss) >= 2;
}

void
handover_begun_one(void)
{
	atomic_fetch_add(&handover_begun, 1);
}

bool
handover_queued(int fd)
{
	struct pollfd	 p = { .fd = fd, .events = POLLIN };

	return fd >= 0 && poll(&p, 1, 0) > 0 && (p.revents & POLLIN) != 0;
}

bool
handover_pending(int fd)
{
	if (handover_queued(fd))
		return true;
	return atomic_load(&handover_accepted) > atomic_load(&handover_begun) &&
	    now_ms() - atomic_load(&handover_last_accept) < HANDOVER_BEGIN_MS;
}

/*
 * handover_close - stop listening on fd at once without resetting a
 * connection that already reached it.
 *
 * Behind a load balancer (miltermux(8), SCALING OUT), an instance told
 * to stop must refuse new connections at the TCP level, so that the
 * balancer retries them on another instance instead of handing the MTA
 * a tempfail; an open listener that only tempfails them would have it
 * wait for its next health check.  Closing a listener resets the
 * connections in its queue, though, and a balancer that saw one
 * connected cannot retry it.  So, in turn:
 *
 * 1. An inet listener gets a socket filter that drops every packet: a
 *    new SYN is not answered (the client sends it again after a second,
 *    and by then finds the port closed), nor is the last ACK of a
 *    handshake begun before.
 * 2. libmilter accepts what is queued (up to wait_s).
 * 3. A placeholder takes over fd's number: a listening unix socket with
 *    an abstract name nobody knows, non-blocking.  libmilter's accept
 *    loop polls it (and its 5 s timeout) until the process exits, with
 *    nothing to accept, and never sees an error.
 * 4. The real listener is shut down: the port refuses from now on, even
 *    while libmilter's poll(2) still holds a reference to it.
 *
 * For a unix listener the caller has unlinked its path first; steps 2
 * to 4 are the same.  Returns 0, or a negative errno with fd untouched
 * (but maybe filtered) when no placeholder could be made.
 */
int
handover_close(int fd, double wait_s)
{
	struct sock_filter	 drop[] = {
		BPF_STMT(BPF_RET | BPF_K, 0),
	};
	struct sock_fprog	 prog = { .len = 1, .filter = drop };
	struct sockaddr_storage	 ss;
	sa_family_t		 family = AF_UNIX;
	socklen_t		 len = sizeof ss;
	long long		 deadline = now_ms() + (long long)(wait_s * 1000);
	int			 ph, old, err;

	if (fd < 0)
		return -EBADF;
	if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
	    ss.ss_family != AF_UNIX)
		(void)setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog,
		    sizeof prog);
	while (handover_queued(fd) && now_ms() < deadline)
		(void)poll(NULL, 0, 2);
	/* Bound to an address of family alone: Linux picks an abstract
	 * name (autobind). */
	if ((ph = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0)) == -1)
		return -errno;
	if (bind(ph, (struct sockaddr *)&family, sizeof family) == -1 ||
	    listen(ph, 1) == -1 ||
	    (old = fcntl(fd, F_DUPFD_CLOEXEC, 0)) == -1) {
		err = errno;
		(void)close(ph);
		return -err;
	}
	if (dup3(ph, fd, O_CLOEXEC) == -1) {
		err = errno;
		(void)close(ph);
		(void)close(old);
		return -err;
	}
	(void)close(ph);
	(void)shutdown(old, SHUT_RDWR);
	(void)close(old);
	return 0;
}
