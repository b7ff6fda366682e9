"""The daemon's wiring: config in, components built, event loop run.

Threads, and why: the main thread builds PySyncObj (its tick thread lives only
as long as the thread that built it) and then runs the asyncio loop that
serves Docker; netlink runs on its own worker thread.  State changes reach
the loop with call_soon_threadsafe and kick the followers of the replicated
state: the kernel reconciler, the Docker network mirror, and the multicast
listeners' reporter.
"""

import asyncio
import faulthandler
import logging
import os
import signal
import socket
import sys
import time

from aiohttp import web

from . import config as configmod
from . import dbus_api
from .dataplane.netlink import vxlan_mdb_supported
from .dataplane.reconciler import Reconciler, Underlay
from .dataplane.worker import Worker
from .docker import managed
from .docker.engine import Engine
from .docker.mirror import Mirror
from .docker.plugin import make_app
from .errors import UNAVAILABLE, ShoutdError
from .multicast import Listeners
from .notify import Notifier
from .raft import VERSION, JoinRequests, MemberFile, RaftNode, answer_version, check_port_free, check_pysyncobj
from .raft import journal
from .raft.feed import Feed, feed_address
from .raft.channel import ChannelError
from .raft.replica import probe
from .raft.replica_node import ReplicaNode
from .service import Service
from .state import EVERYTHING, ENDPOINTS, GROUPS, MEMBERS, NETWORKS, STATE_VERSION
from .roles import Voters
from .versions import Versions, check_state_version, remember_state_version

log = logging.getLogger("shoutd")

# The state here was written by a newer release: systemd must not restart us
# (RestartPreventExitStatus in shoutd.service); only an upgrade helps.
EXIT_NEWER_STATE = 78
AGAIN = -1               # run() asks main() to run the daemon again, with the control plane members.json names
REMOVED_AFTER = 15.0     # seconds without a leader before a voter asks the others whether it still votes
PLUGIN_RETRY = 60.0      # at most this many seconds between tries to install the managed plugin


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
        time.sleep(1.0)  # at boot the network may still be coming up: look again
    cfg.advertise_address = address
    index, name, mtu = found
    underlay = Underlay(cfg.advertise_address, cfg.legacy_port, index, mtu, vxlan_mdb_supported())
    log.info("underlay %s (MTU %d, containers get MTU %d), VTEP %s; VXLAN on UDP %d (networks made before "
             "shoutd 0.4: %d)", name, mtu, underlay.overlay_mtu, cfg.advertise_address, cfg.network_port,
             cfg.legacy_port)
    if not underlay.vxlan_mdb:
        log.warning("kernel %s has no VXLAN multicast database (Linux 6.4 and later have one): this host sends "
                    "every multicast group to every host; the others still deliver a group only to containers "
                    "that listen", os.uname().release)
    return underlay


