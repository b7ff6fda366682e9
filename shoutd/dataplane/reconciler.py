"""The one reconciler: make this host's kernel match the cluster state.

Handlers never program the kernel themselves.  They change the replicated
state and then wait for a pass that started after their change
(`await reconciler.reconcile()`), so Join returns only once its veth exists.
A pass runs on every state change, at start-up and every `interval` seconds
(to repair what someone deleted by hand); passes coalesce, and each one is
idempotent: it creates what is missing, fixes what differs, removes shoutd
objects the state no longer names, and touches nothing that already matches.
A kicked pass touches only what changed since the last pass that succeeded
(its plan, from `desired`), and nothing at all when the plan is the same: many
state changes (an address allocated, a Join after its CreateEndpoint) change
nothing here, and `docker run` waits for the pass.  The first pass, the one
after a failure, and the periodic one check every object in the kernel.

Ordering keeps half-built objects out of the traffic path: a VXLAN device is
enslaved and given its FDB before it is set up; a network's devices are
removed only after its veths.  No pass runs before the control plane has
caught up (see kickloop.py), so a restarting daemon never mistakes an empty,
not-yet-replayed state for "delete everything".

The reconciler sees the control plane through one narrow interface, `view`:
its `state` (read-only) and its `caught_up` event.
"""

import asyncio
import logging
import time
from collections import namedtuple
from dataclasses import dataclass

from ..errors import INTERNAL, ShoutdError
from ..kickloop import KickLoop
from .firewall import Firewall
from .fence import Fence
from .desired import BRIDGE_PREFIX, HOST_VETH_PREFIX, OWNED, PEER_VETH_PREFIX, VXLAN_OVERHEAD, VXLAN_PREFIX, desired

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Underlay:
    local: str      # this host's VTEP address
    port: int       # VXLAN UDP port of the networks that record none (made before state version 4)
    index: int      # ifindex of the underlay interface
    mtu: int        # its MTU
    vxlan_mdb: bool = True   # the kernel can send a group to chosen VTEPs only (Linux 6.4+)

    @property
    def overlay_mtu(self):
        return self.mtu - VXLAN_OVERHEAD


Waiter = namedtuple("Waiter", "generation future")   # a reconcile() call, served by a pass from `generation`


