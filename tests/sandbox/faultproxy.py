"""A TCP proxy on 127.0.0.1 that can cut every connection and refuse new ones for a while:
a real network fault between the tool and the S3 server, not a mock of either."""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable


class FaultProxy:
    def __init__(self, target_port: int, cut_after_bytes: int | None = None, outage_s: float = 4.0,
                 on_request: tuple[list[bytes], Callable[[], None]] | None = None) -> None:
        self.target_port = target_port
        # (byte strings, action): run the action once, before forwarding the first client chunk
        # holding all of them (e.g. an S3 request line naming a key), to inject a fault in step.
        self.on_request = on_request
        self.cut_after_bytes = cut_after_bytes
        self.outage_s = outage_s
        self.forwarded = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._down_until = 0.0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if time.monotonic() < self._down_until:
                client.close()  # refused during the outage
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, counts: bool) -> None:
        try:
            while data := src.recv(65536):
                if counts and self.on_request and all(part in data for part in self.on_request[0]):
                    action, self.on_request = self.on_request[1], None
                    action()
                dst.sendall(data)
                if counts:
                    with self._lock:
                        self.forwarded += len(data)
                        trip = self.cut_after_bytes is not None and self.forwarded >= self.cut_after_bytes
                    if trip:
                        self.cut()
                        return
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        """Drop every open connection and refuse new ones for `outage_s` seconds."""
        with self._lock:
            self.cut_after_bytes = None
            self.cuts += 1
            self._down_until = time.monotonic() + self.outage_s
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self.cut()
