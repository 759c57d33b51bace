"""Tool reports (`PUT /v2/<ns>/report`) and the fleet page, against a real server process.

The page test renders in headless Chromium and checks the screenshot's pixels for the chart
and alert colours, so a page that only looks right as HTML text does not pass.
"""

from __future__ import annotations

import http.client
import json
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from remote import fleet
from remote.hashing import header_value
from tests.remote.serverproc import ADMIN, NS_A, NS_B, REPLICATE, TOOL_A, ServerProcess, key_of

NOW_NS = 1_780_000_000 * 10**9


def call(
    url: str,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        all_headers = {"Content-Length": str(len(body)), **(headers or {})}
        conn.request(method, path, body=body, headers=all_headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def report(**extra: object) -> dict[str, object]:
    doc: dict[str, object] = {"time_utc_ns": NOW_NS, "alerts": [], "sync_lag_seconds": 12.5}
    doc.update(extra)
    return doc


def put_report(url: str, ns: str, token: str, doc: object) -> tuple[int, bytes]:
    raw = json.dumps(doc).encode()
    status, _, body = call(url, "PUT", f"/v2/{ns}/report", raw, bearer(token))
    return status, body


# -- validation (pure) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "time_utc_ns"),
        (json.dumps(report(colour="red")).encode(), "unknown field"),
        (json.dumps(report(time_utc_ns=-1)).encode(), "time_utc_ns"),
        (json.dumps(report(time_utc_ns=True)).encode(), "time_utc_ns"),
        (json.dumps(report(sync_lag_seconds="soon")).encode(), "sync_lag_seconds"),
        (json.dumps(report(alerts="many")).encode(), "alerts"),
        (json.dumps(report(alerts=[{"name": "x", "severity": "meh"}])).encode(), "severity"),
        (json.dumps(report(drill={"ok": "yes", "time_utc_ns": 1})).encode(), "drill.ok"),
        (json.dumps(report(drill={"ok": True, "time_utc_ns": 1, "files": 1.5})).encode(), "files"),
        (b"{" + b" " * fleet.MAX_REPORT_SIZE + b"}", "exceeds"),
    ],
)
def test_malformed_reports_are_refused_with_a_reason(raw: bytes, needle: str) -> None:
    with pytest.raises(fleet.ReportError, match=needle):
        fleet.parse_report(raw)


def test_a_full_report_is_accepted() -> None:
    drill = {"ok": True, "time_utc_ns": NOW_NS, "files": 3, "bytes": 10, "seconds": 0.5}
    alerts = [{"name": "sync_lag", "severity": "critical", "message": "2 h behind"}]
    doc = fleet.parse_report(json.dumps(report(alerts=alerts, drill=drill)).encode())
    assert doc["alerts"] == alerts and doc["drill"] == drill and doc["sync_lag_seconds"] == 12.5


def test_chart_escapes_and_scales() -> None:
    svg = fleet.chart_svg([("2026-01-01", 0), ("2026-01-02", 100)], width=100, height=50)
    assert "polyline" in svg and "100.0,4.0" in svg and "0.0,46.0" in svg
    assert "no data" in fleet.chart_svg([])


# -- the report endpoint on a real server ----------------------------------------------------


def test_report_latest_wins_and_is_confined_to_the_tools_namespace(
    fresh_server: ServerProcess,
) -> None:
    url = fresh_server.url
    assert put_report(url, NS_A, TOOL_A, report(sync_lag_seconds=1))[0] == 200
    assert put_report(url, NS_A, TOOL_A, report(sync_lag_seconds=2))[0] == 200
    status, _, body = call(url, "GET", f"/v2/{NS_A}/report", headers=bearer(TOOL_A))
    assert status == 200
    stored = json.loads(body)
    assert stored["report"]["sync_lag_seconds"] == 2
    assert stored["received_utc_ns"] > NOW_NS // 2
    # another tool's namespace, no token, a replicate token: refused, nothing stored
    assert put_report(url, NS_B, TOOL_A, report())[0] == 403
    assert put_report(url, NS_A, REPLICATE, report())[0] == 403
    status, _, _ = call(url, "PUT", f"/v2/{NS_A}/report", json.dumps(report()).encode())
    assert status == 401
    assert call(url, "GET", f"/v2/{NS_B}/report", headers=bearer(ADMIN))[0] == 404
    # malformed and oversized bodies: 400 / 413 with a JSON error, old report kept
    status, body = put_report(url, NS_A, TOOL_A, {"time_utc_ns": "now"})
    assert status == 400 and json.loads(body)["error"] == "bad_report"
    big = {"time_utc_ns": 1, "alerts": [{"name": "x" * 400, "severity": "warning"}] * 200}
    assert put_report(url, NS_A, TOOL_A, big)[0] == 413
    status, _, body = call(url, "GET", f"/v2/{NS_A}/report", headers=bearer(ADMIN))
    assert json.loads(body)["report"]["sync_lag_seconds"] == 2


# -- the page: auth --------------------------------------------------------------------------


