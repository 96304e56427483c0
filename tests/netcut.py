"""A TCP forwarder the tests can cut: a network partition between the edge and one broker.

While cut, bytes already on their way are held and nothing moves in either direction; new
connections are accepted but never reach the broker, as when packets vanish on a dead link
(no RST, no FIN: the peers only notice through their keepalive). On `heal()` the held
connections either resume where they stopped (a short outage that TCP rides out) or are reset
(a long one after which both ends have given up), as the caller chooses.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading

from edge.broker import free_port


class CutProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port` until cut."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.cuts = 0
        # Bytes one connection may carry towards the broker before it is reset (None: no limit): a
        # backhaul that drops every so often, however fast the data goes.
        self.budget: int | None = None
        self.resets = 0
        self._loop = asyncio.new_event_loop()
        self._open: asyncio.Event | None = None
        self._conns: set[asyncio.Transport] = set()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="cut-proxy", daemon=True)
        self._thread.start()
        self._call(self._start())

    @property
    def url(self) -> str:
        """mqtt://127.0.0.1:port of the proxy."""
        return f"mqtt://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Partition: hold everything in both directions, let new connections hang."""
        self.cuts += 1
        self._call(self._set(False, reset=False))

    def heal(self, *, reset: bool) -> None:
        """End the partition; `reset` drops the held connections (RST) instead of resuming them."""
        self._call(self._set(True, reset=reset))

    def close(self) -> None:
        """Stop forwarding and release the port."""
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _start(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _set(self, open_: bool, *, reset: bool) -> None:
        assert self._open is not None
        if open_:
            if reset:
                for transport in list(self._conns):
                    _abort(transport)
                self._conns.clear()
            self._open.set()
        else:
            self._open.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self._conns):
            _abort(transport)
        assert self._open is not None
        self._open.set()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        assert self._open is not None
        client_t = client_w.transport
        self._conns.add(client_t)  # type: ignore[arg-type]
        try:
            # A connection made during a partition waits here: the handshake never completes.
            await self._open.wait()
            if client_t.is_closing():
                return
            try:
                broker_r, broker_w = await asyncio.open_connection(*self.target)
            except OSError:
                return  # broker down: the client sees the connection close, as with a refused connect
            self._conns.add(broker_w.transport)  # type: ignore[arg-type]
            await asyncio.gather(self._pipe(client_r, broker_w, counted=True), self._pipe(broker_r, client_w))
        finally:
            self._conns.discard(client_t)  # type: ignore[arg-type]
            _abort(client_t)  # type: ignore[arg-type]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, counted: bool = False) -> None:
        assert self._open is not None
        carried = 0
        try:
            while True:
                await self._open.wait()
                data = await reader.read(65536)
                # Bytes read just before a cut are held, like packets queued on a dead link.
                await self._open.wait()
                if not data or writer.is_closing():
                    break
                carried += len(data)
                if counted and self.budget is not None and carried > self.budget:
                    self.resets += 1
                    break  # both ends are reset (finally), the rest of this read never arrives
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(writer.transport)  # type: ignore[arg-type]
            _abort(writer.transport)  # type: ignore[arg-type]


def _abort(transport: asyncio.BaseTransport) -> None:
    """Close with RST (SO_LINGER 0), as a peer whose connection state is gone answers."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()
