"""Who listens to which group: learned on each host, shared through the cluster state.

A pruned network sends a routable group only to the hosts whose containers
listen to it (dataplane/desired.py).  Each network's `listeners` in the
replicated state say which those are, and three things keep them true:

- This host reports its own.  Its bridges snoop IGMP and MLD; every change of
  the kernel's multicast database wakes the reporter (an RTNLGRP_MDB socket),
  which waits BATCH for the rest of a burst, reads the bridges' databases and
  proposes, in one operation, this host's groups for every network where they
  differ from the state.  A hundred joins at once cost one or two commits.
- Every pass compares the whole picture, not the change that woke it: after a
  restart, a lost commit or a withdrawal, the next pass (at the latest every
  `interval` seconds) puts it right, so no group stays open or closed by mistake.
- The leader forgets the groups of a member it has not heard from for
  SILENT_AFTER seconds (a host that died keeps no traffic flowing to it); the
  member reports them again once it is back.  A replica is not in Raft: the
  voter it followed forgets its groups once no voter serves it for as long.

Why the replicated state rather than a channel of its own: listeners change
at the pace of containers starting and stopping, a burst costs few commits,
and it is the one channel that is already authenticated, ordered and the
same on every host, so the reconciler derives the kernel's MDB exactly as
it derives everything else.
"""

import asyncio
import logging

from . import checks
from .dataplane.desired import bridge_name, vxlan_name
from .dataplane.mdb import listen_socket
from .errors import ShoutdError
from .kickloop import KickLoop
from .state import network_label, ops, pruned

log = logging.getLogger(__name__)

BATCH = 0.1            # seconds a kicked pass waits for the rest of a burst of joins
SILENT_AFTER = 10.0    # seconds without a word from a member before its groups are withdrawn


class Listeners(KickLoop):
    def __init__(self, worker, node, view, submit, interval=10.0, clock=None, replicas_gone=dict,
                 served_elsewhere=None):
        super().__init__(interval, view.caught_up)
        self.replicas_gone = replicas_gone          # () -> {replica: when its session on this voter ended}
        self.served_elsewhere = served_elsewhere    # async (replica) -> whether another voter serves it
        self.worker = worker
        self.node = node
        self.view = view                  # state, status, caught_up (the RaftNode)
        self.submit = submit
        self.clock = clock or (lambda: asyncio.get_running_loop().time())
        self._sock = None
        self._silent_since = {}           # member -> when this leader first found it silent

    def start(self):
        super().start()
        try:
            self._sock = listen_socket()
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._mdb_changed)
        except OSError as e:
            log.warning("cannot follow the multicast database (%s): listeners are looked at every %.0f s",
                        e, self.interval)
        self.kick()

    async def stop(self):
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
        await super().stop()

    def _mdb_changed(self):
        try:
            while self._sock.recv(65536):
                pass
        except BlockingIOError:
            pass
        self.kick()

    async def step(self, periodic):
        if not periodic:
            await asyncio.sleep(BATCH)
        await self.report()
        await self.withdraw_silent()
        await self.withdraw_gone_replicas()

    async def report(self):
        """Propose this host's groups wherever the state says otherwise."""
        nets = [n for n in self.view.state.networks.values() if pruned(n)]
        if not nets:
            return
        bridges = {bridge_name(n["vni"]): vxlan_name(n["vni"]) for n in nets}
        found = await self.worker.run(lambda nl: nl.local_groups(bridges))
        changes = {}
        for net in nets:
            # IPv4 only: IPv6 multicast floods (the bridge is no MLD querier: dataplane/netlink.py).
            groups = sorted((g for g in found.get(bridge_name(net["vni"]), ()) if ":" not in g),
                            key=checks.group_order)
            if len(groups) > checks.MAX_GROUPS:
                log.warning("network %s: containers here listen to %d groups; only the first %d are pruned for",
                            network_label(net), len(groups), checks.MAX_GROUPS)
                groups = groups[:checks.MAX_GROUPS]
            if groups != net["listeners"].get(self.node, []):
                changes[net["id"]] = groups
        if not changes:
            return
        try:
            await self.submit(ops.groups_set(self.node, changes))
        except ShoutdError as e:
            log.warning("cannot report this host's multicast listeners: %s; trying again", e)
            self.kick(delay=1.0)
            return
        for net_id, groups in changes.items():
            net = self.view.state.networks.get(net_id)
            label = network_label(net) if net else net_id
            log.info("network %s VNI %s: this host listens to %s", label, net["vni"] if net else "?",
                     ", ".join(groups) or "no group")

    async def withdraw_silent(self):
        """On the leader: forget the groups of members that stopped answering."""
        status = self.view.status
        if status.role != "leader":
            self._silent_since.clear()
            return
        now = self.clock()
        silent = set(status.silent)
        self._silent_since = {m: t for m, t in self._silent_since.items() if m in silent}
        for member in sorted(silent):
            since = self._silent_since.setdefault(member, now)
            if now - since < SILENT_AFTER:
                self.kick(delay=SILENT_AFTER - (now - since) + 0.1)
                continue
            if not any(member in n["listeners"] for n in self.view.state.networks.values()):
                continue
            try:
                count = await self.submit(ops.groups_withdraw(self.node, member))
            except ShoutdError as e:
                log.warning("cannot withdraw the multicast listeners of silent member %s: %s", member, e)
                continue
            log.info("member %s silent for %.0f s: its multicast listeners withdrawn from %d network(s)",
                     member, now - since, count)

    async def withdraw_gone_replicas(self):
        """On a voter: forget the groups of a replica that left it SILENT_AFTER ago and that no other voter serves.

        Replicas are not in Raft, so no silence there tells of them; their
        voter is the one that knows (raft/feed.py).  A replica that merely
        moved to another voter is served there, and keeps its groups.
        """
        gone = self.replicas_gone()
        now = self.clock()
        for member, since in sorted(gone.items()):
            if now - since < SILENT_AFTER:
                self.kick(delay=SILENT_AFTER - (now - since) + 0.1)
                continue
            if not any(member in n["listeners"] for n in self.view.state.networks.values()) or (
                    self.served_elsewhere is not None and await self.served_elsewhere(member)):
                gone.pop(member, None)
                continue
            try:
                count = await self.submit(ops.groups_withdraw(self.node, member))
            except ShoutdError as e:
                log.warning("cannot withdraw the multicast listeners of replica %s: %s", member, e)
                continue
            gone.pop(member, None)
            log.info("replica %s gone for %.0f s and served by no voter: its multicast listeners withdrawn from "
                     "%d network(s)", member, now - since, count)
