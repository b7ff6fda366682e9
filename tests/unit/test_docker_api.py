"""Docker 28 and 29's remote-driver API, byte for byte as moby (docker-v29.7.2) sends it.

Each request below is what moby's plugin client writes to the plugin socket:
Go's json.Encoder output (struct fields in declaration order, map keys
sorted, a closing newline) of the request types in moby's
daemon/libnetwork/drivers/remote/api and ipams/remote/api, or no body at all
where moby passes nil.  Option values are those Docker 28.5.2 sent to shoutd
in the lab.  The server is shoutd's own plugin app on a unix socket, over the
real Service and state machine (fakes only for Raft and the kernel).
"""

import asyncio
import json
import logging
import os
import tempfile

import aiohttp
from aiohttp import web

from shoutd.docker.plugin import make_app

from ..support import docker_id
from .test_plugin import Harness

NET = docker_id("net28")
EP = docker_id("ep28")
MIME = "application/vnd.docker.plugins.v1.2+json"


def go_json(value):
    """What Go's json.Encoder writes for `value` (our dicts keep Go's field order; maps come sorted)."""
    return json.dumps(value, separators=(",", ":")) + "\n"


def network_options(**extra):
    """CreateNetwork's and GwAllocCheck's Options as Docker 28+ builds them (network.go, generic map)."""
    options = {"com.docker.network.enable_ipv4": True, "com.docker.network.enable_ipv6": False,
               "com.docker.network.generic": {}}
    options.update(extra)
    return dict(sorted(options.items()))


SANDBOX_OPTIONS = {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}


class Socket:
    """shoutd's plugin app served on a unix socket, and a client that talks as moby's does."""

    def __init__(self, harness):
        self.h = harness
        self.path = os.path.join(tempfile.mkdtemp(prefix="shoutd-api-"), "shoutd.sock")

    async def __aenter__(self):
        self.runner = web.AppRunner(make_app(self.h.service))
        await self.runner.setup()
        await web.UnixSite(self.runner, self.path).start()
        self.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.path))
        return self

    async def __aexit__(self, *exc):
        await self.session.close()
        await self.runner.cleanup()

    async def call(self, method, body=None):
        """POST /method as moby's pkg/plugins client does: the encoded body, or none for nil."""
        data = go_json(body).encode() if body is not None else b""
        async with self.session.post("http://plugin/" + method, data=data, headers={"Accept": MIME}) as resp:
            return resp.status, json.loads(await resp.text())

    async def ok(self, method, body=None):
        status, reply = await self.call(method, body)
        assert status == 200, (method, status, reply)
        return reply

    async def network(self, options=None):
        """RequestPool, the gateway's RequestAddress and CreateNetwork, as `docker network create` on 28+."""
        pool = await self.ok("IpamDriver.RequestPool", {"AddressSpace": "shoutd", "Pool": "", "SubPool": "",
                                                       "Options": {}, "V6": False})
        gw = await self.ok("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "",
                                                          "Options": {"RequestAddressType": "com.docker.network.gateway"}})
        await self.ok("NetworkDriver.CreateNetwork", {
            "NetworkID": NET, "Options": options or network_options(),
            "IPv4Data": [{"AddressSpace": "shoutd", "Gateway": gw["Address"], "Pool": pool["Pool"]}],
            "IPv6Data": []})
        return pool

    async def container(self, pool, endpoint_options=None):
        """RequestAddress, CreateEndpoint and Join of one container; returns (address, Join's reply)."""
        addr = await self.ok("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": None})
        await self.ok("NetworkDriver.CreateEndpoint", {
            "NetworkID": NET, "EndpointID": EP,
            "Interface": {"Address": addr["Address"], "AddressIPv6": "", "MacAddress": ""},
            "Options": endpoint_options if endpoint_options is not None else dict(SANDBOX_OPTIONS)})
        join = await self.ok("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP,
                                                    "SandboxKey": "/var/run/docker/netns/1fe110cd3377",
                                                    "Options": SANDBOX_OPTIONS})
        return addr["Address"], join


def run(test):
    async def main():
        h = Harness()
        async with Socket(h) as s:
            await test(h, s)
    asyncio.run(main())


def test_capabilities_offer_the_gateway_check_and_the_check_keeps_one_gateway_without_a_cluster_write():
    async def t(h, s):
        caps = await s.ok("NetworkDriver.GetCapabilities")
        assert caps["GwAllocChecker"] is True and caps["Scope"] == "local"
        reply = await s.ok("NetworkDriver.GwAllocCheck",
                           {"Options": network_options(**{"com.docker.network.generic": {"multicast": "flood"}})})
        assert reply == {"SkipIPv4": False, "SkipIPv6": False}
        assert h.raft.ops == [], "the check is asked before any pool exists: it writes nothing"
        pool = await s.network()
        assert h.raft.state.networks[pool["PoolID"]]["gateway"] == "10.213.0.1"
    run(t)


