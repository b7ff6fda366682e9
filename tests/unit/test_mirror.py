"""The network mirror against a fake Docker engine: what it creates, names and removes, and when."""

import asyncio
import contextlib

from shoutd.docker.mirror import STALE_BINDING, UNNAMED_PATIENCE, UNNAMED_RETRY, Mirror
from shoutd.state import ClusterState

from ..support import docker_id

HERE, THERE = "198.18.0.1:7380", "198.18.0.2:7380"


class FakeEngine:
    """Docker's network API as the mirror uses it; `inspect` holds what `docker network inspect` shows."""

    def __init__(self, networks=(), inspect=None):
        self.list = [dict(n) for n in networks]
        self.inspect = inspect or {}
        self.created, self.removed, self.bodies = [], [], []

    async def networks(self, driver):
        return [dict(n) for n in self.list]

    async def inspect_network(self, network_id):
        return self.inspect.get(network_id, {"Id": network_id})

    async def create_network(self, name, driver, subnet, gateway, identity):
        self.created.append(name)
        self.bodies.append((name, driver, subnet, gateway, identity))

    async def remove_network(self, network_id):
        self.removed.append(network_id)


class View:
    """The control plane as the mirror sees it (a RaftNode in the daemon)."""

    def __init__(self, state):
        self.state = state
        self.caught_up = None


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def cluster(bound_here=None, name="web"):
    """One named network, bound on THERE and, if given, to a Docker id HERE."""
    state = ClusterState()
    net = state.apply({"op": "network_reserve", "req": "r", "node": THERE, "pool": "10.213.0.0/16",
                       "pool_prefix": 24})["value"]
    for node, bound in ((THERE, docker_id("d-there")), (HERE, bound_here)):
        if bound:
            assert "error" not in state.apply({"op": "network_bind", "network": net["id"], "node": node,
                                               "docker_id": bound, "options": {}})
    if name:
        state.apply({"op": "network_name", "network": net["id"], "name": name, "node": THERE})
    return state


def mirror(engine, state, clock=None):
    submitted = []

    async def submit(op):
        submitted.append(op)
        return state.apply(op)["value"]
    making = []

    @contextlib.contextmanager
    def making_replica(net_id, subnet):
        making.append((net_id, subnet))
        yield
    m = Mirror(engine, "shoutd", HERE, submit, View(ClusterState(state.data)), making_replica,
               clock=clock or Clock())
    m.making = making
    return m, submitted


def test_a_network_of_another_host_is_created_here():
    engine = FakeEngine()
    m, _ = mirror(engine, cluster())
    asyncio.run(m.step(periodic=False))
    assert engine.created == ["web"]


def test_a_network_being_removed_here_is_not_created_again():
    """Docker hides it from the list before it calls DeleteNetwork; the mirror must wait for that."""
    engine, clock = FakeEngine(), Clock()
    m, _ = mirror(engine, cluster(bound_here=docker_id("d-here")), clock)
    for _ in range(3):
        asyncio.run(m.step(periodic=False))
        clock.now += 5
    assert engine.created == []
    clock.now += STALE_BINDING          # Docker lost its copy without a DeleteNetwork: make it again
    asyncio.run(m.step(periodic=True))
    assert engine.created == ["web"]


def test_a_network_here_unknown_to_the_cluster_is_removed_and_an_unnamed_one_is_named():
    state = cluster(bound_here=docker_id("d-here"), name=None)
    engine = FakeEngine([{"Id": docker_id("d-here"), "Name": "web"}, {"Id": docker_id("d-old"), "Name": "old"}])
    m, submitted = mirror(engine, state)
    asyncio.run(m.step(periodic=False))
    assert engine.removed == [docker_id("d-old")]
    assert [op["op"] for op in submitted] == ["network_name"] and state.networks
    assert next(iter(state.networks.values()))["name"] == "web"
    assert engine.created == []


