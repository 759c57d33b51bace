"""Alert delivery for real: a command writing to a file, a local HTTP receiver that fails
N times, state changes firing once, and a failing hook becoming visible."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio

from dpmsfs.alerts import AlertService, AlertTracker, Notifier
from dpmsfs.health import AlertSettings, Health, evaluate

CONTEXT = {"workdir": "/data/work", "tool_id": "tester-07", "host": "h"}


class Receiver:
    """A webhook receiver answering 500 to the first `fail` posts, then 204."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.attempts = 0
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail:
                    self.send_response(500)
                else:
                    assert self.headers["Content-Type"] == "application/json"
                    receiver.bodies.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def report(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"daemon": "running", "store_free_bytes": 50, "store_total_bytes": 100}
    base.update(changes)
    return base


DEFAULTS = AlertSettings()


def health_of(r: dict[str, Any], rules: AlertSettings = DEFAULTS) -> Health:
    return evaluate(r, rules, 0)


def test_tracker_fires_once_per_change_of_state() -> None:
    tracker = AlertTracker()
    assert tracker.update(health_of(report()), 1) == []
    [raised] = tracker.update(health_of(report(store_free_bytes=15)), 2)
    assert (raised.state, raised.alert.severity, raised.alert.since) == ("raised", "warning", 2)
    assert tracker.update(health_of(report(store_free_bytes=14)), 3) == []  # same state
    [changed] = tracker.update(health_of(report(store_free_bytes=5)), 4)
    assert (changed.state, changed.previous_severity, changed.alert.severity) == (
        "changed", "warning", "critical")  # fmt: skip
    assert changed.alert.since == 2  # the condition began with the warning
    [cleared] = tracker.update(health_of(report()), 5)
    assert (cleared.state, cleared.alert.name) == ("cleared", "store_free_space")
    assert tracker.update(health_of(report()), 6) == []


def test_command_gets_the_alert_in_env_and_json(tmp_path: Path) -> None:
    out = tmp_path / "alerts.log"
    command = (f'echo "$DPMSFS_ALERT_NAME $DPMSFS_ALERT_SEVERITY $DPMSFS_ALERT_STATE '
               f'$DPMSFS_ALERT_TOOL_ID" >> {out}; cat >> {out}; echo >> {out}')  # fmt: skip
    notifier = Notifier(AlertSettings(command=command), CONTEXT)
    tracker = AlertTracker()
    notifier.deliver(tracker.update(health_of(report(store_free_bytes=5)), 10))
    notifier.deliver(tracker.update(health_of(report(store_free_bytes=5)), 11))  # no change
    notifier.deliver(tracker.update(health_of(report()), 12))
    lines = out.read_text().splitlines()
    assert lines[0] == "store_free_space critical raised tester-07"
    payload = json.loads(lines[1])
    assert payload["name"] == "store_free_space" and payload["since_ns"] == 10
    assert payload["workdir"] == "/data/work" and payload["version"] == 1
    assert lines[2] == "store_free_space critical cleared tester-07"
    assert len(lines) == 4
    assert notifier.state()["delivered"] == 2 and not notifier.state()["failing"]


def test_command_failure_and_timeout_are_visible(tmp_path: Path) -> None:
    notifier = Notifier(AlertSettings(command="echo broken >&2; exit 3"), CONTEXT)
    notifier.deliver(AlertTracker().update(health_of(report(store_free_bytes=5)), 1))
    state = notifier.state()
    assert state["failing"] and state["queued"] == 1
    assert state["last_error"] == "command: exit code 3: broken"
    slow = Notifier(AlertSettings(command="sleep 30; true", command_timeout_seconds=0.2), CONTEXT)
    slow.deliver(AlertTracker().update(health_of(report(store_free_bytes=5)), 1))
    assert "timed out after 0.2 s" in slow.state()["last_error"]
    # ... and the failing hook is an alert of its own.
    alerts = health_of(report(alert_delivery=state)).alerts
    assert [a.name for a in alerts] == ["alert_delivery_failing"]


def test_webhook_retries_with_backoff_until_the_receiver_answers(receiver: Receiver) -> None:
    receiver.fail = 2
    sleeps: list[float] = []
    settings = AlertSettings(webhook=receiver.url, webhook_attempts=4, webhook_backoff_seconds=0.5)
    notifier = Notifier(settings, CONTEXT, sleep=sleeps.append)
    notifier.deliver(AlertTracker().update(health_of(report(store_free_bytes=5)), 1))
    assert receiver.attempts == 3 and sleeps == [0.5, 1.0]
    assert [b["state"] for b in receiver.bodies] == ["raised"]
    assert notifier.state()["delivered"] == 1 and not notifier.state()["failing"]


