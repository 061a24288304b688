"""The load generator's own ceiling: a trivial HTTP server that answers every request with
fixed bytes at once. The throughput the load generator reaches against it bounds what it
can measure; a service result near this ceiling would measure the client, not the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterator
from multiprocessing import get_context
from multiprocessing.process import BaseProcess

from bench._server import HOST, free_port


class _Fixed(asyncio.Protocol):
    def __init__(self, response: bytes) -> None:
        self._response = response
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        # Requests without bodies only (GET): one answer per blank line.
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            self._buffer = self._buffer[end + 4 :]
            assert self._transport is not None
            self._transport.write(self._response)


def _serve(port: int, body: bytes, cpus: frozenset[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Fixed(response), HOST, port)
        async with server:
            await server.serve_forever()

    try:
        import uvloop  # noqa: PLC0415  # optional, as in the load generator
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


@contextlib.contextmanager
def fixed_response_server(body: bytes, *, cpus: frozenset[int] | None) -> Iterator[int]:
    """Run the trivial server in its own process; yields its port."""
    port = free_port()
    process: BaseProcess = get_context("spawn").Process(
        target=_serve, args=(port, body, cpus), daemon=True
    )
    process.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((HOST, port)):
                    break
            except OSError:
                if time.monotonic() > deadline or not process.is_alive():
                    raise RuntimeError("the fixed-response server did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.join(timeout=10)
