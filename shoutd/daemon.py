"""The daemon's wiring: config in, components built, event loop run.

Threads, and why: the main thread builds PySyncObj (its tick thread lives only
as long as the thread that built it) and then runs the asyncio loop that
serves Docker; netlink runs on its own worker thread.  State changes reach
the loop with call_soon_threadsafe and kick the two followers of the
replicated state: the kernel reconciler and the Docker network mirror.
"""

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time

from aiohttp import web

from . import config as configmod
from . import dbus_api
from .dataplane.reconciler import Reconciler, Underlay
from .dataplane.worker import Worker
from .docker.engine import Engine
from .docker.mirror import Mirror
from .docker.plugin import make_app
from .errors import ShoutdError
from .notify import Notifier
from .raft import RaftNode
from .service import Service

log = logging.getLogger("shoutd")


def setup_logging(level):
    # Under systemd, journald stamps each line itself.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper()), format=fmt)


def find_underlay(worker, cfg, notifier, wait=60.0):
    """The underlay interface; at boot the network may still be coming up, so wait a while."""
    deadline = time.monotonic() + wait
    address = cfg.advertise_address
    while True:
        if not cfg.advertise_address:
            address = worker.call(lambda nl: nl.default_route_address())
        found = worker.call(lambda nl: nl.underlay(address)) if address else None
        if found is not None:
            break
        if not address:
            problem = ("this host has no IPv4 default route to take the advertise address from; "
                       "set advertise_address in shoutd.conf or pass --advertise-address")
        else:
            problem = ("advertise address %s is not an address of this host; set advertise_address "
                       "to one of its IPv4 addresses" % address)
        if time.monotonic() > deadline:
            raise ShoutdError(problem)
        notifier.waiting("waiting for the network: " + problem.split(";")[0])
        time.sleep(1.0)
    cfg.advertise_address = address
    index, name, mtu = found
    underlay = Underlay(cfg.advertise_address, cfg.vxlan_port, index, mtu)
    log.info("underlay %s (MTU %d, containers get MTU %d), VTEP %s:%d", name, mtu, underlay.overlay_mtu,
             cfg.advertise_address, cfg.vxlan_port)
    return underlay


