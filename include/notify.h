/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * notify - tell systemd (Type=notify) how the service is doing, over
 * the datagram socket named by $NOTIFY_SOCKET (sd_notify(3)'s protocol,
 * spoken here so that miltermux needs no libsystemd).  Without that
 * variable every call does nothing.
 */
#ifndef MILTERMUX_NOTIFY_H
#define MILTERMUX_NOTIFY_H

#include <stdbool.h>

/* Send "KEY=VALUE\n..." lines; false when it could not be sent. */
bool	notify_send(const char *fmt, ...)
	    __attribute__((format(printf, 1, 2)));
/* From now on send nothing: a successor is the service's main process,
 * and a STOPPING=1 from this one would stop the unit. */
void	notify_disown(void);

#endif
