"""A fault-injecting TCP proxy on loopback, between a tool and a real dpmsfs-server.

Modes (set `proxy.mode` at any time; new and running connections obey it):

- ``pass``: forward both ways.
- ``delay``: forward, sleeping `delay` seconds before each piece.
- ``drop``: swallow traffic silently (the peer sees a hang until its timeout).
- ``truncate``: forward `truncate_after` bytes of each connection's upstream, then close.
- ``reset``: close connections with an RST (SO_LINGER 0).
- ``refuse``: the listening socket is closed (connection refused: the network is gone);
  leaving the mode listens on the same port again.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time

MODES = ("pass", "delay", "drop", "truncate", "reset", "refuse")


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.delay = 0.2
        self.truncate_after = 4096
        self._mode = "pass"
        self._lock = threading.Lock()
        self._stopping = False
        self._conns: list[socket.socket] = []
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(mode)
        with self._lock:
            old, self._mode = self._mode, mode
            if mode == "refuse" and old != "refuse":
                self._listener.close()
                for conn in self._conns:
                    _reset(conn)
                self._conns.clear()
            elif old == "refuse" and mode != "refuse":
                self._listener = self._listen(self.port)
            if mode == "reset":
                for conn in self._conns:
                    _reset(conn)
                self._conns.clear()

    def close(self) -> None:
        self._stopping = True
        with self._lock:
            with contextlib.suppress(OSError):
                self._listener.close()
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.close()

    @staticmethod
    def _listen(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        sock.settimeout(0.1)
        return sock

    def _accept_loop(self) -> None:
        while not self._stopping:
            with self._lock:
                listener = None if self._mode == "refuse" else self._listener
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            if self._mode == "reset":
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._conns.extend((client, upstream))
        sent_up = 0
        try:
            while not self._stopping:
                readable, _, _ = select.select([client, upstream], [], [], 0.2)
                for src in readable:
                    data = src.recv(65536)
                    if not data:
                        return
                    mode = self._mode
                    if mode == "drop":
                        continue
                    if mode == "delay":
                        time.sleep(self.delay)
                    if mode == "reset":
                        return
                    dst = upstream if src is client else client
                    if mode == "truncate" and src is client:
                        room = self.truncate_after - sent_up
                        if room <= 0:
                            return
                        data = data[:room]
                        sent_up += len(data)
                    dst.sendall(data)
        except (OSError, ValueError):
            # ValueError: `set_mode` closed these sockets from another thread (a mode
            # change ends the connections), so select() saw a descriptor of -1
            return
        finally:
            for s in (client, upstream):
                _reset(s) if self._mode in ("reset", "truncate") else _close(s)
            with self._lock:
                for s in (client, upstream):
                    if s in self._conns:
                        self._conns.remove(s)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
