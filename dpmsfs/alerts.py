"""Alerts on change of state: raised, cleared, severity changed -> a command and/or a webhook.

The daemon's alert service (`AlertService.run`, a trio task) evaluates the status
report every `evaluate_interval_seconds` (dpmsfs/health.py) and compares it with the
previous evaluation (`AlertTracker`): only a change of an alert's state is delivered,
so a lasting condition fires once. Delivery (`Notifier`) runs in a worker thread, never
on the FUSE loop, and never touches the I/O path.

Hooks:
- `command`: run through `/bin/sh -c` with the event in environment variables
  (DPMSFS_ALERT_NAME, _SEVERITY, _STATE, _PREVIOUS_SEVERITY, _MESSAGE, _SINCE,
  _WORKDIR, _TOOL_ID, _HOST) and as JSON on stdin; a non-zero exit or a timeout is a
  failed delivery.
- `webhook`: an HTTP POST of the same JSON (Content-Type application/json); any 2xx is
  delivered. Posted with urllib.request from the standard library, not `requests`: one
  small POST needs no session or adapters, and the project's rule keeps `requests` in
  remote/ (the server client), which the alerts must not depend on.
Each event is tried `webhook_attempts` times with exponential backoff; an event still
undelivered stays queued (at most MAX_QUEUED, oldest dropped and counted) and is tried
again at the next evaluations, and survives a daemon restart (saved with the active set,
`STATE_FILE`). While anything is undelivered, `delivery_state()` says `failing`, which the
health rule `alert_delivery_failing` turns into an alert of its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpmsfs.health import Alert, AlertSettings, Health, evaluate
from dpmsfs.jsonfile import write_json

log = logging.getLogger(__name__)

MAX_QUEUED = 1000
PAYLOAD_VERSION = 1


@dataclass(frozen=True)
class AlertEvent:
    """A change of one alert's state. `state`: raised | cleared | changed."""

    alert: Alert
    state: str
    previous_severity: str
    at_ns: int

    def payload(self, context: dict[str, str]) -> dict[str, Any]:
        return {
            "version": PAYLOAD_VERSION,
            "name": self.alert.name,
            "severity": self.alert.severity,
            "state": self.state,
            "previous_severity": self.previous_severity,
            "message": self.alert.message,
            "since_ns": self.alert.since,
            "at_ns": self.at_ns,
            **context,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"alert": self.alert.to_dict(), "state": self.state,
                "previous_severity": self.previous_severity, "at_ns": self.at_ns}  # fmt: skip

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> AlertEvent:
        return cls(_alert_of(doc["alert"]), str(doc["state"]), str(doc["previous_severity"]),
                   int(doc["at_ns"]))  # fmt: skip


def _alert_of(doc: dict[str, Any]) -> Alert:
    return Alert(str(doc["name"]), str(doc["severity"]), str(doc["message"]), int(doc["since"]))


STATE_FILE = "alerts-state.json"
"""Beside the store: JSON ``{"version": 1, "active": [Alert.to_dict(), ...], "undelivered":
[AlertEvent.to_dict(), ...]}``: the alerts active after the last evaluation whose events
were handed to delivery, and the events the hooks have not taken yet, oldest first. Read
at start so a restarted daemon with the same alert still active does not fire it again
(one that cleared while it was down fires "cleared"), and delivers what was still queued
before anything new. ``undelivered`` may be absent (files written before it existed)."""


