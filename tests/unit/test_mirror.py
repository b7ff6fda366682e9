"""The network mirror against a fake Docker engine: what it creates, names and removes, and when."""

import asyncio

from shoutd.docker.mirror import STALE_BINDING, Mirror
from shoutd.state import ClusterState

from ..support import docker_id

HERE, THERE = "198.18.0.1:7380", "198.18.0.2:7380"


class FakeEngine:
    def __init__(self, networks=()):
        self.list = [dict(n) for n in networks]
        self.created, self.removed = [], []

    async def networks(self, driver):
        return [dict(n) for n in self.list]

    async def create_network(self, name, driver, subnet, gateway, ipam_options, options):
        self.created.append(name)

    async def remove_network(self, network_id):
        self.removed.append(network_id)


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
    m = Mirror(engine, "shoutd", HERE, submit, lambda: ClusterState(state.data), clock=clock or Clock())
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
