#!/usr/bin/env python3
"""Stand-in for redis-server (`redis:6.0.5-alpine`, Enterprise's rate-limit cache).

Accepts the image's arguments, listens on 6379 and speaks RESP as far as a client's first
steps go: PING answers PONG, ECHO its argument, QUIT closes; any other command gets an
error reply naming it. Nothing of the upgrade reads the cache: the tool sees a running
container without HEALTHCHECK, as with the real image.
"""

from __future__ import annotations

import asyncio
import signal
import sys


async def _command(reader: asyncio.StreamReader) -> list[bytes] | None:
    """One command: a RESP array of bulk strings, or an inline line; None at end of stream."""
    line = await reader.readline()
    if not line:
        return None
    if not line.startswith(b"*"):
        return line.split()
    parts = []
    for _ in range(int(line[1:].strip() or 0)):
        size = int((await reader.readline())[1:].strip())
        parts.append((await reader.readexactly(size + 2))[:-2])
    return parts


async def _session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while (command := await _command(reader)) is not None:
            name = command[0].upper() if command else b""
            if name == b"PING":
                writer.write(b"+PONG\r\n" if len(command) == 1 else b"$%d\r\n%s\r\n" % (len(command[1]), command[1]))
            elif name == b"ECHO" and len(command) == 2:
                writer.write(b"$%d\r\n%s\r\n" % (len(command[1]), command[1]))
            elif name == b"QUIT":
                writer.write(b"+OK\r\n")
                break
            elif name:
                writer.write(b"-ERR stand-in does not implement '%s'\r\n" % command[0][:64])
            await writer.drain()
        await writer.drain()
    except (ConnectionError, ValueError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main() -> None:
    print(f"stand-in redis-server started with args: {' '.join(sys.argv[1:])}", flush=True)
    server = await asyncio.start_server(_session, "0.0.0.0", 6379)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