def activated_sockets():
    """The sockets systemd passed (shoutd.socket: the plugin socket, then the managed socket), or []."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    return [socket.socket(fileno=3 + i) for i in range(count)]


def listening(passed, index, path, what, group=None):
    """(socket, whether shoutd made it): the one systemd passed at `index`, else our own at `path`."""
    if len(passed) > index:
        log.info("serving %s on the socket passed by systemd (%s)", what, path)
        return passed[index].dup(), False      # aiohttp closes its copy when a run ends; the next run needs one
    sock = unix_socket(path, group)
    log.info("serving %s on %s", what, path)
    return sock, True


def remove_socket(path):
    """Remove a socket file shoutd made; gone already is fine (a second shoutd sharing the path, a user)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def unix_socket(path, group=None):
    """A listening socket at `path`, root's (and `group`'s, if it exists), never world-writable."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    remove_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)            # never world-writable, not even for a moment
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    if group is not None:
        try:
            import grp
            os.chown(path, 0, grp.getgrnam(group).gr_gid)
            os.chmod(path, 0o660)
        except (KeyError, PermissionError):
            pass                      # no such group: root-only (0600) it stays
    sock.listen(128)
    return sock


class Daemon:
    def __init__(self, cfg, raft, worker, underlay, notifier, member_file, joins=None, passed=()):
        self.cfg = cfg
        self.passed = passed              # the sockets systemd passed (activated_sockets)
        self.raft = raft
        self.worker = worker
        self.node = cfg.raft_address
        self.notifier = notifier
        self.member_file = member_file
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.exit_code = 0
        if joins is not None:
            joins.on_join = lambda members, replica: asyncio.ensure_future(self.join(members, replica))
        self.feed = None
        raft.attach(self.loop, self.changed)
        # The reconciler and the mirror see the control plane through the
        # RaftNode's state and caught_up event, and nothing else of it.
        self.reconciler = Reconciler(worker, self.node, underlay, raft)
        self.engine = Engine(cfg.docker_socket)
        self.service = Service(raft, self.reconciler, self.node, cfg,
                               on_network_changed=lambda _id: self.mirror.kick(delay=0.1),
                               kernel_prunes=underlay.vxlan_mdb)
        self.mirror = Mirror(self.engine, cfg.driver_name, self.node, raft.submit, raft,
                             self.service.cluster.making_replica)
        self.listeners = Listeners(worker, self.node, raft, raft.submit,
                                   replicas_gone=lambda: self.feed.gone if self.feed else {},
                                   served_elsewhere=self.served_elsewhere)
        self.versions = Versions(self.node, raft, raft.submit, cfg.advertise_address, socket.gethostname())
        self.voters = Voters(self.node, raft, raft.submit, lambda: set(self.feed.sessions) if self.feed else set(),
                             five_from=cfg.voters_five_from, lost_after=cfg.voter_lost_after)
        self._voters = None
        self.dbus = None
        self._role = None
        self._version_kept = 0
        self._change_pending = False
        self._followers_current = False
        self._silent = ()

    def changed(self):
        """A state or status change: followers are told once per loop turn, however many came."""
        if not self._change_pending:
            self._change_pending = True
            self.loop.call_soon(self._tell_followers)

    def _tell_followers(self):
        self._change_pending = False
        status = self.raft.status
        self.member_file.remember(status)
        parts = self.raft.state.take_changes()
        current = self.raft.caught_up.is_set()
        if current and not self._followers_current:
            parts = set(EVERYTHING)         # the first look at a current state: everything is news
        self._followers_current = current
        if parts & {MEMBERS, NETWORKS, ENDPOINTS, GROUPS}:
            self.reconciler.kick()
        if parts & {MEMBERS, NETWORKS}:
            self.mirror.kick()
        if parts & {MEMBERS, NETWORKS, GROUPS} or status.silent != self._silent:
            self.listeners.kick()
        if parts & {MEMBERS} or status.role != self._role:
            self.versions.kick()
        if parts & {MEMBERS} or status.role != self._role or set(status.nodes) != self._voters \
                or status.silent != self._silent:
            self.voters.kick()
            self._voters = set(status.nodes)
        if isinstance(self.raft, ReplicaNode) and self.node in self.raft.state.data["voters"] and current:
            self.promoted()
        self._role = status.role
        self._silent = status.silent
        if self.raft.state.version > self._version_kept:
            self._version_kept = self.raft.state.version
            remember_state_version(self.cfg.state_dir, self._version_kept)
        self.notifier.status(status, current)
        if self.dbus is not None:
            self.dbus.refresh(parts, status)

    async def join(self, members, replica=False):
        """Another member ran AddPeer for this host: become part of its cluster (a replica of `members`)."""
        if replica:
            log.info("joining the cluster of %s as a replica: starting again as one", ", ".join(members))
            self.member_file.remember_replica(members)
            self._start_again()
            return
        try:
            log.info("joining the cluster of %s", ", ".join(m for m in members if m != self.node))
            await self.raft.rebuild(members)
            await self.register()
        except ShoutdError as e:
            log.error("joining the cluster of %s failed: %s", ", ".join(members), e)

    def promoted(self):
        """The leader named this replica a voter (roles.py): start again as one, with a journal of its own."""
        if self.exit_code == AGAIN:
            return
        voters = self.raft.state.data["voters"]
        log.info("promoted to voter by the leader; voters %s: starting again as one", ", ".join(voters))
        self.member_file.remember_members(voters)
        self._start_again()

    def _start_again(self):
        """Stop, and let main() run this daemon again with the control plane members.json now names."""
        self.exit_code = AGAIN
        self.stopping.set()

    async def connect_dbus(self):
        try:
            self.dbus = await dbus_api.serve(self.service)
            log.info("D-Bus: %s on the system bus", dbus_api.BUS_NAME)
        except Exception as e:  # noqa: BLE001 - the plugin must work without a bus
            log.warning("D-Bus control unavailable (%s); the Docker plugin works without it", e)

    async def register(self):
        """Record this host (its VTEP) in the cluster, once there is a leader."""
        while not self.stopping.is_set():
            try:
                await self.raft.register(self.versions.registration())
                log.info("member %s (VTEP %s) registered; leader %s", self.node,
                         self.cfg.advertise_address, self.raft.status.leader)
                return
            except ShoutdError as e:
                if e.kind != UNAVAILABLE:
                    raise
                log.info("waiting for the cluster: %s", e)
                await asyncio.sleep(0.5)  # no leader yet: ask again shortly

    async def install_plugin(self):
        """The managed plugin in the local Docker, so that swarm networks need nothing else done."""
        if not self.cfg.managed_plugin:
            return
        said, delay = None, 1.0
        while not self.stopping.is_set():
            try:
                log.info("managed plugin: %s", await managed.install(self.engine, self.cfg.managed_socket))
                return
            except ShoutdError as e:
                if str(e) != said:      # once per new reason, not once a minute
                    log.warning("cannot install the managed plugin %s in the local Docker yet (trying again "
                                "until it works; managed_plugin = no turns this off): %s", managed.REFERENCE, e)
                said = str(e)
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
            except asyncio.TimeoutError:
                delay = min(delay * 2, PLUGIN_RETRY)    # Docker usually starts within seconds of shoutd

    async def serve_feed(self):
        """On a voter: the replica feed (raft/feed.py), on the Raft port + 1."""
        raft = self.raft
        if not isinstance(raft, RaftNode):
            return
        membership = self.service.membership
        feed = Feed(self.node, raft.secret, lambda: raft.state, raft.submit, ready=raft.caught_up.is_set,
                    leader=lambda: raft.status.leader if raft.status.has_quorum else None,
                    membership=lambda kind, addr: (membership.add_peer if kind == "add" else
                                                   membership.remove_peer)(addr))
        host, port = feed_address(self.node).rsplit(":", 1)
        try:
            await feed.start(host, int(port))
        except OSError as e:
            log.error("cannot serve replicas on %s:%s (%s): replicas follow the other voters; free the port "
                      "and restart shoutd", host, port, e.strerror)
            return
        feed.follow(raft.replica)
        self.feed = feed
        log.info("serving replicas on %s:%s", host, port)

    async def rejoin_if_removed(self):
        """A voter taken off the voters while it was away (roles.py) never hears a leader again: ask who votes."""
        alone_since = None
        while isinstance(self.raft, RaftNode) and not self.stopping.is_set():
            await asyncio.sleep(REMOVED_AFTER / 3)    # how often a host without a leader looks
            st = self.raft.status
            if st.leader is not None or st.role == "halted":
                alone_since = None
                continue
            alone_since = alone_since or time.monotonic()
            if time.monotonic() - alone_since < REMOVED_AFTER:
                continue
            async for answer in self.probe_feeds(st.nodes):
                voters, leader = answer["voters"], answer["leader"]
                if leader and voters and self.node not in voters:
                    log.warning("this host was taken off the voters while it was away (voters now %s, leader %s): "
                                "joining again as a replica", ", ".join(voters), leader)
                    await self.join(voters, replica=True)
                    return

    async def probe_feeds(self, members):
        """What each other member's feed that answers says of the cluster (raft/replica.py probe)."""
        for member in sorted(m for m in members if m != self.node):
            try:
                yield await probe(self.raft.secret, self.node, feed_address(member))
            except (ChannelError, OSError, asyncio.TimeoutError):
                continue                 # not a voter, down, or not caught up: ask the next

    async def served_elsewhere(self, replica):
        """Whether another voter's feed serves `replica` now: it moved there, rather than died."""
        async for answer in self.probe_feeds(self.raft.state.data["voters"]):
            if replica in answer["serves"]:
                return True
        return False

    async def watch_raft(self):
        """Leave (and let systemd restart us) if the Raft thread dies; see Notifier for a wedged one."""
        while not self.stopping.is_set():
            problem = self.raft.health()
            if problem is not None and problem.fatal:
                log.error("%s; exiting so that the service is restarted", problem.text)
                self.exit_code = 1
                self.stopping.set()
                return
            await asyncio.sleep(1.0)  # how often the Raft thread is looked at

    async def run(self):
        passed = self.passed
        sock, owned = listening(passed, 0, self.cfg.plugin_socket, "the Docker plugin API", group="docker")
        runner = web.AppRunner(make_app(self.service), handle_signals=False, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock, shutdown_timeout=2.0).start()
        # Swarm networks' calls, relayed by the managed plugin darkkitchen/shoutd (docker/managed.py).
        swarm_runner = web.AppRunner(make_app(self.service, swarm=True), handle_signals=False, access_log=None)
        await swarm_runner.setup()
        swarm_owned = False
        try:
            swarm_sock, swarm_owned = listening(passed, 1, self.cfg.managed_socket, "swarm networks' calls")
            await web.SockSite(swarm_runner, swarm_sock, shutdown_timeout=2.0).start()
        except OSError as e:
            # An upgrade whose shoutd.socket was not restarted yet passes one socket, and /run/shoutd may
            # be read-only to us: only swarm networks wait; the rest works.
            log.error("cannot serve swarm networks on %s: %s; restart shoutd.socket and shoutd",
                      self.cfg.managed_socket, e)
        await self.serve_feed()
        self.reconciler.start()
        self.mirror.start()
        self.listeners.start()
        self.versions.start()
        self.voters.start()
        await self.connect_dbus()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
        tasks = [asyncio.create_task(self.register()), asyncio.create_task(self.watch_raft()),
                 asyncio.create_task(self.rejoin_if_removed()),
                 asyncio.create_task(self.install_plugin()),
                 asyncio.create_task(self.notifier.run(self.raft, self.stopping))]
        try:
            await self.stopping.wait()
        finally:
            if self.exit_code != AGAIN:
                log.info("stopping; the kernel data plane stays up, so containers keep talking")
                self.notifier.stopping()
            for task in tasks:
                task.cancel()
            await self.listeners.stop()
            await self.versions.stop()
            await self.voters.stop()
            if self.feed is not None:
                await self.feed.stop()
            await self.mirror.stop()
            await self.reconciler.stop()
            await runner.cleanup()
            await swarm_runner.cleanup()
            if swarm_owned:
                remove_socket(self.cfg.managed_socket)
            await self.engine.close()
            if self.dbus is not None:
                await self.dbus.disconnect()     # the next run owns the bus name again
            if owned:
                remove_socket(self.cfg.plugin_socket)
        return self.exit_code