def plugin_socket(cfg):
    """The inherited socket when socket-activated, else our own, same path either way."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and int(os.environ.get("LISTEN_FDS", "0")) >= 1:
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(var, None)
        log.info("serving the Docker plugin API on the socket passed by systemd")
        return socket.socket(fileno=3), False
    path = cfg.plugin_socket
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)            # never world-writable, not even for a moment
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    try:
        import grp
        os.chown(path, 0, grp.getgrnam("docker").gr_gid)
        os.chmod(path, 0o660)
    except (KeyError, PermissionError):
        pass                          # no docker group: root-only (0600) it stays
    sock.listen(128)
    log.info("serving the Docker plugin API on %s", path)
    return sock, True


MEMBERS_FILE = "members.json"


def load_members(state_dir):
    try:
        with open(os.path.join(state_dir, MEMBERS_FILE)) as f:
            members = json.load(f)
        return sorted(m for m in members if isinstance(m, str))
    except (OSError, ValueError, TypeError):
        return []


def save_members(state_dir, members):
    path = os.path.join(state_dir, MEMBERS_FILE)
    with open(path + ".new", "w") as f:
        json.dump(members, f)
    os.replace(path + ".new", path)


class Daemon:
    def __init__(self, cfg, raft, worker, underlay, notifier):
        self.cfg = cfg
        self.raft = raft
        self.worker = worker
        self.node = cfg.raft_address
        self.notifier = notifier
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.reconciler = Reconciler(worker, self.node, underlay, self.ready_state)
        self.engine = Engine(cfg.docker_socket)
        self.mirror = Mirror(self.engine, cfg.driver_name, self.node, raft.submit, self.ready_state)
        self.service = Service(raft, self.reconciler, self.node, cfg,
                               on_network_changed=lambda _id: self.mirror.kick(delay=0.5),
                               is_current=self.current)
        self.dbus = None
        self.registered = False     # this process's member_up has committed: see ready_state
        self.known_members = load_members(cfg.state_dir)
        raft.loop = self.loop
        raft.on_change(lambda: self.loop.call_soon_threadsafe(self.changed))
        raft.on_join = lambda members: asyncio.ensure_future(self.join(members))

    def ready_state(self):
        """The state, once it is known to be current; else None.

        PySyncObj calls a node ready when it has applied up to the commit index
        it knows, but a node that restarts and wins the election knows only the
        commit index in its own journal, which can lag the entries it holds.
        Acting on that state would remove veths of running containers.  So the
        state counts as current only after this process's own registration has
        committed: every entry committed before it has then been applied here.
        """
        return self.raft.state() if self.current() else None

    def current(self):
        return self.status()["ready"]

    def status(self):
        """Raft's status, with "ready" meaning ready_state() would answer."""
        raw = self.raft.status()
        return dict(raw, ready=self.registered and raw["ready"])

    def changed(self):
        status = self.status()
        self.remember_members(status)
        self.reconciler.kick()
        self.mirror.kick()
        self.notifier.status(status)
        if self.dbus is not None:
            self.dbus[1].refresh()

    def remember_members(self, st):
        """Keep the current membership on disk for the next start.

        PySyncObj replays membership *changes* from its journal on top of
        the nodes it is started with, so a host that joined through AddPeer
        would come back knowing only the members added after the first one.
        """
        members = sorted(st["nodes"])
        if st["leader"] is None or members == self.known_members:
            return
        self.known_members = members
        save_members(self.cfg.state_dir, members)

    async def join(self, members):
        """Another member ran AddPeer for this host: become part of its cluster."""
        try:
            self.registered = False
            await self.raft.rejoin(members)
            await self.register()
        except ShoutdError as e:
            log.error("joining the cluster of %s failed: %s", ", ".join(members), e)

    async def connect_dbus(self):
        try:
            self.dbus = await dbus_api.serve(self.service)
            log.info("D-Bus: %s on the system bus", dbus_api.BUS_NAME)
        except Exception as e:  # noqa: BLE001 - the plugin must work without a bus
            log.warning("D-Bus control unavailable (%s); the Docker plugin works without it", e)

    async def register(self):
        """Record this host (its VTEP) in the cluster, once there is a leader."""
        op = {"op": "member_up", "node": self.node, "advertise": self.cfg.advertise_address,
              "raft": self.node, "hostname": socket.gethostname()}
        while not self.stopping.is_set():
            try:
                await self.raft.submit(op, timeout=5.0)
                log.info("member %s (VTEP %s) registered; leader %s", self.node,
                         self.cfg.advertise_address, self.raft.status()["leader"])
                self.registered = True
                self.changed()
                return
            except ShoutdError as e:
                if e.kind != "unavailable":
                    raise
                log.info("waiting for the cluster: %s", e)

    async def run(self):
        sock, owned = plugin_socket(self.cfg)
        runner = web.AppRunner(make_app(self.service), handle_signals=False, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock, shutdown_timeout=2.0).start()
        self.reconciler.start()
        self.mirror.start()
        await self.connect_dbus()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
        registering = asyncio.create_task(self.register())
        ready = asyncio.create_task(self.notifier.until_ready(self.status, self.stopping))
        try:
            await self.stopping.wait()
        finally:
            log.info("stopping; the kernel data plane stays up, so containers keep talking")
            self.notifier.stopping()
            for task in (registering, ready):
                task.cancel()
            await self.mirror.stop()
            await self.reconciler.stop()
            await runner.cleanup()
            await self.engine.close()
            if self.dbus is not None:
                self.dbus[0].disconnect()
            if owned and os.path.exists(self.cfg.plugin_socket):
                os.unlink(self.cfg.plugin_socket)


def main(argv=None):
    try:
        cfg = configmod.load(argv)
    except ShoutdError as e:
        print("shoutd: %s" % e, file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    worker = None
    raft = None
    try:
        worker = Worker()
        notifier = Notifier()
        underlay = find_underlay(worker, cfg, notifier)
        peers = cfg.peer_addresses()
        remembered = [m for m in load_members(cfg.state_dir) if m != cfg.raft_address]
        secret, from_file = configmod.read_secret(cfg, multi_host=bool(peers or remembered))
        if not from_file:
            log.info("no cluster secret at %s: this single host uses a random one; create the file "
                     "before adding peers", cfg.secret_file)
        os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
        peers = sorted(set(peers) | set(remembered))
        log.info("member %s, peers: %s", cfg.raft_address, ", ".join(peers) or "none (single host)")
        raft = RaftNode(cfg.raft_address, peers, secret,
                        journal=os.path.join(cfg.state_dir, "raft.journal"),
                        dump=os.path.join(cfg.state_dir, "raft.dump"))

        async def run():
            await Daemon(cfg, raft, worker, underlay, notifier).run()
        asyncio.run(run())
        return 0
    except ShoutdError as e:
        log.error("%s", e)
        return 1
    finally:
        if raft is not None:
            raft.destroy()
        if worker is not None:
            worker.close()
