"""WAN emulation without netem: a TCP forwarder that delays every byte by a fixed time in each direction."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys


class _Pipe:
    """One direction of one connection: a FIFO delay line with a byte bound (backpressure on the reader)."""

    def __init__(self, delay: float, limit: int) -> None:
        self.delay = delay
        self.limit = limit
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.buffered = 0
        self.room = asyncio.Event()
        self.room.set()

    async def read_side(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.room.wait()
            data = await reader.read(262144)
            self.queue.put_nowait((loop.time() + self.delay, data))
            if not data:
                return
            self.buffered += len(data)
            if self.buffered > self.limit:
                self.room.clear()

    async def write_side(self, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await self.queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            self.buffered -= len(data)
            if self.buffered <= self.limit:
                self.room.set()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _serve(args: argparse.Namespace) -> None:
    one_way = args.rtt_ms / 2000.0

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        _nodelay(c_writer)
        try:
            s_reader, s_writer = await asyncio.open_connection(args.target_host, args.target_port)
        except OSError:
            c_writer.close()
            return
        _nodelay(s_writer)
        up, down = _Pipe(one_way, args.limit), _Pipe(one_way, args.limit)
        tasks = [asyncio.create_task(coro) for coro in (
            up.read_side(c_reader), up.write_side(s_writer), down.read_side(s_reader), down.write_side(c_writer))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            # Both directions finished (EOF each way) or one failed: close everything.
        finally:
            for t in tasks:
                t.cancel()
            for w in (c_writer, s_writer):
                w.close()

    server = await asyncio.start_server(handle, args.listen_host, args.listen_port, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.timeout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--listen-host", required=True)
    ap.add_argument("--listen-port", type=int, required=True)
    ap.add_argument("--target-host", default="127.0.0.1")
    ap.add_argument("--target-port", type=int, required=True)
    ap.add_argument("--rtt-ms", type=float, default=50.0, help="added round-trip time (half each way)")
    ap.add_argument("--limit", type=int, default=16 << 20, help="bytes held per direction before reading pauses")
    ap.add_argument("--timeout", type=float, default=900.0, help="exit after this many seconds regardless")
    asyncio.run(_serve(ap.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
