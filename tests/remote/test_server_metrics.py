"""Prometheus metrics of a real dpmsfs-server process, scraped over its metrics listener.

Counts go up per route template (never per raw path), per-tool bytes and objects match
what was uploaded, and the metrics listener answers nothing but /metrics.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from remote.frames import make_record
from remote.http_backend import HttpBackend
from remote.retry import NO_RETRY, Retrier
from tests.remote.serverproc import NS_A, NS_B, TOOL_A, TOOL_B, ServerProcess, write_tokens


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    server = ServerProcess(
        tmp_path / "data", write_tokens(tmp_path / "tokens.json"), ("--metrics", "127.0.0.1:0")
    ).start()
    ready = json.loads((tmp_path / "data.ready1").read_text())
    yield server, ready["metrics_url"]
    server.stop()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def requests_count(samples: dict[Any, float], endpoint: str, method: str, status: str) -> float:
    key = (
        "dpmsfs_server_requests_total",
        (("endpoint", endpoint), ("method", method), ("status", status)),
    )
    return samples.get(key, 0.0)


def test_counts_per_route_template_and_bytes_per_tool(
    metered: tuple[ServerProcess, str],
) -> None:
    server, metrics_url = metered
    before = scrape(metrics_url)
    assert requests_count(before, "<ns>/objects:upload", "POST", "200") == 0
    records_a = [make_record(secrets.token_bytes(1000 + i)) for i in range(3)]
    records_b = [make_record(secrets.token_bytes(5000))]
    with HttpBackend([server.url], NS_A, TOOL_A, retrier=Retrier(NO_RETRY)) as a:
        a.upload(records_a)
        for id, _, _ in records_a:
            a.load(id)
        a.put_ref("snapshot.one", b"{}")
        a.get_ref("snapshot.one")
    with HttpBackend([server.url], NS_B, TOOL_B, retrier=Retrier(NO_RETRY)) as b:
        b.upload(records_b)
    # a tool token on another tool's namespace: 403, still counted under the template
    resp = requests.get(
        f"{server.url}/v2/{NS_B}/refs/x", headers={"Authorization": f"Bearer {TOOL_A}"}, timeout=10
    )
    assert resp.status_code == 403
    requests.get(f"{server.url}/v2/no/such/path/here", timeout=10)

    after = scrape(metrics_url)
    assert requests_count(after, "<ns>/objects:upload", "POST", "200") == 2
    assert requests_count(after, "<ns>/objects/<id>", "GET", "200") == 3
    assert requests_count(after, "<ns>/refs/<name>", "PUT", "201") == 1
    assert requests_count(after, "<ns>/refs/<name>", "GET", "200") == 1
    assert requests_count(after, "<ns>/refs/<name>", "GET", "403") == 1
    assert requests_count(after, "other", "GET", "401") == 1  # no token: 401 first
    # no label value ever carries a namespace, an id or a ref name
    endpoints = {dict(labels).get("endpoint") for (_, labels) in after if labels}
    assert not any(NS_A in e or "snapshot" in e for e in endpoints if e)
    assert all(records_a[0][0] not in e for e in endpoints if e)
    hist = after[
        (
            "dpmsfs_server_request_duration_seconds_count",
            (("endpoint", "<ns>/objects/<id>"), ("method", "GET")),
        )
    ]
    assert hist == 3
    frame_bytes_a = sum(len(f) for _, _, f in records_a)
    assert after[("dpmsfs_server_stored_bytes", (("tool", NS_A),))] == frame_bytes_a
    assert after[("dpmsfs_server_stored_bytes", (("tool", NS_B),))] == len(records_b[0][2])
    assert after[("dpmsfs_server_stored_objects", (("tool", NS_A),))] == 3
    assert after[("dpmsfs_server_stored_objects", (("tool", NS_B),))] == 1


def test_metrics_listener_serves_only_metrics_and_api_port_has_none(
    metered: tuple[ServerProcess, str],
) -> None:
    server, metrics_url = metered
    base = metrics_url.rsplit("/", 1)[0]
    assert requests.get(f"{base}/v2/health", timeout=10).status_code == 404
    assert requests.post(metrics_url, data=b"", timeout=10).status_code == 405
    # the API port does not answer /metrics (a token holder learns nothing more there)
    assert requests.get(f"{server.url}/metrics", timeout=10).status_code == 404
    assert requests.get(f"{server.url}/v2/health", timeout=10).status_code == 200


def test_metrics_listener_port_in_use_is_one_line_exit_4(tmp_path: Path) -> None:
    import socket
    import subprocess

    from tests.remote.serverproc import REPO, server_cmd

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run(
            server_cmd(
                "--data", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
                "--metrics", f"127.0.0.1:{port}",
            ),
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert proc.returncode == 4
    assert "cannot listen on 127.0.0.1:" in proc.stderr
    assert "Traceback" not in proc.stderr