def test_a_network_keeps_its_identity_on_every_host():
    """Labels, --internal, --attachable, driver and IPAM options, read from the creating host's Docker."""
    state = cluster(bound_here=docker_id("d-here"), name=None)
    inspect = {docker_id("d-here"): {
        "Id": docker_id("d-here"), "Name": "web_lan", "Internal": True, "Attachable": True,
        "Labels": {"com.docker.compose.network": "lan", "com.docker.compose.project": "web", "tier": "front"},
        "Options": {"mtu": "1400"},
        "IPAM": {"Driver": "shoutd", "Options": {"foo": "bar"}, "Config": [{"Subnet": "10.213.0.0/24"}]}}}
    here = FakeEngine([{"Id": docker_id("d-here"), "Name": "web_lan"}], inspect)
    m, submitted = mirror(here, state)
    asyncio.run(m.step(periodic=False))
    assert [op["op"] for op in submitted] == ["network_name"]
    # Another host: its engine has nothing yet.
    there = FakeEngine()
    other = Mirror(there, "shoutd", "198.18.0.3:7380", None, View(ClusterState(state.data)),
                   lambda net_id, subnet: contextlib.nullcontext())
    asyncio.run(other.step(periodic=False))
    net = next(iter(state.networks.values()))
    assert there.bodies == [("web_lan", "shoutd", net["subnet"], net["gateway"], {
        "internal": True, "attachable": True, "options": {"mtu": "1400"}, "ipam_options": {"foo": "bar"},
        "labels": {"com.docker.compose.network": "lan", "com.docker.compose.project": "web", "tier": "front"}})]


def test_the_copy_carries_no_option_of_shoutd_s_own():
    """Compose v1 compares IPAM options with its file: a marker option made it refuse the network."""
    engine = FakeEngine()
    m, _ = mirror(engine, cluster())
    asyncio.run(m.step(periodic=False))
    (_, _, subnet, _, identity), = engine.bodies
    assert "shoutd.network" not in identity.get("ipam_options", {})
    assert m.making == [(next(iter(cluster().networks)), subnet)], "the service is told which copy is made"


def unnamed_here():
    """A network bound here that Docker does not list yet: (engine, clock, mirror, submitted, kicks asked)."""
    engine, clock = FakeEngine(), Clock()
    m, submitted = mirror(engine, cluster(bound_here=docker_id("d-here"), name=None), clock)
    kicks = []
    m.kick = lambda delay=0.0: kicks.append(delay)
    return engine, clock, m, submitted, kicks


def test_a_network_docker_does_not_list_yet_is_looked_for_again_soon_and_named():
    """Docker calls CreateNetwork before it stores the network: the first look may not find it."""
    engine, clock, m, submitted, kicks = unnamed_here()
    asyncio.run(m.step(periodic=False))
    assert submitted == [] and kicks == [UNNAMED_RETRY], "not listed yet: look again in a moment"
    engine.list.append({"Id": docker_id("d-here"), "Name": "web"})
    clock.now += UNNAMED_RETRY
    asyncio.run(m.step(periodic=False))
    assert [op["op"] for op in submitted] == ["network_name"]
    assert kicks == [UNNAMED_RETRY], "named: no more looks"


def test_the_looks_for_a_network_docker_never_lists_end():
    _, clock, m, _, kicks = unnamed_here()
    asyncio.run(m.step(periodic=False))
    clock.now += UNNAMED_PATIENCE
    asyncio.run(m.step(periodic=True))
    assert kicks == [UNNAMED_RETRY], "after a minute only the periodic pass looks"


def test_a_swarm_network_is_left_to_swarm():
    """Swarm puts its networks into each node's Docker: the mirror neither copies, names nor waits for them."""
    from shoutd.state import ops
    state = ClusterState()
    state.apply(ops.member_up(HERE, "198.18.0.1", "h1"))
    for v in range(3, ops.STATE_VERSION + 1):
        state.apply(ops.cluster_version(HERE, v))
    net = state.apply(ops.network_follow(THERE, "e3ts5pzxib54h9gyjves7353e", "10.0.2.0/24", "10.0.2.1", {},
                                         7380))["value"]
    assert "error" not in state.apply(ops.network_bind(HERE, net["id"], "e3ts5pzxib54h9gyjves7353e", {}))
    engine = FakeEngine()
    m, submitted = mirror(engine, state)
    kicks = []
    m.kick = lambda delay=None: kicks.append(delay)
    asyncio.run(m.step(periodic=True))
    assert engine.created == [] and engine.removed == [] and submitted == [] and kicks == []