def forget_raft_files(files):
    """A replica keeps no Raft journal, so a later promotion starts a voter's afresh, never from a replica's."""
    journal.remove_files(*files[:2])
    journal.remove_files(files[2], None)      # shoutd 0.1's log


def control_plane(cfg, member_file, files):
    """(the RaftNode, or a ReplicaNode on a replica, and the join handler), as members.json and the config say."""
    peers = cfg.peer_addresses()
    remembered = [m for m in member_file.known if m != cfg.raft_address]
    secret, from_file = configmod.read_secret(cfg, multi_host=bool(peers or remembered or member_file.replica_of))
    if not from_file:
        log.info("no cluster secret at %s: this single host uses a random one; create the file "
                 "before adding peers", cfg.secret_file)
    if member_file.replica_of:
        forget_raft_files(files)
        log.info("member %s, replica of %s", cfg.raft_address, ", ".join(member_file.replica_of))
        return ReplicaNode(cfg.raft_address, member_file.replica_of, secret), None
    peers = sorted(set(peers) | set(remembered))
    log.info("member %s, peers: %s", cfg.raft_address, ", ".join(peers) or "none (single host)")
    host, port = cfg.raft_address.rsplit(":", 1)
    check_port_free(host, int(port))
    joins = JoinRequests(cfg.raft_address, on_join=None)
    raft = RaftNode(cfg.raft_address, peers, secret, journal_file=files[0], dump_file=files[1],
                    legacy_journal=files[2], durable=cfg.journal_sync,
                    utility_messages={**joins.handlers(), VERSION: answer_version(STATE_VERSION)})
    joins.node = raft
    return raft, joins