class AlertTracker:
    """The alerts active after the last evaluation; `update` returns what changed.

    With ``state_path``, the active set and the undelivered events survive a daemon
    restart: `load` at start, `save` (temp, fsync, rename) after the events of an update
    went to delivery, so a crash between the two fires an event again rather than never
    (at least once).
    """

    def __init__(self, state_path: str | None = None) -> None:
        self.active: dict[str, Alert] = {}
        self.state_path = state_path
        self._saved: tuple[dict[str, Alert], list[AlertEvent]] | None = None

    def load(self) -> list[AlertEvent]:
        """Read the saved state; returns the events that were still undelivered."""
        if self.state_path is None:
            return []
        undelivered: list[AlertEvent] = []
        try:
            with open(self.state_path, encoding="utf-8") as f:
                doc = json.load(f)
            self.active = {a.name: a for a in map(_alert_of, doc.get("active", []))}
            undelivered = [AlertEvent.from_dict(e) for e in doc.get("undelivered", [])]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable alert state %s: %s", self.state_path, exc)
            self.active, undelivered = {}, []
        self._saved = (dict(self.active), list(undelivered))
        return undelivered

    def save(self, undelivered: list[AlertEvent] | None = None) -> None:
        undelivered = list(undelivered or [])
        if self.state_path is None or self._saved == (self.active, undelivered):
            return
        doc = {
            "version": 1,
            "active": [a.to_dict() for a in self.active.values()],
            "undelivered": [e.to_dict() for e in undelivered],
        }
        try:
            write_json(Path(self.state_path), doc)
        except OSError as exc:  # a full disk: alerts go on, a restart may fire again
            log.warning("cannot save alert state %s: %s", self.state_path, exc)
            return
        self._saved = (dict(self.active), undelivered)

    def update(self, result: Health, now_ns: int) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        current: dict[str, Alert] = {}
        for alert in result.alerts:
            before = self.active.get(alert.name)
            since = alert.since or (before.since if before else now_ns)
            stamped = Alert(alert.name, alert.severity, alert.message, since)
            current[alert.name] = stamped
            if before is None:
                events.append(AlertEvent(stamped, "raised", "", now_ns))
            elif before.severity != alert.severity:
                events.append(AlertEvent(stamped, "changed", before.severity, now_ns))
        for name, before in self.active.items():
            if name not in current:
                events.append(AlertEvent(before, "cleared", before.severity, now_ns))
        self.active = current
        return events


@dataclass
class _Delivery:
    delivered: int = 0
    errors: int = 0
    dropped: int = 0
    last_error: str = ""
    last_error_ns: int = 0
    failing_since_ns: int = 0
    last_delivered_ns: int = 0


@dataclass
class Notifier:
    """Delivers events to the configured hooks; thread-safe state for status."""

    settings: AlertSettings
    context: dict[str, str]
    sleep: Callable[[float], None] = time.sleep
    _queue: list[AlertEvent] = field(default_factory=list)
    _state: _Delivery = field(default_factory=_Delivery)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def configured(self) -> bool:
        return bool(self.settings.command or self.settings.webhook)

    def requeue(self, events: list[AlertEvent]) -> None:
        """Put events a previous daemon left undelivered first in the queue."""
        with self._lock:
            self._queue[:0] = events

    def undelivered(self) -> list[AlertEvent]:
        with self._lock:
            return list(self._queue)

    def deliver(self, events: list[AlertEvent]) -> None:
        """Deliver the queued events, then `events`, in order (blocking: a worker thread)."""
        if not self.configured:
            return
        with self._lock:
            self._queue.extend(events)
            if len(self._queue) > MAX_QUEUED:
                self._state.dropped += len(self._queue) - MAX_QUEUED
                del self._queue[: len(self._queue) - MAX_QUEUED]
            todo = list(self._queue)
        for event in todo:
            error = self._deliver_one(event)
            with self._lock:
                now = time.time_ns()
                if error:
                    self._state.errors += 1
                    self._state.last_error = error
                    self._state.last_error_ns = now
                    self._state.failing_since_ns = self._state.failing_since_ns or now
                    log.warning("alert %s (%s) not delivered: %s",
                                event.alert.name, event.state, error)  # fmt: skip
                    return  # keep the order: the rest waits for the next round
                self._queue.remove(event)
                self._state.delivered += 1
                self._state.last_delivered_ns = now
                if not self._queue:
                    self._state.failing_since_ns = 0

    def _deliver_one(self, event: AlertEvent) -> str:
        """'' if every configured hook took the event, else the reason."""
        payload = event.payload(self.context)
        errors = []
        if self.settings.command:
            error = run_command(self.settings.command, payload,
                                self.settings.command_timeout_seconds)  # fmt: skip
            if error:
                errors.append(f"command: {error}")
        if self.settings.webhook:
            error = post_with_retries(self.settings, payload, self.sleep)
            if error:
                errors.append(f"webhook: {error}")
        return "; ".join(errors)

    def state(self) -> dict[str, Any]:
        """The `alert_delivery` section of the status report."""
        with self._lock:
            s = self._state
            return {
                "configured": self.configured,
                "failing": bool(self._queue) and bool(s.last_error),
                "queued": len(self._queue),
                "delivered": s.delivered,
                "errors": s.errors,
                "dropped": s.dropped,
                "last_error": s.last_error,
                "last_error_ns": s.last_error_ns,
                "failing_since_ns": s.failing_since_ns,
                "last_delivered_ns": s.last_delivered_ns,
            }


