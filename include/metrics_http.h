/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * metrics_http - serves metrics.h over HTTP (libmicrohttpd): GET
 * /metrics, /healthz, /status on the configuration's "metrics.listen".
 *
 * Concurrency: open, start and stop from the main thread, in that
 * order; requests are answered on libmicrohttpd's own thread.
 */
#ifndef METRICS_HTTP_H
#define METRICS_HTTP_H

#include "conf.h"

/* Binds c's metrics.listen (nothing when off).  0 or -errno. */
int	metrics_http_open(const struct conf *c);
/* Starts serving the bound socket on a thread.  0 or -EIO. */
int	metrics_http_start(void);
/* Stops the thread and closes the socket. */
void	metrics_http_stop(void);

#endif /* METRICS_HTTP_H */