def main(argv=None):
    try:
        cfg = configmod.load(argv)
    except ShoutdError as e:
        print("shoutd: %s" % e, file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    try:
        check_state_version(cfg.state_dir)        # before anything reads or writes the state
    except ShoutdError as e:
        log.error("%s", e)
        return EXIT_NEWER_STATE
    # `kill -USR1` writes every thread's stack to the log: what a wedged daemon is doing.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    worker = None
    raft = None
    try:
        check_pysyncobj()
        passed = activated_sockets()
        worker = Worker()
        notifier = Notifier()
        underlay = find_underlay(worker, cfg, notifier)
        os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
        member_file = MemberFile(cfg.state_dir)
        # The journal, the snapshot, and shoutd 0.1's log.
        files = [os.path.join(cfg.state_dir, name) for name in ("raft.log", "raft.dump", "raft.journal")]
        if not cfg.journal_sync:
            log.warning("journal_sync is off: acknowledged changes survive a crash of shoutd, not a power loss")
        while True:
            raft, joins = control_plane(cfg, member_file, files)

            async def run():
                return await Daemon(cfg, raft, worker, underlay, notifier, member_file, joins, passed).run()
            code = asyncio.run(run())
            if code != AGAIN:
                return code
            # Joined as a replica, or promoted to voter: the same process goes on with another control
            # plane (members.json says which); the kernel's data plane and the worker stay as they are.
            raft.destroy()
            raft = None
            forget_raft_files(files)
            log.info("starting again in place as %s", "a replica" if member_file.replica_of else "a voter")
    except ShoutdError as e:
        log.error("%s", e)
        return 1
    finally:
        if raft is not None:
            raft.destroy()
        if worker is not None:
            worker.close()
