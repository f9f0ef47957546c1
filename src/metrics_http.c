/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * metrics_http - the HTTP listener of metrics.h, on libmicrohttpd with
 * its own polling thread: GET /metrics, /healthz and /status.
 *
 * The socket is bound before the daemon forks (so that a port in use is
 * an error at start), the thread started after it.  Requests are
 * answered from the counters alone: no lock a session holds is taken,
 * so a stuck session cannot stall a scrape.
 */
/* SO_REUSEPORT is Linux's (and the BSDs'), not POSIX's. */
#define _DEFAULT_SOURCE
#include <sys/types.h>
#include <sys/socket.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <microhttpd.h>

#include "log.h"
#include "metrics.h"
#include "metrics_http.h"
#include "xalloc.h"

#if MHD_VERSION < 0x00097002
typedef int mhd_result;
#else
typedef enum MHD_Result mhd_result;
#endif

static int		 http_fd = -1;
static struct MHD_Daemon *http_daemon;

static mhd_result
reply(struct MHD_Connection *conn, unsigned status, const char *type,
    char *body)
{
	struct MHD_Response	*r;
	mhd_result		 rc;

	r = MHD_create_response_from_buffer(strlen(body), body,
	    MHD_RESPMEM_MUST_FREE);
	if (r == NULL) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	rc = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return rc;
}

static mhd_result
handle(void *cls, struct MHD_Connection *conn, const char *url,
    const char *method, const char *version, const char *upload,
    size_t *upload_len, void **state)
{
	static int	 seen;
	const char	*why;
	bool		 ok;

	(void)cls;
	(void)version;
	(void)upload;
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain",
		    xstrdup("only GET and HEAD\n"));
	/* First call: headers only; answer on the second. */
	if (*state == NULL) {
		*state = &seen;
		return MHD_YES;
	}
	if (*upload_len != 0)
		return MHD_NO;
	if (strcmp(url, "/metrics") == 0)
		return reply(conn, MHD_HTTP_OK,
		    "text/plain; version=0.0.4; charset=utf-8",
		    metrics_render());
	if (strcmp(url, "/healthz") == 0) {
		ok = metrics_healthy(&why);
		return reply(conn, ok ? MHD_HTTP_OK :
		    MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain",
		    xstrdup(ok ? "ok\n" : strcmp(why, "draining") == 0 ?
		    "draining\n" : "every upstream is down\n"));
	}
	if (strcmp(url, "/status") == 0)
		return reply(conn, MHD_HTTP_OK, "application/json",
		    metrics_status());
	return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain",
	    xstrdup("not found: try /metrics, /healthz or /status\n"));
}

int
metrics_http_open(const struct conf *c)
{
	const struct sockaddr	*sa = (const void *)&c->metrics_addr.sa;
	int			 fd, one = 1, err;

	if (c->metrics_listen == NULL)
		return 0;
	if ((fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return -errno;
	/* SO_REUSEPORT: a new instance started while the old one drains
	 * (a restart) can bind the same port; both answer until the old
	 * one exits, its /healthz saying 503. */
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
	if (bind(fd, sa, c->metrics_addr.salen) != 0 ||
	    listen(fd, 16) != 0) {
		err = errno;
		close(fd);
		return -err;
	}
	http_fd = fd;
	return 0;
}

int
metrics_http_start(void)
{
	if (http_fd < 0)
		return 0;
	http_daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD |
	    MHD_USE_AUTO,
	    0, NULL, NULL, handle, NULL,
	    MHD_OPTION_LISTEN_SOCKET, (MHD_socket)http_fd,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned)32,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
	    MHD_OPTION_END);
	if (http_daemon == NULL)
		return -EIO;
	return 0;
}

void
metrics_http_stop(void)
{
	if (http_daemon != NULL)
		MHD_stop_daemon(http_daemon);
	http_daemon = NULL;
}
