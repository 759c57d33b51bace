"""Ping systemd's watchdog only while the mount really serves requests.

"Hung" for a tool means: a program's open(), stat() or write() in the work directory
does not come back. A ping task that merely runs on the trio loop would catch a
stopped or busy loop, but not a FUSE side that is wedged while the loop lives (every
request worker stuck on a hung disk or a lock, the kernel queue not drained). So each
ping is earned by a request that travels the same way a program's does: a statfs()
of the mount point from a worker thread goes through the kernel to this daemon's FUSE
loop and back (the kernel never caches statfs, so it reaches us every time). Only when
it returns in time is WATCHDOG=1 sent; if it does not, the pings stop and systemd kills
and restarts the daemon (the fail-open watchdog meanwhile shows the real directory).

Interval: half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises, and only in the
process systemd named in $WATCHDOG_PID (the snapshot view, a child, inherits the
variables but must not ping for the service).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

from dpmsfs import sdnotify

log = logging.getLogger(__name__)


def watchdog_interval() -> float | None:
    """Seconds between pings, or None when systemd does not watch this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


async def ping_while_serving(mount_point: Path, interval: float) -> None:
    """Forever: probe the mount, ping systemd if the probe came back within `interval`."""
    log.info("systemd watchdog: pinging every %.1f s while %s answers", interval, mount_point)
    while True:
        started = trio.current_time()
        if await _mount_answers(mount_point, interval):
            sdnotify.notify("WATCHDOG=1")
        await trio.sleep_until(started + interval)


async def _mount_answers(mount_point: Path, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        try:
            # abandon_on_cancel: a probe stuck in the kernel is left behind (it ends when
            # the process does); the next one starts afresh. No ping meanwhile.
            await trio.to_thread.run_sync(os.statvfs, mount_point, abandon_on_cancel=True)
        except OSError as exc:
            log.warning("systemd watchdog: %s does not answer (%s): no ping", mount_point, exc)
            return False
        return True
    log.warning("systemd watchdog: %s did not answer in %.1f s: no ping", mount_point, timeout)
    return False
