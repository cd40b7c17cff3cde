"""Relays byte streams between a TCP address and a Unix socket: how the loopback cluster's network meets the test's.

    python kube_relay.py LISTEN TARGET     (each one tcp:HOST:PORT or unix:PATH)

Each connection accepted on LISTEN is joined to a new connection to TARGET, both ways, half-closes included.
A Unix socket is a file, so it crosses network namespaces: the API server inside the cluster's namespace
is reached from the test's loopback, and the test's kubelet endpoint from inside. TLS passes through
untouched. Prints `listening PORT` (the kernel's choice for port 0) once it accepts.
"""

import asyncio
import sys


def _address(spec: str):
    kind, _, rest = spec.partition(":")
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        return "tcp", (host, int(port))
    if kind == "unix":
        return "unix", rest
    raise SystemExit(f"not tcp:HOST:PORT or unix:PATH: {spec}")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def _connect(target):
    kind, address = target
    if kind == "tcp":
        return await asyncio.open_connection(*address)
    return await asyncio.open_unix_connection(address)


async def _main(listen, target) -> None:
    async def join(reader, writer):
        try:
            peer_reader, peer_writer = await _connect(target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, peer_writer), _pipe(peer_reader, writer))
        for w in (writer, peer_writer):
            w.close()

    kind, address = listen
    if kind == "tcp":
        server = await asyncio.start_server(join, *address)
        port = server.sockets[0].getsockname()[1]
    else:
        server = await asyncio.start_unix_server(join, address)
        port = 0
    print(f"listening {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main(_address(sys.argv[1]), _address(sys.argv[2])))
