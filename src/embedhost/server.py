"""The uvicorn server: its configuration (:func:`run`), embedhost's shutdown sequence, and
the HTTP protocol with a header-read timeout for slow clients (:func:`header_timeout_protocol`).

On SIGTERM (or SIGINT):

1. the app context's ``draining`` is set in the signal handler itself, so ``/ready``
   answers 503 from that instant;
2. if ``server.shutdown_delay_s`` is set, requests are still taken for that long (a load
   balancer that polls /ready stops sending meanwhile); a second signal skips the wait;
3. uvicorn stops accepting connections, closes idle keep-alive ones and waits up to
   ``server.graceful_shutdown_s`` for the requests it accepted;
4. the app's lifespan drains the batch queues and stops the workers;
5. the process exits with status 0. (uvicorn would re-raise the signal after a graceful
   shutdown, which makes the exit status -15; a drained shutdown is a success.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import FrameType
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI

from embedhost import __version__
from embedhost.config import Settings

log = logging.getLogger(__name__)


class Drains(Protocol):
    """What the server tells the app on a shutdown signal (the app's context)."""

    draining: bool


class EmbedhostServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, drains: Drains, shutdown_delay_s: float = 0.0
    ) -> None:
        super().__init__(config)
        self.drains = drains
        self.shutdown_delay_s = shutdown_delay_s
        self._exit_at: float | None = None
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in a signal handler: set flags only (logging could deadlock on its lock).
        self.drains.draining = True
        if self._exit_at is None and self.shutdown_delay_s > 0 and not self.should_exit:
            self._exit_at = time.monotonic() + self.shutdown_delay_s
            return
        super().handle_exit(sig, frame)
        self._captured_signals.clear()

    async def on_tick(self, counter: int) -> bool:
        if self.drains.draining and not self._announced:
            self._announced = True
            left = max(0.0, (self._exit_at or 0.0) - time.monotonic())
            log.info(
                "shutdown requested: /ready answers 503; %s",
                f"requests still taken for {left:.1f}s (shutdown_delay_s), then drained"
                if left
                else "draining accepted requests",
            )
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)


def header_timeout_protocol(
    timeout_s: float, max_header_bytes: int | None = None
) -> type[Any] | str:
    """uvicorn's httptools protocol, closing connections that do not finish sending a
    request's headers within ``timeout_s`` (slowloris), and refusing requests whose
    request line and headers exceed ``max_header_bytes`` (a 1 MB ``Authorization``
    header, say) with 431. uvicorn has neither of its own with httptools: its keep-alive
    timer stops as soon as the first byte of a request arrives, and llhttp buffers headers
    of any size (only uvicorn's h11 protocol has ``h11_max_incomplete_event_size``)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools missing: uvicorn's h11 protocol, without the timeout
        log.warning("httptools is not installed: no header-read timeout for slow clients")
        return "auto"
    cap = max_header_bytes

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        # Bytes received while the current request's headers are incomplete, and the
        # parsed sizes of its URL and headers.
        _in_headers = True
        _header_bytes = 0
        _parsed_bytes = 0
        _refused = False

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout_s, self._header_timed_out)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # read and dropped until the client or the header timer closes
            if self._in_headers:
                self._header_bytes += len(data)
            super().data_received(data)
            if cap is not None and self._in_headers and self._header_bytes > cap:
                self._headers_too_large()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._parsed_bytes = 0
            self._arm_header_timer()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count(self, n: int) -> None:
            self._parsed_bytes += n
            if cap is not None and self._parsed_bytes > cap:
                # Raised inside the parser: uvicorn answers 400 and closes the connection.
                raise ValueError("request headers too large")

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._disarm_header_timer()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_headers, self._header_bytes = True, 0

        def _headers_too_large(self) -> None:
            if self.transport.is_closing() or self._refused:
                return
            body = b"request headers are larger than the limit (server.max_header_bytes)"
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: text/plain; charset=utf-8\r\n"
                b"connection: close\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            # Closing with unread data would reset the connection, and the client could
            # lose the answer: end our side, drop what still comes, let the client close
            # (or the header timer, still armed, close it).
            self._refused = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            else:
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def run(app: FastAPI, settings: Settings, drains: Drains) -> None:
    """Serve ``app`` with uvicorn as ``settings.server`` says, until a signal stops it;
    ``drains`` (the app's context) is told at once when one arrives."""
    s = settings.server
    tls: dict[str, Any] = {}
    if s.ssl_certfile and s.ssl_keyfile:
        tls = {
            "ssl_certfile": s.ssl_certfile,
            "ssl_keyfile": s.ssl_keyfile,
            "ssl_keyfile_password": (
                s.ssl_keyfile_password.get_secret_value() if s.ssl_keyfile_password else None
            ),
        }
    uv = uvicorn.Config(
        app,
        host=s.host,
        port=s.port,
        log_config=None,
        log_level=s.log_level,
        access_log=s.access_log,
        timeout_keep_alive=int(s.timeout_keep_alive_s),
        timeout_graceful_shutdown=int(s.graceful_shutdown_s),
        lifespan="on",
        # X-Forwarded-For is ours to judge (server.trusted_proxies), not uvicorn's.
        proxy_headers=False,
        forwarded_allow_ips=None,
        server_header=False,
        http=header_timeout_protocol(s.timeout_header_read_s, s.max_header_bytes),
        # The same cap where uvicorn falls back to h11 (httptools missing).
        h11_max_incomplete_event_size=s.max_header_bytes,
        **tls,
    )
    log.info(
        "embedhost %s serving %s on %s://%s:%d",
        __version__,
        ", ".join(m.ref for m in settings.models),
        "https" if tls else "http",
        s.host,
        s.port,
    )
    EmbedhostServer(uv, drains, s.shutdown_delay_s).run()
