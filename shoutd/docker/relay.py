"""The managed plugin's whole program: Docker's plugin socket relayed to the host's shoutd service.

Swarm serves only managed (v2) plugins, which Docker runs as containers of
their own; shoutd's work (Raft, the kernel, D-Bus) stays in the one systemd
service per host.  So the plugin `darkkitchen/shoutd` runs only this: it
listens where Docker looks for the plugin's socket and copies bytes to and
from the service's managed socket, one connection for each of Docker's.

It runs on the host's Python, bound read-only into the plugin, from a copy
that `shoutdctl plugin install` puts into the plugin's root: so it imports
nothing but the standard library (no shoutd package, no aiohttp).
"""

import asyncio
import os
import signal
import sys

CHUNK = 1 << 16


async def _pump(reader, writer):
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            writer.close()


async def _relay(service, client_reader, client_writer):
    try:
        service_reader, service_writer = await asyncio.open_unix_connection(service)
    except OSError as e:
        # Docker retries; its error names the plugin, this line says why.
        print("shoutd-relay: shoutd's service does not answer at %s (%s); is shoutd running on this host?"
              % (service, e), file=sys.stderr, flush=True)
        client_writer.close()
        return
    await asyncio.gather(_pump(client_reader, service_writer), _pump(service_reader, client_writer))
    service_writer.close()
    client_writer.close()


async def serve(listen, service):
    # The relay is PID 1 of the plugin's container, where SIGTERM is ignored unless handled: without
    # this, Docker waits out its stop timeout on every `plugin disable` and every shutdown.  Handled
    # before the socket exists, which is what tells Docker (and a test) that the relay is up.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if os.path.exists(listen):
        os.unlink(listen)
    server = await asyncio.start_unix_server(lambda r, w: _relay(service, r, w), path=listen)
    os.chmod(listen, 0o600)
    print("shoutd-relay: %s -> %s" % (listen, service), file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: relay.py LISTEN_SOCKET SERVICE_SOCKET", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(*argv))
    except KeyboardInterrupt:
        pass
    except OSError as e:
        print("shoutd-relay: cannot listen on %s: %s" % (argv[0], e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
