"""Keep the local Docker engine's shoutd networks in step with the cluster.

Docker's plugin API never tells a driver a network's name, and a local-scope
driver's networks exist only in the engine where they were created.  So, like
the kernel reconciler but for Docker's own view, this loop compares the
engine's shoutd networks with the cluster's:
- a network created here but not yet named in the cluster gets its name
  recorded, with its identity as this engine holds it: labels, --internal,
  --attachable, driver and IPAM options (this is how `docker network create`
  or Compose on one host reaches the rest);
- a named cluster network this engine lacks is created here through the
  engine API with that same identity, so Compose on every host finds the
  network it expects (Compose v2 checks its labels, v1 its options); our IPAM
  hands back the cluster's pool because the service is told which copy is
  being made (Service.making_replica).  This also restores a network removed
  here while containers elsewhere still use it;
- a local shoutd network the cluster no longer has (removed on another host)
  is removed here.
It runs on every change to the cluster's networks, after each CreateNetwork
(and soon again while a network created here has no name yet), and periodically, and only once the control plane has caught up (kickloop.py),
so an unreplayed state never deletes anything.

Docker drops a network from its list as soon as `docker network rm` starts,
before it calls our DeleteNetwork, which then settles the cluster's view
(removes the network, or unbinds this host so that the copy comes back).  So a
network still bound to this host but missing here is left alone for a while:
only a binding missing for longer than STALE_BINDING (Docker lost its copy
without telling us) makes the copy again.
"""

import logging
import time

from .. import checks
from ..errors import ShoutdError
from ..kickloop import KickLoop
from ..service import NETWORK_OPTION
from ..state import ops

log = logging.getLogger(__name__)

STALE_BINDING = 30.0    # seconds; well beyond a DeleteNetwork's commit timeout
# A network just created here may not be listed by Docker at the first look (Docker calls our
# CreateNetwork before it stores the network): look again this often, for this long, so that its
# name reaches the cluster (and `shoutdctl network NAME`) in about a second, not at the next pass.
UNNAMED_RETRY = 0.5
UNNAMED_PATIENCE = 60.0


class Mirror(KickLoop):
    def __init__(self, engine, driver, node, submit, view, making_replica, interval=10.0, clock=time.monotonic):
        super().__init__(interval, view.caught_up)
        self.engine = engine
        self.driver = driver
        self.node = node
        self.submit = submit
        self.view = view
        self.making_replica = making_replica
        self.clock = clock
        self._reported = set()
        self._missing = {}          # (network id, Docker id) bound here but not in Docker -> since when
        self._unnamed = {}          # network id bound here whose name is not known yet -> since when

    async def step(self, periodic):
        try:
            await self.compare_and_fix()
        except ShoutdError as e:
            self._report("docker", "cannot mirror networks into Docker: %s" % e)

    def _report(self, key, message):
        """Log a persistent problem once, not on every pass."""
        if key not in self._reported:
            self._reported.add(key)
            log.warning("%s", message)

    async def compare_and_fix(self):
        """One comparison of this engine's shoutd networks with the cluster's, and what follows."""
        local = await self.engine.networks(self.driver)
        self._reported.discard("docker")
        state = self.view.state          # read after listing: see the module note
        local_names = {n["Name"] for n in local}
        local_ids = {n["Id"] for n in local}
        for dn in local:
            net = state.network_by_docker_id(self.node, dn["Id"])
            if net is None:
                await self._remove_stale(dn)
            elif net["name"] is None:
                await self._name(net, dn)
        now, missing = self.clock(), {}
        # The state is live and this loop awaits Docker: iterate over a list.
        for net in list(state.networks.values()):
            bound = net["bindings"].get(self.node)
            if net["name"] is None or bound in local_ids:
                continue
            if bound is not None:       # being removed here, most likely: see the module note
                since = missing[net["id"], bound] = self._missing.get((net["id"], bound), now)
                if now - since < STALE_BINDING:
                    continue
            if net["name"] in local_names:
                self._report("clash " + net["id"], "cannot mirror shoutd network %s: this host's "
                             "Docker already has a different network with that name" % net["name"])
                continue
            await self._create(net)
        self._missing = missing
        self._look_again_for_unnamed(state, now)

    def _look_again_for_unnamed(self, state, now):
        # A swarm network stays unnamed: Docker has it from swarm, not from this mirror.
        unnamed = [n["id"] for n in state.networks.values()
                   if n["name"] is None and self.node in n["bindings"] and "swarm" not in n]
        self._unnamed = {net_id: self._unnamed.get(net_id, now) for net_id in unnamed}
        if any(now - since < UNNAMED_PATIENCE for since in self._unnamed.values()):
            self.kick(delay=UNNAMED_RETRY)

    async def _name(self, net, dn):
        try:
            identity = identity_of(await self.engine.inspect_network(dn["Id"]))
            await self.submit(ops.network_name(self.node, net["id"], dn["Name"], identity))
            log.info("network %s (%s, VNI %d) is now known cluster-wide", dn["Name"], net["subnet"],
                     net["vni"])
        except ShoutdError as e:
            self._report("name " + net["id"], "network %s: %s" % (dn["Name"], e))

    async def _create(self, net):
        identity = dict(net["identity"]) or {"options": dict(net["options"])}
        try:
            with self.making_replica(net["id"], net["subnet"]):
                await self.engine.create_network(net["name"], self.driver, net["subnet"], net["gateway"], identity)
            self._reported.discard("create " + net["id"])
            log.info("network %s (%s, VNI %d) created in the local Docker engine", net["name"],
                     net["subnet"], net["vni"])
        except ShoutdError as e:
            self._report("create " + net["id"], "cannot create network %s in the local Docker engine: %s"
                         % (net["name"], e))

    async def _remove_stale(self, dn):
        try:
            await self.engine.remove_network(dn["Id"])
            log.info("network %s removed from the local Docker engine: it was removed on another host",
                     dn["Name"])
        except ShoutdError as e:
            self._report("remove " + dn["Id"], "network %s was removed on another host but cannot be "
                         "removed here: %s" % (dn["Name"], e))


def identity_of(info):
    """A network's identity (checks.identity) from Docker's inspect output."""
    ipam = info.get("IPAM") or {}
    ipam_options = {k: v for k, v in (ipam.get("Options") or {}).items() if k != NETWORK_OPTION}
    return checks.identity({"labels": info.get("Labels") or {}, "internal": bool(info.get("Internal")),
                            "attachable": bool(info.get("Attachable")), "options": info.get("Options") or {},
                            "ipam_options": ipam_options})
