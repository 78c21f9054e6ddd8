"""The watchdog worker: receives leases from election and reports them.

It imports little and makes no network or database calls.  Until the
device driver lands it does not arm anything: it reports the lease it
would pet under, so /patroni shows the watchdog honestly as unarmed.
"""

from __future__ import annotations

import logging
import time

from hasup import ipc
from hasup.workers.base import WorkerContext, pump, setup_worker

log = logging.getLogger("hasup.watchdog")

REPORT_INTERVAL = 10.0  # unchanged state is re-sent this often; changes go out at once


def run(ctx: WorkerContext) -> None:
    setup_worker(ctx)
    mode = ctx.config.watchdog.mode
    if mode != "off":
        log.warning("watchdog.mode is %s but this hasup version does not drive a watchdog device yet; "
                    "running unarmed", mode)
    lease: ipc.Lease | None = None
    reported: ipc.WatchdogState | None = None
    extra = [ctx.lease_sock] if ctx.lease_sock is not None else []
    next_report = 0.0
    while True:
        try:
            if ctx.orphaned():
                raise ipc.PeerClosed("supervisor")
            pump(ctx, max(0.0, next_report - time.monotonic()), extra=extra)
        except ipc.PeerClosed:
            # Exit without a magic close: an armed device must fire if nobody re-arms it.
            return
        if ctx.lease_sock is not None:
            for env in ipc.receive_datagrams(ctx.lease_sock):
                if isinstance(env.message, ipc.Lease):
                    lease = env.message
        state = ipc.WatchdogState(mode=mode, armed=False, timeout=None, last_pet=None,
                                  lease_valid_until=lease.valid_until if lease else None,
                                  failed=False, reason="no watchdog driver in this version")
        if state != reported or time.monotonic() >= next_report:
            ctx.channel.send_now(state)
            reported = state
            next_report = time.monotonic() + REPORT_INTERVAL