def test_bad_network_options_are_refused_by_the_gateway_check_before_any_pool_is_reserved():
    async def t(h, s):
        cases = [
            (network_options(**{"com.docker.network.generic": {"multicast": "flooded"}}), "multicast=pruned"),
            (network_options(**{"com.docker.network.enable_ipv6": True}), "without --ipv6"),
            (network_options(**{"com.docker.network.enable_ipv4": False,
                                "com.docker.network.enable_ipv6": True}), "--ipv4=false"),
        ]
        for options, words in cases:
            status, reply = await s.call("NetworkDriver.GwAllocCheck", {"Options": options})
            assert status == 400 and words in reply["Err"], (options, status, reply)
        assert h.raft.ops == [], "no pool was reserved and released for a network that can never be made"
        # --internal changes nothing for an L2 segment with no gateway: accepted.
        await s.ok("NetworkDriver.GwAllocCheck", {"Options": network_options(**{"com.docker.network.internal": True})})
    run(t)


def test_create_network_reads_docker_28_s_boolean_options():
    async def t(h, s):
        pool = await s.network(network_options(**{"com.docker.network.generic": {"multicast": "flood"},
                                                   "com.docker.network.internal": True}))
        net = h.raft.state.networks[pool["PoolID"]]
        assert net["multicast"] == "flood" and NET in net["bindings"].values()
    run(t)


def test_a_network_without_ipv4_is_refused_with_what_to_do_and_leaves_nothing():
    async def t(h, s):
        # `docker network create --ipv4=false --ipv6`: Docker 28 asks for no IPv4 pool, only an IPv6 one.
        status, reply = await s.call("IpamDriver.RequestPool", {"AddressSpace": "shoutd", "Pool": "", "SubPool": "",
                                                                "Options": {}, "V6": True})
        assert status == 400 and "IPv4 only" in reply["Error"]
        # An engine that skipped the check and IPAM would reach CreateNetwork with no IPv4 data.
        status, reply = await s.call("NetworkDriver.CreateNetwork", {
            "NetworkID": NET, "Options": network_options(**{"com.docker.network.enable_ipv4": False}),
            "IPv4Data": [], "IPv6Data": []})
        assert status == 400 and "--ipv4=false" in reply["Err"]
        assert h.raft.state.networks == {}
    run(t)


def test_an_interface_name_is_accepted_and_the_log_says_docker_ignores_it(caplog):
    async def t(h, s):
        pool = await s.network()
        with caplog.at_level(logging.WARNING, logger="shoutd"):
            _, join = await s.container(pool, dict(SANDBOX_OPTIONS, **{"com.docker.network.endpoint.ifname": "foo0"}))
        assert join["InterfaceName"]["DstPrefix"] == "eth"
        assert EP in h.raft.state.endpoints
        lines = [r.getMessage() for r in caplog.records if "interface name" in r.getMessage()]
        assert len(lines) == 1 and EP[:12] in lines[0] and "'foo0'" in lines[0]
    run(t)


def test_docker_29_s_order_revoke_before_leave_and_the_older_order_both_leave_nothing():
    async def t(h, s):
        pool = await s.network()
        addr, _ = await s.container(pool)
        writes = len(h.raft.ops)
        # Docker 29: Program only when the endpoint becomes the gateway; Revoke, then Leave.
        await s.ok("NetworkDriver.ProgramExternalConnectivity",
                   {"NetworkID": NET, "EndpointID": EP, "Options": SANDBOX_OPTIONS})
        await s.ok("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NET, "EndpointID": EP})
        assert len(h.raft.ops) == writes, "connectivity calls change nothing in the cluster"
        await s.ok("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP})
        await s.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
        await s.ok("IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": addr.split("/")[0]})
        assert h.raft.state.endpoints == {} and h.raft.state.networks[pool["PoolID"]]["addresses"] == {}
        # Before 29: Leave first, and a Revoke for an endpoint that is gone already.
        addr, _ = await s.container(pool)
        await s.ok("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP})
        await s.ok("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NET, "EndpointID": EP})
        await s.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
        await s.ok("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NET, "EndpointID": EP})
        assert h.raft.state.endpoints == {}
    run(t)


def test_repeated_request_pool_calls_get_a_new_pool_each_and_docker_never_loops_on_ours():
    async def t(h, s):
        spaces = await s.ok("IpamDriver.GetDefaultAddressSpaces")
        # moby's remote IPAM (ipams/remote RequestPool) re-asks while a pool overlaps a host route, but
        # never for the global address space: shoutd's local and global spaces are one, so it never does.
        assert spaces["LocalDefaultAddressSpace"] == spaces["GlobalDefaultAddressSpace"] == "shoutd"
        # An engine that does re-ask holds every pool it got while it asks again: each is new.
        request = {"AddressSpace": "shoutd", "Pool": "", "SubPool": "", "Options": {}, "V6": False}
        held = [await s.ok("IpamDriver.RequestPool", request) for _ in range(3)]
        assert len({p["Pool"] for p in held}) == 3 and len({p["PoolID"] for p in held}) == 3
        for pool in held[:2]:
            await s.ok("IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]})
        assert list(h.raft.state.networks) == [held[2]["PoolID"]]
    run(t)