def hook_environment(payload: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in payload.items():
        env[f"DPMSFS_ALERT_{key.upper()}"] = str(value)
    # The documented short names (since_ns is also DPMSFS_ALERT_SINCE, in seconds).
    env["DPMSFS_ALERT_SINCE"] = str(int(payload.get("since_ns", 0)) // 1_000_000_000)
    return env


def run_command(command: str, payload: dict[str, Any], timeout: float) -> str:
    """Run the hook in its own process group, so a timeout kills what it started too
    (a shell's children would otherwise keep the pipes open and the wait going)."""
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=hook_environment(payload),
            start_new_session=True,
        )
    except OSError as exc:
        return str(exc)
    try:
        _, stderr = proc.communicate(json.dumps(payload).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"timed out after {timeout:g} s"
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()
        return f"exit code {proc.returncode}" + (f": {tail[-1]}" if tail else "")
    return ""


def post_json(url: str, payload: dict[str, Any], timeout: float) -> str:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "dpmsfs-alerts"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"cannot post to {url}: {reason}"
    return "" if 200 <= status < 300 else f"HTTP {status}"


def post_with_retries(
    settings: AlertSettings, payload: dict[str, Any], sleep: Callable[[float], None]
) -> str:
    delay = settings.webhook_backoff_seconds
    error = ""
    for attempt in range(settings.webhook_attempts):
        if attempt:
            sleep(delay)
            delay *= 2
        error = post_json(settings.webhook, payload, settings.webhook_timeout_seconds)
        if not error:
            return ""
        log.info("webhook attempt %d failed: %s", attempt + 1, error)
    return error


class AlertService:
    """The daemon's trio task: evaluate, track, deliver, every interval."""

    def __init__(
        self,
        settings: AlertSettings,
        context: dict[str, str],
        report: Callable[[], Awaitable[dict[str, Any]]],
        state_path: str | None = None,
        inputs: Callable[[], object] | None = None,
    ) -> None:
        """``inputs()``: a cheap signature of what the report reads that can change
        between rebuilds (e.g. the mtimes of recorded results); a change rebuilds it."""
        self.settings = settings
        self.report = report
        self.inputs = inputs
        self._cached: tuple[float, object, dict[str, Any]] | None = None
        self.rebuilds = 0
        self.tracker = AlertTracker(state_path)
        self.notifier = Notifier(settings, context)
        left = self.tracker.load()
        if left:
            log.info("%d alert events left undelivered by the last daemon: delivering first",
                     len(left))  # fmt: skip
            self.notifier.requeue(left)
        self.evaluations = 0

    def section(self) -> dict[str, Any]:
        """The `alerts` section of the status report."""
        return {"active": [a.to_dict() for a in self.tracker.active.values()],
                "evaluations": self.evaluations, "report_rebuilds": self.rebuilds}  # fmt: skip

    async def evaluate_once(self) -> list[AlertEvent]:
        import trio

        report = await self._report()
        now = time.time_ns()
        events = self.tracker.update(evaluate(report, self.settings, now), now)
        self.evaluations += 1
        for event in events:
            log.warning("alert %s %s (%s): %s", event.alert.name, event.state,
                        event.alert.severity, event.alert.message)  # fmt: skip
        if events or self.notifier.state()["queued"]:
            # Abandoned on cancel: a stop of the daemon must not wait for a webhook's
            # retries (the thread finishes or dies with the process).
            await trio.to_thread.run_sync(self.notifier.deliver, events, abandon_on_cancel=True)
            undelivered = self.notifier.undelivered() if self.notifier.configured else []
            await trio.to_thread.run_sync(self.tracker.save, undelivered)
        return events

    async def _report(self) -> dict[str, Any]:
        """The report to evaluate: the cached one while it is younger than
        ``report_max_age_seconds`` and its inputs are unchanged (time-based rules still
        see the time of each evaluation)."""
        signature = self.inputs() if self.inputs is not None else None
        now = time.monotonic()
        cached = self._cached
        if (
            cached is not None
            and now - cached[0] < self.settings.report_max_age_seconds
            and cached[1] == signature
        ):
            return cached[2]
        report = await self.report()
        self._cached = (now, signature, report)
        self.rebuilds += 1
        return report

    async def run(self) -> None:
        import trio

        while True:
            try:
                await self.evaluate_once()
            except Exception:  # a broken report or hook must not take the mount down
                log.exception("alert evaluation failed")
            await trio.sleep(self.settings.evaluate_interval_seconds)