def test_undelivered_events_stay_queued_in_order(receiver: Receiver) -> None:
    receiver.fail = 5
    settings = AlertSettings(webhook=receiver.url, webhook_attempts=2)
    notifier = Notifier(settings, CONTEXT, sleep=lambda s: None)
    tracker = AlertTracker()
    notifier.deliver(tracker.update(health_of(report(store_free_bytes=5)), 1))
    notifier.deliver(tracker.update(health_of(report()), 2))
    state = notifier.state()
    assert state["failing"] and state["queued"] == 2 and state["last_error"] == "webhook: HTTP 500"
    assert state["failing_since_ns"] > 0
    notifier.deliver([])  # the receiver's 5th failure, then it works
    assert [b["state"] for b in receiver.bodies] == ["raised", "cleared"]
    state = notifier.state()
    assert not state["failing"] and state["queued"] == 0 and state["failing_since_ns"] == 0


def test_unreachable_webhook_is_a_clear_error() -> None:
    settings = AlertSettings(webhook="http://127.0.0.1:9/nothing", webhook_attempts=1)
    notifier = Notifier(settings, CONTEXT)
    notifier.deliver(AlertTracker().update(health_of(report(store_free_bytes=5)), 1))
    assert notifier.state()["last_error"].startswith("webhook: cannot post to http://127.0.0.1:9")


def test_service_evaluates_and_delivers_off_the_loop(tmp_path: Path, receiver: Receiver) -> None:
    out = tmp_path / "fired"
    settings = AlertSettings(
        command=f"cat >> {out}; echo >> {out}", webhook=receiver.url, report_max_age_seconds=0
    )  # a new report every evaluation
    reports = [report(), report(store_free_bytes=5), report(store_free_bytes=5), report()]

    async def next_report() -> dict[str, Any]:
        return reports.pop(0)

    service = AlertService(settings, CONTEXT, next_report)

    async def main() -> None:
        for _ in range(4):
            await service.evaluate_once()

    trio.run(main)
    fired = [json.loads(line)["state"] for line in out.read_text().splitlines()]
    assert fired == ["raised", "cleared"]
    assert [b["state"] for b in receiver.bodies] == ["raised", "cleared"]
    assert service.section()["active"] == [] and service.section()["evaluations"] == 4


def test_evaluations_reuse_the_report_until_old_or_its_inputs_change() -> None:
    """Evaluating every 0.2 s must not rebuild the whole status report every 0.2 s."""
    built: list[int] = []
    signature = [0]

    async def build() -> dict[str, Any]:
        built.append(1)
        return report(store_free_bytes=5) if len(built) > 1 else report()

    service = AlertService(AlertSettings(report_max_age_seconds=60), CONTEXT, build,
                           inputs=lambda: signature[0])  # fmt: skip

    async def main() -> None:
        for _ in range(5):
            assert await service.evaluate_once() == []  # the cached, healthy report
        signature[0] = 1  # e.g. a verify recorded its result: rebuilt at once
        events = await service.evaluate_once()
        assert [(e.alert.name, e.state) for e in events] == [("store_free_space", "raised")]

    trio.run(main)
    assert len(built) == 2 and service.section()["report_rebuilds"] == 2
    assert service.section()["evaluations"] == 6


def test_events_undelivered_at_a_restart_are_delivered_by_the_next_daemon(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The hook is down when an alert is raised and the daemon restarts before it is
    back: the next daemon (same state file) delivers the queued event first, once."""
    state = str(tmp_path / "alerts-state.json")
    settings = AlertSettings(webhook=receiver.url, webhook_attempts=1, report_max_age_seconds=0)
    receiver.fail = 10**6

    async def low_space() -> dict[str, Any]:
        return report(store_free_bytes=5)

    async def evaluate(service: AlertService, times: int) -> None:
        for _ in range(times):
            await service.evaluate_once()

    first = AlertService(settings, CONTEXT, low_space, state_path=state)
    trio.run(evaluate, first, 2)
    assert receiver.bodies == [] and first.notifier.state()["queued"] == 1

    receiver.fail = 0  # the hook is back; a new daemon, the alert still active
    second = AlertService(settings, CONTEXT, low_space, state_path=state)
    assert second.notifier.state()["queued"] == 1
    trio.run(evaluate, second, 3)
    assert [(b["name"], b["state"]) for b in receiver.bodies] == [("store_free_space", "raised")]
    assert second.notifier.state()["queued"] == 0

    third = AlertService(settings, CONTEXT, low_space, state_path=state)  # nothing left over
    trio.run(evaluate, third, 2)
    assert len(receiver.bodies) == 1 and third.notifier.state()["queued"] == 0