def test_fleet_page_needs_an_admin(fresh_server: ServerProcess) -> None:
    url = fresh_server.url
    status, headers, body = call(url, "GET", "/fleet")
    assert status == 401 and b"<form" in body and headers["content-type"].startswith("text/html")
    assert call(url, "GET", "/fleet", headers=bearer(TOOL_A))[0] == 403
    assert call(url, "GET", "/fleet", headers=bearer("x" * 40))[0] == 401
    status, _, body = call(url, "GET", "/fleet", headers=bearer(ADMIN))
    assert status == 200 and b"dpmsfs fleet" in body
    # a tool token through the form: 403, no cookie
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, headers, _ = call(url, "POST", "/fleet/login", f"token={TOOL_A}".encode(), form)
    assert status == 403 and "set-cookie" not in headers
    # the admin token through the form: a session cookie (HttpOnly, not the token itself)
    status, headers, _ = call(url, "POST", "/fleet/login", f"token={ADMIN}".encode(), form)
    assert status == 303 and headers["location"] == "/fleet"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and ADMIN not in cookie
    session = cookie.split(";")[0]
    status, _, body = call(url, "GET", "/fleet", headers={"Cookie": session})
    assert status == 200 and b"dpmsfs fleet" in body
    assert call(url, "GET", "/fleet", headers={"Cookie": session + "x"})[0] == 401
    # logging out ends the session
    assert call(url, "POST", "/fleet/logout", headers={"Cookie": session})[0] == 303
    assert call(url, "GET", "/fleet", headers={"Cookie": session})[0] == 401
    # the page is read-only
    assert call(url, "PUT", "/fleet", headers=bearer(ADMIN))[0] == 405


def _put_snapshot_ref(url: str, ns: str, name: str, time_ns: int) -> None:
    body = json.dumps({"v": 1, "name": name, "time_utc_ns": time_ns}).encode()
    headers = {**bearer(TOOL_A), "X-Content-Hash": header_value(key_of(body))}
    status, _, answer = call(url, "PUT", f"/v2/{ns}/refs/snapshot.{name}", body, headers)
    assert status in (200, 201), answer


def _seed(server: ServerProcess) -> None:
    """A week of stored-bytes history (documented file format), a snapshot and a report."""
    days = {time.strftime("%Y-%m-%d", time.gmtime(time.time() - d * 86400)): (8 - d) << 30
            for d in range(1, 8)}  # fmt: skip
    hist = server.data / "fleet" / NS_A / "history.json"
    hist.parent.mkdir(parents=True, exist_ok=True)
    hist.write_text(json.dumps({"days": days}))
    _put_snapshot_ref(server.url, NS_A, "2026-12-01T100000Z", NOW_NS)
    _put_snapshot_ref(server.url, NS_A, "2026-12-02T100000Z", NOW_NS + 86400 * 10**9)
    alerts = [{"name": "store_free", "severity": "critical", "message": "store disk 6 % free"}]
    drill = {"ok": False, "time_utc_ns": NOW_NS, "files": 5, "bytes": 4096, "seconds": 1.25,
             "first_file_seconds": 0.1, "snapshot": "2026-12-01T100000Z",
             "message": "1 file differs"}  # fmt: skip
    assert put_report(server.url, NS_A, TOOL_A, report(alerts=alerts, drill=drill))[0] == 200


def test_fleet_page_lists_what_the_server_knows(fresh_server: ServerProcess) -> None:
    _seed(fresh_server)
    status, _, body = call(fresh_server.url, "GET", "/fleet", headers=bearer(ADMIN))
    page = body.decode()
    assert status == 200
    assert "2026-12-02T100000Z" in page  # the newest snapshot ref, not the first
    assert "store disk 6 % free" in page and 'class="critical"' in page
    assert "failed" in page and "1 file differs" in page and "12 s" in page
    assert page.count("<circle") == 8  # seven seeded days and today
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # no external assets


# -- the page in a real browser --------------------------------------------------------------


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) into rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6) and chunk[12] == 0
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
    raw, stride = zlib.decompress(idat), width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        filter_type = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, ul = prev[i], prev[i - channels] if i >= channels else 0
            if filter_type == 1:
                line[i] = (line[i] + left) & 0xFF
            elif filter_type == 2:
                line[i] = (line[i] + up) & 0xFF
            elif filter_type == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif filter_type == 4:
                p = left + up - ul
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else ul
                line[i] = (line[i] + pred) & 0xFF
        rows.append(
            bytes(line) if channels == 3 else bytes(b for j, b in enumerate(line) if j % 4 != 3)
        )
        prev = line
    return width, height, rows


def count_colour(rows: list[bytes], hex_colour: str, tolerance: int = 12) -> int:
    want = bytes.fromhex(hex_colour.lstrip("#"))
    hits = 0
    for row in rows:
        for x in range(0, len(row), 3):
            if all(abs(row[x + c] - want[c]) <= tolerance for c in range(3)):
                hits += 1
    return hits


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="chromium not installed (scripts/setup.sh)")
def test_fleet_page_renders_chart_and_alerts_in_chromium(
    fresh_server: ServerProcess, tmp_path: Path
) -> None:
    _seed(fresh_server)
    # the browser logs in the way an admin does: the form posts the token, the server
    # answers with a cookie and a redirect; the token never appears in a URL
    login = tmp_path / "login.html"
    login.write_text(
        "<!doctype html><html><body>"
        f"<form id='f' method='post' action='{fresh_server.url}/fleet/login'>"
        f"<input name='token' value='{ADMIN}'></form>"
        "<script>document.getElementById('f').submit()</script></body></html>"
    )
    shot = tmp_path / "fleet.png"
    cmd = [
        str(chromium()),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,700",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
        f"--screenshot={shot}",
        login.as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    dom = subprocess.run(
        [*cmd[:-2], "--dump-dom", login.as_uri()], check=True, capture_output=True, timeout=120
    ).stdout.decode()
    assert "store disk 6 % free" in dom and "2026-12-02T100000Z" in dom, dom[:2000]
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1400, 700)
    assert count_colour(rows, fleet.CHART_COLOUR) > 300  # the polyline and its dots
    assert count_colour(rows, fleet.ALERT_COLOUR) > 200  # the critical badge, drill failed
