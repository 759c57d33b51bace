#!/usr/bin/env python3
"""HTTP server candidates for dpmsfs-server, side by side, over loopback (issue 10).

The same ASGI app (remote.server.App over one DiskStore) runs under each candidate:
uvicorn (h11), hypercorn (h11) and granian (Rust, hyper). Each is started fresh on an empty
data directory; then C concurrent clients (one namespace each, one keep-alive connection
each) upload --mb-per-client MiB of incompressible 1 MiB frames in objects:upload batches of
--batch-mb, and download them again with objects:download. Reported: aggregate MB/s of
frame bytes for upload and download, per candidate and client count, and the server's peak
RSS (a streamed body must not sit in memory once per connection).

Clients send prebuilt bodies with plain `requests` and discard downloads unverified, so the
figures measure the server (the app verifies every record: decode, SHA-256, xxh3, fsync).
waitress is not a candidate: it is WSGI (no streamed ASGI bodies) and has no TLS of its own.

Example (the figures in docs/benchmarks.md):
    .venv/bin/python scripts/bench_server.py --base /tmp/srvbench --clients 1,12 \\
        --mb-per-client 48
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOKEN = "bench-admin-" + "x" * 20
RECORD = struct.Struct(">16s32sI")
CANDIDATES = ("uvicorn", "hypercorn", "granian")


def make_app() -> object:
    """The app for a candidate process; configured through DPMSFS_BENCH_DATA."""
    from remote import auth, server
    from remote.store import DiskStore

    data = Path(os.environ["DPMSFS_BENCH_DATA"])
    store = DiskStore(data)
    store.prepare()
    return server.App(store, auth.TokenTable(data.parent / "tokens.json"))


def serve(kind: str, port: int) -> None:
    import asyncio

    if kind == "uvicorn":
        import uvicorn

        app: Any = make_app()
        uvicorn.run(
            app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", http="h11"
        )
    elif kind == "hypercorn":
        from hypercorn.asyncio import serve as hserve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.loglevel = "WARNING"
        asyncio.run(hserve(make_app(), config))  # type: ignore[arg-type]
    elif kind == "granian":
        from granian import Granian
        from granian.constants import Interfaces

        Granian(
            "bench_server:make_app",
            address="127.0.0.1",
            port=port,
            interface=Interfaces.ASGI,
            workers=1,
            factory=True,
            log_level="warning",  # type: ignore[arg-type]
            working_dir=Path(__file__).resolve().parent,
        ).serve()
    else:
        raise SystemExit(f"unknown candidate {kind}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str, base: Path) -> tuple[subprocess.Popen[bytes], str]:
    data = base / kind / "data"
    shutil.rmtree(base / kind, ignore_errors=True)
    data.mkdir(parents=True)
    doc = {"tokens": {TOKEN: {"role": "admin", "namespaces": "*"}}}
    (base / kind / "tokens.json").write_text(json.dumps(doc))
    port = free_port()
    env = dict(os.environ, DPMSFS_BENCH_DATA=str(data), PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port)], env=env, cwd=REPO
    )
    url = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(url + "/v2/health", timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{kind} did not start")
        time.sleep(0.1)


def peak_rss_mb(pid: int) -> float:
    """VmHWM of the process and its children (granian serves from a worker process)."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def make_bodies(mb: int, batch_mb: int) -> tuple[list[bytes], list[list[str]], int]:
    from remote.frames import make_record

    bodies: list[bytes] = []
    id_batches: list[list[str]] = []
    frame_bytes = 0
    records = [make_record(secrets.token_bytes(1 << 20)) for _ in range(mb)]
    for start_at in range(0, len(records), batch_mb):
        part = records[start_at : start_at + batch_mb]
        bodies.append(
            b"".join(
                RECORD.pack(bytes.fromhex(i), bytes.fromhex(d), len(f)) + f for i, d, f in part
            )
        )
        id_batches.append([r[0] for r in part])
        frame_bytes += sum(len(r[2]) for r in part)
    return bodies, id_batches, frame_bytes


def run_clients(url: str, clients: int, mb: int, batch_mb: int) -> tuple[float, float]:
    import requests

    work = [make_bodies(mb, batch_mb) for _ in range(clients)]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    barrier = threading.Barrier(clients + 1)
    errors: list[str] = []

    def upload(n: int) -> None:
        with requests.Session() as s:
            s.headers.update(headers)
            barrier.wait()
            for body in work[n][0]:
                r = s.post(f"{url}/v2/bench{n}/objects:upload", data=body, timeout=300)
                if r.status_code != 200:
                    errors.append(f"upload {r.status_code} {r.text[:100]}")
            barrier.wait()

    def download(n: int) -> None:
        with requests.Session() as s:
            s.headers.update(headers)
            barrier.wait()
            for ids in work[n][1]:
                r = s.post(
                    f"{url}/v2/bench{n}/objects:download",
                    json={"ids": ids},
                    stream=True,
                    timeout=300,
                )
                got = sum(len(piece) for piece in r.iter_content(1 << 20))
                if r.status_code != 200 or got < len(ids) * (1 << 20):
                    errors.append(f"download {r.status_code} {got}")
            barrier.wait()

    total = sum(w[2] for w in work)
    rates = []
    for fn in (upload, download):
        threads = [threading.Thread(target=fn, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        barrier.wait()
        elapsed = time.perf_counter() - t0
        for t in threads:
            t.join()
        rates.append(total / elapsed / 1e6)
    if errors:
        raise SystemExit(f"errors: {errors[:3]}")
    return rates[0], rates[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--serve", choices=CANDIDATES, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--base", type=Path, default=Path("/tmp/dpmsfs-bench-server"))
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--clients", default="1,12", help="comma-separated client counts")
    p.add_argument("--mb-per-client", type=int, default=48)
    p.add_argument("--batch-mb", type=int, default=8)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    args.base.mkdir(parents=True, exist_ok=True)
    head = ("server", "clients", "upload MB/s", "download MB/s", "peak RSS MB")
    print(f"{head[0]:<10} {head[1]:>7} {head[2]:>12} {head[3]:>14} {head[4]:>12}")
    for kind in args.candidates.split(","):
        for clients in (int(c) for c in args.clients.split(",")):
            proc, url = start(kind, args.base)
            try:
                per_client = max(args.batch_mb, args.mb_per_client // clients)
                up, down = run_clients(url, clients, per_client, args.batch_mb)
                rss = peak_rss_mb(proc.pid)
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            print(f"{kind:<10} {clients:>7} {up:>12.0f} {down:>14.0f} {rss:>12.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
