"""The cluster's members and what this host sees of it: AddPeer, RemovePeer, Status (D-Bus, shoutdctl)."""

import asyncio
import ipaddress
import logging
import time

from .. import checks
from ..errors import CONFLICT, INVALID, NO_QUORUM, NOT_FOUND, UNAVAILABLE, ShoutdError
from ..raft import ask_to_join, ask_version
from ..raft.feed import feed_address
from ..roles import voter_target
from ..state import BASE_VERSION, STATE_VERSION, ops

log = logging.getLogger(__name__)

# busctl and most D-Bus callers give up on a method after 25 s: answer before that, with our own error.
CHANGE_BUDGET = 20.0
JOIN_ASK_TIMEOUT = 5.0


class Membership:
    def __init__(self, cluster):
        self.cluster = cluster

    def _need_quorum(self):
        st = self.cluster.raft.status
        if st.leader is None or not st.has_quorum:
            raise ShoutdError("membership cannot change: " +
                              self.cluster.raft.no_quorum_message(self.cluster.describe_member),
                              UNAVAILABLE, NO_QUORUM)
        return st

    def _address(self, address):
        return checks.member_address(address, self.cluster.config.raft_port, "peer")

    async def add_peer(self, address):
        """Join the host at `address`: as a voter while voters are missing (roles.py), else as a replica."""
        addr = self._address(address)
        if self.cluster.raft.status.role == "replica":
            return await self.cluster.raft.relay_membership("add", addr)      # to its voter, as if called there
        st = self._need_quorum()
        state = self.cluster.state()
        if addr in st.nodes or addr in state.members:
            raise ShoutdError("%s is already a member of the cluster" % addr, CONFLICT, "AlreadyMember")
        raft = self.cluster.raft
        began = time.monotonic()
        await self._runs_cluster_version(addr)
        while True:
            st, state = self._need_quorum(), self.cluster.state()
            recorded = list(state.data["voters"])
            if not recorded:
                # A cluster before state version 6: every host votes, and Raft changes here.
                members = sorted(set(st.nodes) | {addr})
                await ask_to_join(raft.secret, addr, members, timeout=JOIN_ASK_TIMEOUT)
                await raft.change_membership("add", addr, timeout=CHANGE_BUDGET - (time.monotonic() - began))
                break
            if len(recorded) >= voter_target(len(set(st.nodes) | set(state.members) | {addr})):
                return await self._add_replica(addr, recorded, began)
            # The record leads and the leader's loop changes Raft (roles.Voters); undone if the host refuses.
            try:
                await self.cluster.submit(ops.voters_set(self.cluster.node, recorded + [addr], recorded))
            except ShoutdError as e:
                if e.kind != CONFLICT or time.monotonic() - began > CHANGE_BUDGET:
                    raise
                continue          # another AddPeer, or the leader promoting a replica, came first: decide again
            members = sorted(set(st.nodes) | {addr})
            try:
                await ask_to_join(raft.secret, addr, members, timeout=JOIN_ASK_TIMEOUT)
            except ShoutdError:
                await self._unrecord(addr)
                raise
            # Done once the new voter is in Raft and has registered through it: then the cluster commits
            # with it (a second AddPeer right after needs that quorum).
            await self._until(lambda: addr in raft.status.nodes and addr in self.cluster.state().members, began,
                              "%s was added to Raft but has not registered through the cluster" % addr)
            break
        log.info("peer %s added to the cluster; members now %s", addr, ", ".join(sorted(raft.status.nodes)))
        return addr

    async def _unrecord(self, addr):
        """Take `addr` off the recorded voters, whatever else changed them since."""
        for _ in range(5):
            voters = self.cluster.state().data["voters"]
            if addr not in voters:
                return
            try:
                await self.cluster.submit(ops.voters_set(self.cluster.node, [v for v in voters if v != addr], voters))
                return
            except ShoutdError as e:
                if e.kind != CONFLICT:
                    raise
        log.warning("could not take %s off the recorded voters; the leader removes it once it is silent for "
                    "voter_lost_after", addr)

    @staticmethod
    async def _until(done, began, failure):
        while not done():
            if time.monotonic() - began > CHANGE_BUDGET:
                raise ShoutdError("%s within %gs" % (failure, CHANGE_BUDGET), UNAVAILABLE)
            await asyncio.sleep(0.1)       # another host acts: the leader's loop (roles.Voters), or the new host

    async def _add_replica(self, addr, voters, began):
        """A replica joins by registering through a voter: no Raft membership change."""
        await ask_to_join(self.cluster.raft.secret, addr, voters, timeout=JOIN_ASK_TIMEOUT, replica=True)
        await self._until(lambda: addr in self.cluster.state().members, began,
                          "%s agreed to join as a replica of %s but has not registered through one of them (it "
                          "must reach a voter on TCP %s; see its log)"
                          % (addr, ", ".join(voters), feed_address(voters[0]).rsplit(":", 1)[1]))
        log.info("peer %s added to the cluster as a replica of %s", addr, ", ".join(voters))
        return addr

    async def _runs_cluster_version(self, addr):
        """Refuse a host whose release cannot run the cluster's state version, before it leaves its own cluster."""
        needed = self.cluster.state().version
        if needed <= BASE_VERSION:
            return                        # every release since 0.2 runs it
        runs = await ask_version(self.cluster.raft.secret, addr)
        if runs is None:
            raise ShoutdError("host %s did not say which state version its shoutd runs: is shoutd running there, "
                              "listening on that address, with the same cluster secret? (shoutd 0.2 does not say "
                              "either, and the cluster runs state version %d: upgrade it first)" % (addr, needed),
                              CONFLICT, "UpgradeNeeded")
        if runs < needed:
            raise ShoutdError("upgrade %s first: the cluster runs state version %d, and its shoutd runs up to %d"
                              % (addr, needed, runs), CONFLICT, "UpgradeNeeded")

    async def remove_peer(self, address):
        addr = self._address(address)
        if addr == self.cluster.node:
            raise ShoutdError("%s is this host; run RemovePeer on another member" % addr, INVALID, "InvalidAddress")
        if self.cluster.raft.status.role == "replica":
            return await self.cluster.raft.relay_membership("remove", addr)
        st = self._need_quorum()
        if addr not in st.nodes and addr not in self.cluster.state().members:
            raise ShoutdError("%s is not a member of the cluster" % addr, NOT_FOUND, "NotMember")
        if addr in self.cluster.state().data["voters"]:
            # Removing the member takes it off the record too; the leader's loop (roles.Voters) then
            # takes it out of Raft, and promotes no one in its place for it.
            began = time.monotonic()
            state = self.cluster.state()
            if addr in state.members:
                await self.cluster.submit(ops.member_remove(addr))
            else:
                await self._unrecord(addr)
            await self._until(lambda: addr not in self.cluster.raft.status.nodes, began,
                              "the cluster did not remove %s from Raft" % addr)
        elif addr in st.nodes:
            await self.cluster.raft.change_membership("rem", addr, timeout=CHANGE_BUDGET)
        if addr in self.cluster.state().members:
            await self.cluster.submit(ops.member_remove(addr))
        log.info("peer %s removed from the cluster", addr)
        return addr

    def status(self):
        """This host's view: Raft roles, members, networks.  O(members + networks), no copies."""
        raft = self.cluster.raft
        st, state = raft.status, self.cluster.state()
        members = []
        # Voters are Raft's members; replicas (roles.py) are registered members outside Raft.
        replicas = {m: "replica" for m in state.members if state.role(m) == "replica" and m not in st.nodes}
        for addr, conn in sorted({**st.nodes, **replicas}.items()):
            rec = state.members.get(addr, {})
            members.append({"address": addr, "vtep": rec.get("advertise", ""), "hostname": rec.get("hostname", ""),
                            "state": "leader" if addr == st.leader else conn})
        networks = [{"name": n["name"] or "", "subnet": n["subnet"], "vni": n["vni"], "id": n["id"],
                     "endpoints": len(n["endpoints"]), "addresses": len(n["addresses"]),
                     "multicast": n["multicast"] or "", "groups": self._groups(state, n)}
                    for n in sorted(state.networks.values(), key=lambda n: n["vni"])]
        applied, digest = state.applied
        return {"self": self.cluster.node, "leader": st.leader or "", "term": st.term,
                "quorum": st.has_quorum, "ready": raft.caught_up.is_set() and st.has_quorum,
                "members": members, "networks": networks, "applied": applied, "digest": digest,
                "commit_index": st.commit_index, "last_applied": st.last_applied,
                "kernel_prunes": self.cluster.kernel_prunes, "unreachable": list(st.unreachable),
                "firewall": list(self.cluster.firewall.problems),
                "leader_changed": st.leader_changed, "slowest_flush": raft.slowest_flush(),
                "state_version": state.version, "runs_state_version": STATE_VERSION, "halted": raft.halted or "",
                "releases": {m: rec.get("release", "") for m, rec in state.members.items()},
                "roles": {m["address"]: state.role(m["address"]) for m in members}}

    def _groups(self, state, net):
        """[(group, ["hostname (VTEP)"])] of a pruned network: who listens to what."""
        by_group = {}
        for member, groups in net["listeners"].items():
            for g in groups:
                by_group.setdefault(g, []).append(self.cluster.describe_member(member))
        return [(g, sorted(by_group[g])) for g in sorted(by_group, key=checks.group_order)]

    def network(self, ident):
        """One network in full: which host holds which address (for `shoutdctl network`)."""
        state = self.cluster.state()
        net = state.network_by_name(ident) if isinstance(ident, str) else None
        net = net or state.networks.get(ident) or next(
            (n for n in state.networks.values() if ident and ident in n["bindings"].values()), None)
        if net is None:
            raise ShoutdError("no shoutd network named %r; `shoutdctl networks` lists them" % (ident,), NOT_FOUND,
                              "NotFound")
        addresses = []
        for ip, holder in sorted(net["addresses"].items(), key=lambda kv: ipaddress.IPv4Address(kv[0])):
            rec = state.members.get(holder["node"], {})
            addresses.append({"ip": ip, "host": rec.get("hostname", ""), "member": holder["node"],
                              "endpoint": net["endpoints"].get(ip, "")})
        return {"name": net["name"] or "", "id": net["id"], "subnet": net["subnet"], "gateway": net["gateway"],
                "vni": net["vni"], "port": net.get("port") or self.cluster.config.legacy_port,
                "hosts": sorted(net["bindings"]), "addresses": addresses,
                "multicast": net["multicast"] or "", "groups": self._groups(state, net)}
