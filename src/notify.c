/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * notify - systemd's readiness protocol (notify.h).
 *
 * A message is one datagram of newline-separated assignments sent to
 * the unix socket in $NOTIFY_SOCKET; a leading '@' names an abstract
 * socket.  The variable is read at each call, not cached, so that a
 * successor started by SIGUSR2 (upgrade.c) inherits it with the rest of
 * the environment.
 *
 * Concurrency: called from the main thread only; the disowned flag is
 * atomic all the same, as it costs nothing.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "notify.h"

static atomic_bool	disowned;

bool
notify_send(const char *fmt, ...)
{
	struct sockaddr_un	 sun;
	const char		*path = getenv("NOTIFY_SOCKET");
	char			 msg[512];
	socklen_t		 len;
	va_list			 ap;
	size_t			 n;
	int			 fd, rc;

	if (path == NULL || path[0] == '\0' || atomic_load(&disowned))
		return false;
	n = strlen(path);
	if ((path[0] != '/' && path[0] != '@') || n >= sizeof sun.sun_path) {
		log_warnx("NOTIFY_SOCKET \"%s\": not a unix socket path", path);
		return false;
	}
	va_start(ap, fmt);
	rc = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (rc < 0 || (size_t)rc >= sizeof msg)
		return false;
	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, n);
	if (path[0] == '@')
		sun.sun_path[0] = '\0';	/* abstract: no terminating NUL */
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
	    (path[0] == '@' ? 0 : 1));
	if ((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) == -1) {
		log_warn("NOTIFY_SOCKET: socket");
		return false;
	}
	if (sendto(fd, msg, (size_t)rc, MSG_NOSIGNAL,
	    (struct sockaddr *)&sun, len) != rc) {
		log_warn("NOTIFY_SOCKET %s: send", path);
		close(fd);
		return false;
	}
	close(fd);
	return true;
}

void
notify_disown(void)
{
	atomic_store(&disowned, true);
}