def program(nl, networks, endpoints, underlay, previous=None, fence=None, firewall=None):
    """Make the kernel match; runs on the netlink worker thread.

    With `previous`, the plan the kernel was last brought to, only what
    changed since is touched: a container start costs one veth, not a check
    of every object on the host.  Without it, everything is checked and any
    shoutd object the plan does not name is removed.
    """
    mtu = underlay.overlay_mtu
    before_nets, before_eps = previous if previous is not None else ((), ())
    bridges = {}
    created = False     # a network or endpoint new to this host: where br_netfilter may have come since
    before_ids = {n.id for n in before_nets}
    mdb = None         # one dump for the pass: each network's MDB ensures touch only its own devices
    pinned = None      # the same for the MACs pinned to veths
    for net in networks:
        if net in before_nets:
            continue
        created = created or net.id not in before_ids
        alias = "shoutd " + net.label
        bridges[net.bridge] = nl.ensure_bridge(net.bridge, mtu, alias, net.snooping)
        nl.ensure_vxlan(net.vxlan, net.vni, underlay.local, net.port or underlay.port, underlay.index, mtu,
                        bridges[net.bridge], alias)
        nl.ensure_fdb(net.vxlan, set(net.fdb))
        if net.snooping:
            nl.ensure_not_router_port(net.vxlan)
            if mdb is None:
                mdb = nl.mdb_entries()
            nl.ensure_bridge_mdb(net.bridge, net.vxlan, set(net.bridge_mdb), mdb)
            if underlay.vxlan_mdb:
                nl.ensure_vxlan_mdb(net.vxlan, set(net.vxlan_mdb), mdb)
        nl.ensure_up(net.vxlan)
    for ep in endpoints:
        if ep in before_eps:
            continue
        created = True
        if ep.bridge not in bridges:
            bridges[ep.bridge] = nl.index(ep.bridge)
        if pinned is None:
            pinned = nl.pinned()
        nl.ensure_veth(ep.host, ep.peer, ep.mac, mtu, bridges[ep.bridge], "shoutd " + ep.label, pinned)
    wanted = {ep.host for ep in endpoints} | {ep.peer for ep in endpoints}
    wanted |= {net.bridge for net in networks} | {net.vxlan for net in networks}
    if previous is None:
        present = nl.link_names(OWNED)
    else:
        present = {ep.host for ep in before_eps} | {net.bridge for net in before_nets} | \
            {net.vxlan for net in before_nets}
    stale = [n for n in present if n not in wanted]
    # veths before VXLANs before bridges: nothing is left pointing at a gone master.
    order = {HOST_VETH_PREFIX: 0, PEER_VETH_PREFIX: 0, VXLAN_PREFIX: 1, BRIDGE_PREFIX: 2}
    for name in sorted(stale, key=lambda n: order[n[:3]]):
        log.info("removing %s: no longer in the cluster state", name)
        nl.delete(name)
    # Docker may load br_netfilter after our first pass (shoutd starts first at
    # boot), so look again whenever a container or network arrives here, and in
    # every full pass; not when only a network's groups or remote MACs changed.
    if networks and created and firewall is not None:
        firewall.ensure()
    fenced = {net.vxlan for net in networks if net.snooping}
    if fence is not None and (previous is None or fenced != {net.vxlan for net in before_nets if net.snooping}):
        fence.ensure(fenced)


class Reconciler(KickLoop):
    def __init__(self, worker, node, underlay, view, interval=30.0, fence=None, firewall=None):
        super().__init__(interval, view.caught_up)
        self.worker = worker
        self.fence = fence if fence is not None else Fence()
        self.firewall = firewall if firewall is not None else Firewall()
        self.node = node
        self.underlay = underlay
        self.view = view
        self._wanted = 0
        self._waiters = []
        self._applied = None      # the plan the last pass applied without error

    def start(self):
        super().start()
        self.kick()

    def kick(self, delay=0.0):
        """Ask for a pass; returns its number, for reconcile()."""
        self._wanted += 1
        super().kick(delay)
        return self._wanted

    async def reconcile(self, timeout=30.0):
        """Ask for a pass and wait for one that started after now; raise its error."""
        waiter = Waiter(self.kick(), asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        await asyncio.wait_for(waiter.future, timeout)

    async def step(self, periodic=False):
        generation = self._wanted          # every kick so far is served by this pass
        error = await self._pass(full=periodic)
        for waiter in [w for w in self._waiters if w.generation <= generation]:
            self._waiters.remove(waiter)
            if not waiter.future.done():
                if error is None:
                    waiter.future.set_result(None)
                else:
                    waiter.future.set_exception(error)

    async def _pass(self, full):
        plan = desired(self.view.state, self.node)
        previous = None if full else self._applied
        if plan == previous:
            return None
        self._applied = None        # until this pass succeeds, the next one checks everything
        started = time.monotonic()
        try:
            await self.worker.run(program, *plan, self.underlay, previous, self.fence, self.firewall)
        except ShoutdError as e:
            log.error("reconcile failed: %s", e)
            return e
        except Exception as e:  # noqa: BLE001 - the loop must survive a bug
            log.exception("bug: reconcile failed")
            return ShoutdError("internal error while programming the kernel: %s" % e, INTERNAL)
        self._applied = plan
        networks, endpoints = plan
        log.debug("reconciled %d networks, %d local endpoints in %.1f ms (%s)", len(networks), len(endpoints),
                  (time.monotonic() - started) * 1000, "changes only" if previous else "full check")
        return None
