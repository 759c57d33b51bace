"""The daemon's control socket: `dpmsfs status` and `dpmsfs snapshot` talk to it.

A Unix socket (root-only, mode 0600) under /run/dpmsfs; one JSON object per line in
each direction, one request per connection. Unknown or malformed requests get an
error reply, never a crash of the daemon.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trio

from dpmsfs.errors import DpmsError, UnavailableError

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def serve_control(path: Path, handlers: dict[str, Handler]) -> None:
    """Serve requests {"cmd": NAME, ...} with handlers[NAME] until cancelled."""
    import trio  # only the daemon needs it: CLI clients start faster without

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                request = await _read_request(stream)
                handler = handlers.get(str(request.get("cmd")))
                if handler is None:
                    reply: dict[str, Any] = {"ok": False, "error": "unknown command"}
                else:
                    reply = {"ok": True, **(await handler(request))}
            except DpmsError as exc:
                reply = {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
            except ValueError as exc:
                reply = {"ok": False, "error": f"malformed request: {exc}"}
            except Exception as exc:  # a bad request must not take the daemon down
                log.exception("control request failed")
                reply = {"ok": False, "error": f"internal error: {exc}"}
            try:
                await stream.send_all(json.dumps(reply).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    try:
        await trio.serve_listeners(handle, [listener])
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


async def _read_request(stream: trio.SocketStream) -> dict[str, Any]:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too large")
    request = json.loads(data.split(b"\n", 1)[0] or b"null")
    if not isinstance(request, dict):
        raise ValueError("not a JSON object")
    return request


def call(path: Path, request: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
    """Send one request to the daemon and return its reply (blocking)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise UnavailableError("the dpmsfs daemon is not running for this work directory") from None
    except PermissionError:
        raise UnavailableError(f"no permission to talk to the dpmsfs daemon ({path})") from None
    except TimeoutError:
        raise UnavailableError("the dpmsfs daemon did not answer in time") from None
    except (ConnectionResetError, BrokenPipeError):
        # The daemon died (or was killed) with the request in flight.
        raise UnavailableError("the dpmsfs daemon closed the connection") from None
    try:
        reply: dict[str, Any] = json.loads(data)
    except ValueError:
        raise UnavailableError("the dpmsfs daemon closed the connection") from None
    if not reply.get("ok"):
        error = DpmsError(str(reply.get("error", "request failed")))
        code = reply.get("exit_code")
        if isinstance(code, int):
            error.exit_code = code  # the daemon's own error class, e.g. not found
        raise error
    return reply
