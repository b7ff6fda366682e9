"""The Docker plugin API: every call, as Docker sends it, against the real Service and state machine."""

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoutd.docker.plugin import ROUTES, make_app
from shoutd.errors import ShoutdError
from shoutd.service import Service
from shoutd.state import ClusterState

from ..support import docker_id
from .fakes import Config, FakeRaft, FakeReconciler

NODE = "198.18.0.1:7380"
EP = "e" * 64
NET = docker_id("net1")
MAC = "0a:5d:00:00:00:01"


class Harness:
    def __init__(self):
        self.raft = FakeRaft()
        self.raft.cluster.apply({"op": "member_up", "node": NODE, "advertise": "198.18.0.1", "raft": NODE,
                                 "hostname": "h1"})
        self.reconciler = FakeReconciler()
        self.changed = []
        self.service = Service(self.raft, self.reconciler, NODE, Config(), self.changed.append)

    async def call(self, client, method, body=None, raw=None):
        data = raw if raw is not None else (json.dumps(body) if body is not None else b"")
        resp = await client.post("/" + method, data=data,
                                 headers={"Content-Type": "application/vnd.docker.plugins.v1.2+json"})
        return resp.status, json.loads(await resp.text())

    async def create_network(self, client, docker_id=NET, pool=""):
        status, pool_reply = await self.call(client, "IpamDriver.RequestPool",
                                             {"AddressSpace": "shoutd", "Pool": pool, "Options": {}, "V6": False})
        assert status == 200, pool_reply
        status, gw = await self.call(client, "IpamDriver.RequestAddress",
                                     {"PoolID": pool_reply["PoolID"], "Address": "",
                                      "Options": {"RequestAddressType": "com.docker.network.gateway"}})
        assert status == 200, gw
        status, reply = await self.call(client, "NetworkDriver.CreateNetwork", {
            "NetworkID": docker_id, "Options": {"com.docker.network.generic": {}},
            "IPv4Data": [{"AddressSpace": "shoutd", "Pool": pool_reply["Pool"], "Gateway": gw["Address"]}]})
        assert status == 200, reply
        return pool_reply


def run(test):
    async def main():
        h = Harness()
        async with TestClient(TestServer(make_app(h.service))) as client:
            await test(h, client)
    asyncio.run(main())


def test_activate_and_capabilities_with_empty_bodies():
    async def t(h, c):
        assert await h.call(c, "Plugin.Activate") == (200, {"Implements": ["NetworkDriver", "IpamDriver", "authz"]})
        assert await h.call(c, "NetworkDriver.GetCapabilities") == (200, {"Scope": "local",
                                                                          "ConnectivityScope": "global",
                                                                          "GwAllocChecker": True})
        status, caps = await h.call(c, "IpamDriver.GetDefaultAddressSpaces")
        assert status == 200 and caps["GlobalDefaultAddressSpace"] == "shoutd"
    run(t)


def test_full_container_lifecycle():
    async def t(h, c):
        pool = await h.create_network(c)
        assert pool["Pool"] == "10.213.0.0/24"
        status, addr = await h.call(c, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "",
                                                                     "Options": {}})
        assert (status, addr["Address"]) == (200, "10.213.0.2/24")
        status, ep = await h.call(c, "NetworkDriver.CreateEndpoint", {
            "NetworkID": NET, "EndpointID": EP, "Interface": {"Address": addr["Address"]}, "Options": {}})
        assert status == 200 and ep == {"Interface": {"MacAddress": "0a:5d:0a:d5:00:02"}}
        status, join = await h.call(c, "NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP,
                                                              "SandboxKey": "/var/run/docker/netns/x"})
        assert status == 200
        assert join["InterfaceName"] == {"SrcName": "shc" + EP[:12], "DstPrefix": "eth"}
        assert join["StaticRoutes"] == [{"Destination": "224.0.0.0/4", "RouteType": 1}]
        assert "Gateway" not in join
        assert h.reconciler.waits == 3, "create network, endpoint and join each wait for the kernel"
        status, info = await h.call(c, "NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP})
        assert status == 200 and info["Value"]["ip"] == "10.213.0.2"
        assert (await h.call(c, "NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP}))[0] == 200
        assert (await h.call(c, "NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP}))[0] == 200
        assert (await h.call(c, "IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"],
                                                              "Address": "10.213.0.2"}))[0] == 200
        assert h.raft.state.networks[pool["PoolID"]]["addresses"] == {}
        assert (await h.call(c, "NetworkDriver.DeleteNetwork", {"NetworkID": NET}))[0] == 200
        assert (await h.call(c, "IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]}))[0] == 200
        assert h.raft.state.networks == {}
    run(t)


def test_create_without_our_ipam_is_refused_with_the_right_command():
    async def t(h, c):
        status, reply = await h.call(c, "NetworkDriver.CreateNetwork", {
            "NetworkID": "n", "Options": {}, "IPv4Data": [{"AddressSpace": "LocalDefault",
                                                           "Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}]})
        assert status == 400
        assert "--ipam-driver shoutd" in reply["Err"] and "same addresses on every host" in reply["Err"]
    run(t)


def test_static_address_taken_is_refused_in_ipam_form():
    async def t(h, c):
        pool = await h.create_network(c, pool="10.5.0.0/24")
        body = {"PoolID": pool["PoolID"], "Address": "10.5.0.9", "Options": {}}
        assert (await h.call(c, "IpamDriver.RequestAddress", body))[1]["Address"] == "10.5.0.9/24"
        status, reply = await h.call(c, "IpamDriver.RequestAddress", body)
        assert status == 409 and "already in use" in reply["Error"] and reply["Err"] == reply["Error"]
    run(t)


@pytest.mark.parametrize("method", sorted(ROUTES))
def test_every_call_survives_malformed_json(method):
    async def t(h, c):
        status, reply = await h.call(c, method, raw=b"{not json")
        assert status == 400 and "not valid JSON" in reply["Err"]
        status, reply = await h.call(c, method, raw=b"[1, 2]")
        assert status == 400 and "JSON object" in reply["Err"]
    run(t)


@pytest.mark.parametrize("method", sorted(m for m in ROUTES if not m.endswith(
    ("Activate", "GetCapabilities", "GwAllocCheck", "GetDefaultAddressSpaces", "DiscoverNew", "DiscoverDelete",
     "ProgramExternalConnectivity", "RevokeExternalConnectivity", "RequestPool", "AuthZRes", "AuthZReq"))))
def test_every_call_with_an_empty_body_or_unknown_ids_gets_an_error_not_a_traceback(method):
    async def t(h, c):
        status, reply = await h.call(c, method, {})
        assert status in (400, 404, 409), (status, reply)
        assert reply["Err"] and "Traceback" not in reply["Err"]
        ids = {"NetworkID": docker_id("nope"), "EndpointID": docker_id("nope"), "PoolID": "nope", "Address": "10.0.0.1",
               "Interface": {"Address": "10.0.0.2/24"}, "IPv4Data": [{"AddressSpace": "shoutd", "Pool": "10.0.0.0/24"}]}
        status, reply = await h.call(c, method, ids)
        if method in ("NetworkDriver.DeleteNetwork", "NetworkDriver.DeleteEndpoint", "NetworkDriver.Leave",
                      "IpamDriver.ReleasePool", "IpamDriver.ReleaseAddress"):
            assert status == 200      # leaving or deleting what is already gone succeeds: Docker retries cleanups
        else:
            assert status in (400, 404, 409) and reply["Err"], (status, reply)
    run(t)


def test_wrong_field_types_are_named():
    async def t(h, c):
        status, reply = await h.call(c, "IpamDriver.RequestPool", {"Pool": 17})
        assert status == 400 and "Pool must be a string" in reply["Error"]
        status, reply = await h.call(c, "IpamDriver.RequestPool", {"Pool": "", "V6": True})
        assert status == 400 and "IPv4 only" in reply["Error"]
    run(t)


def test_unknown_calls_are_404_in_plugin_form():
    async def t(h, c):
        status, reply = await h.call(c, "NetworkDriver.Bogus", {})
        assert status == 404 and "Bogus" in reply["Err"]
    run(t)


def test_deleting_a_network_in_use_elsewhere_is_refused_and_restored():
    async def t(h, c):
        pool = await h.create_network(c)
        other = "198.18.0.2:7380"
        h.raft.cluster.apply({"op": "member_up", "node": other, "advertise": "198.18.0.2", "raft": other,
                              "hostname": "h2"})
        h.raft.cluster.apply({"op": "network_name", "network": pool["PoolID"], "name": "web"})
        h.raft.cluster.apply({"op": "ip_allocate", "req": "r", "node": other, "network": pool["PoolID"]})
        h.raft.cluster.apply({"op": "endpoint_add", "network": pool["PoolID"], "node": other, "endpoint": EP,
                              "ip": "10.213.0.2", "mac": MAC})
        status, reply = await h.call(c, "NetworkDriver.DeleteNetwork", {"NetworkID": NET})
        assert status == 409 and "h2 (198.18.0.2): 10.213.0.2" in reply["Err"]
        assert pool["PoolID"] in h.raft.state.networks
        assert h.changed == [NET, NET], "the mirror is asked to restore the local copy"
    run(t)


def test_authz_refuses_removing_a_network_used_on_another_host_and_nothing_else():
    async def t(h, c):
        pool = await h.create_network(c, docker_id="abc123def456")
        other = "198.18.0.2:7380"
        for op in ({"op": "member_up", "node": other, "advertise": "198.18.0.2", "raft": other, "hostname": "h2"},
                   {"op": "network_name", "network": pool["PoolID"], "name": "web"},
                   {"op": "ip_allocate", "req": "r", "node": other, "network": pool["PoolID"]},
                   {"op": "endpoint_add", "network": pool["PoolID"], "node": other, "endpoint": EP,
                    "ip": "10.213.0.2", "mac": MAC}):
            assert "error" not in h.raft.cluster.apply(op)

        async def ask(method, uri):
            status, reply = await h.call(c, "AuthZPlugin.AuthZReq", {"RequestMethod": method, "RequestUri": uri,
                                                                     "User": "", "RequestBody": None})
            assert status == 200, reply
            return reply["Allow"], reply["Msg"]
        for uri in ("/v1.41/networks/web", "/networks/abc123def456", "/v1.43/networks/abc1", "/networks/web/"):
            allow, msg = await ask("DELETE", uri)
            assert not allow and "h2 (198.18.0.2): 10.213.0.2" in msg, uri
        assert (await ask("GET", "/v1.41/networks/web"))[0]
        assert (await ask("DELETE", "/v1.41/networks/other"))[0]
        assert (await ask("DELETE", "/v1.41/containers/web"))[0]
        assert (await ask("POST", "/v1.41/networks/web/disconnect"))[0]
        h.raft.cluster.apply({"op": "endpoint_remove", "endpoint": EP})
        assert (await ask("DELETE", "/v1.41/networks/web"))[0]
        assert await h.call(c, "AuthZPlugin.AuthZRes", {"RequestMethod": "GET"}) == (200, {"Allow": True})
        assert await h.call(c, "AuthZPlugin.AuthZReq", {"RequestMethod": 5}) == (200, {"Allow": True})
    run(t)


def test_right_after_a_restart_state_calls_wait_for_the_state_and_probes_do_not():
    async def t(h, c):
        h.raft.caught_up.clear()
        assert (await h.call(c, "Plugin.Activate"))[0] == 200          # Docker's probe is answered at once
        pool = asyncio.ensure_future(h.call(c, "IpamDriver.RequestPool",
                                            {"AddressSpace": "shoutd", "Pool": "", "Options": {}, "V6": False}))
        await asyncio.sleep(0.3)  # a call that did not wait would be done by now
        assert not pool.done() and h.raft.ops == [], "nothing is decided from a state that may be behind"
        h.raft.caught_up.set()
        status, reply = await pool
        assert status == 200 and reply["Pool"], reply
        h.raft.caught_up.clear()
        with pytest.raises(ShoutdError) as e:
            await h.service.cluster.until_caught_up(timeout=0.1)
        assert "not caught up with the cluster" in e.value.message
    run(t)


@pytest.mark.parametrize("mac", ["zz:zz", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "00:00:00:00:00:00",
                                 "0a:5d:00:00:00:01:02", 17])
def test_a_bad_mac_is_refused_before_anything_is_committed(mac):
    async def t(h, c):
        pool = await h.create_network(c)
        _, addr = await h.call(c, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": {}})
        before = len(h.raft.ops)
        status, reply = await h.call(c, "NetworkDriver.CreateEndpoint", {
            "NetworkID": NET, "EndpointID": EP, "Interface": {"Address": addr["Address"], "MacAddress": mac}})
        assert status == 400 and "MAC address" in reply["Err"], reply
        assert len(h.raft.ops) == before and not h.raft.state.endpoints, "nothing reached Raft"
    run(t)


@pytest.mark.parametrize("field,value,words", [
    ("EndpointID", "../x y/..", "EndpointID"), ("EndpointID", "short", "EndpointID"),
    ("NetworkID", "NET;rm -rf", "NetworkID"), ("Address", "10.99.0.5/24", "not a host address"),
    ("Address", "10.213.0.255/24", "not a host address"), ("Address", "banana", "not an IPv4 address")])
def test_bad_ids_and_addresses_are_refused_at_the_edge(field, value, words):
    async def t(h, c):
        pool = await h.create_network(c)
        await h.call(c, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": {}})
        body = {"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.213.0.2/24"}}
        if field == "Address":
            body["Interface"]["Address"] = value
        else:
            body[field] = value
        before = len(h.raft.ops)
        status, reply = await h.call(c, "NetworkDriver.CreateEndpoint", body)
        assert status == 400 and words in reply["Err"], reply
        assert len(h.raft.ops) == before
    run(t)


def test_a_static_address_outside_the_subnet_is_refused_before_raft():
    async def t(h, c):
        pool = await h.create_network(c, pool="10.5.0.0/24")
        before = len(h.raft.ops)
        status, reply = await h.call(c, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"],
                                                                      "Address": "10.6.0.9", "Options": {}})
        assert status == 400 and "not a host address" in reply["Error"], reply
        assert len(h.raft.ops) == before
    run(t)


def test_an_oversized_body_is_413_and_a_deeply_nested_one_400():
    async def t(h, c):
        status, reply = await h.call(c, "IpamDriver.RequestPool", raw=b'{"Pool": "' + b"x" * (2 << 20) + b'"}')
        assert status == 413 and "larger than" in reply["Err"], reply
        status, reply = await h.call(c, "IpamDriver.RequestPool", raw=b"[" * 100000 + b"]" * 100000)
        assert status == 400 and "nested too deeply" in reply["Err"], reply
        status, reply = await h.call(c, "Plugin.Activate")
        assert status == 200, "still serving"
    run(t)


def test_readers_never_change_the_live_state():
    """Handlers read the replica in place (no copies): replaying the ops must give the same state."""
    async def t(h, c):
        pool = await h.create_network(c)
        for i in range(3):
            _, addr = await h.call(c, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "",
                                                                    "Options": {}})
            ep = docker_id("ep%d" % i)
            await h.call(c, "NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": ep,
                                                             "Interface": {"Address": addr["Address"]}})
            await h.call(c, "NetworkDriver.Join", {"NetworkID": NET, "EndpointID": ep, "SandboxKey": "/x"})
            await h.call(c, "NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": ep})
        h.service.membership.status()
        h.service.authz.authorize("DELETE", "/networks/" + NET)
        from shoutd.state import ClusterState
        replay = ClusterState()
        replay.apply({"op": "member_up", "node": NODE, "advertise": "198.18.0.1", "raft": NODE, "hostname": "h1"})
        for op in h.raft.ops:
            replay.apply(op)
        assert replay.data == h.raft.state.data
    run(t)


def test_the_mirror_s_copy_gets_the_cluster_pool_and_a_second_network_on_one_subnet_is_refused():
    async def t(h, c):
        pool = await h.create_network(c, pool="10.5.0.0/24")
        h.raft.cluster.apply({"op": "network_name", "network": pool["PoolID"], "name": "web"})
        # Docker, starting again, re-reserves the pools of its networks: the same pool, no error.
        status, again = await h.call(c, "IpamDriver.RequestPool", {"AddressSpace": "shoutd", "Pool": "10.5.0.0/24",
                                                                  "Options": {}, "V6": False})
        assert status == 200 and again["PoolID"] == pool["PoolID"], again
        # A second Docker network on this host with that subnet is refused, naming the first.
        status, reply = await h.call(c, "NetworkDriver.CreateNetwork", {
            "NetworkID": docker_id("second"), "Options": {},
            "IPv4Data": [{"AddressSpace": "shoutd", "Pool": "10.5.0.0/24", "Gateway": "10.5.0.1/24"}]})
        assert status == 409 and "already shoutd network web" in reply["Err"], reply
        # The mirror replacing a copy Docker lost: same pool, new binding.
        with h.service.cluster.making_replica(pool["PoolID"], "10.5.0.0/24"):
            status, reply = await h.call(c, "NetworkDriver.CreateNetwork", {
                "NetworkID": docker_id("copy"), "Options": {},
                "IPv4Data": [{"AddressSpace": "shoutd", "Pool": "10.5.0.0/24", "Gateway": "10.5.0.1/24"}]})
        assert status == 200, reply
        assert h.raft.state.networks[pool["PoolID"]]["bindings"][NODE] == docker_id("copy")
        assert len(h.raft.state.networks) == 1
    run(t)


def test_a_bad_multicast_mode_is_refused_before_raft_and_a_good_one_recorded():
    async def t(h, c):
        _, pool = await h.call(c, "IpamDriver.RequestPool", {"AddressSpace": "shoutd", "Pool": "", "Options": {},
                                                             "V6": False})
        before = len(h.raft.ops)
        body = {"NetworkID": NET, "Options": {"com.docker.network.generic": {"multicast": "some"}},
                "IPv4Data": [{"AddressSpace": "shoutd", "Pool": pool["Pool"]}]}
        status, reply = await h.call(c, "NetworkDriver.CreateNetwork", body)
        assert status == 400 and "--opt multicast=pruned" in reply["Err"], reply
        assert len(h.raft.ops) == before, "nothing reached Raft"
        body["Options"]["com.docker.network.generic"]["multicast"] = "flood"
        status, reply = await h.call(c, "NetworkDriver.CreateNetwork", body)
        assert status == 200, reply
        assert h.raft.state.networks[pool["PoolID"]]["multicast"] == "flood"
    run(t)


def test_a_pool_another_host_made_a_moment_ago_is_found_not_refused():
    """A follower applies a commit only when the leader next says so: one no-op proves what is committed."""
    async def t(h, c):
        pool = await h.create_network(c)
        committed_elsewhere = h.raft.cluster
        h.raft.cluster = ClusterState()              # this host's copy lags: it has not applied the pool yet
        lagging_submit = h.raft.submit

        async def submit(op, **kw):
            h.raft.cluster = committed_elsewhere      # a commit through the leader brings it up to date
            return await lagging_submit(op, **kw)
        h.raft.submit = submit
        status, reply = await h.call(c, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "",
                                                                      "Options": {}})
        assert status == 200, reply
        assert [op["op"] for op in h.raft.ops[-2:]] == ["barrier", "ip_allocate"]
        status, reply = await h.call(c, "IpamDriver.RequestAddress", {"PoolID": "nosuchpool", "Address": "",
                                                                      "Options": {}})
        assert status >= 400 and "does not exist" in reply["Error"], reply
    run(t)


def test_the_first_endpoint_of_a_network_not_yet_named_asks_the_mirror_to_name_it_at_once():
    """`docker network create X && docker run --network X ... && shoutdctl network X`: the README's order."""
    async def t(h, c):
        pool = await h.create_network(c)
        assert h.changed == [NET], "CreateNetwork: the mirror looks shortly after (Docker stores the network then)"
        status, addr = await h.call(c, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "",
                                                                     "Options": {}})
        status, _ = await h.call(c, "NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": EP,
                                                                     "Interface": {"Address": addr["Address"]}})
        assert status == 200 and h.changed == [NET, NET], "CreateEndpoint on an unnamed network: look again now"
    run(t)


def test_new_networks_get_their_own_vxlan_port_once_the_cluster_runs_state_version_4():
    async def t(h, c):
        old = await h.create_network(c)
        assert "port" not in h.raft.state.networks[old["PoolID"]], "state version 2: as older releases make it"
        h.raft.cluster.apply({"op": "cluster_version", "node": NODE, "version": 4})
        new = await h.create_network(c, docker_id=docker_id("net2"))
        assert h.raft.state.networks[new["PoolID"]]["port"] == 7380
        assert h.service.membership.network(new["PoolID"])["port"] == 7380
        assert h.service.membership.network(old["PoolID"])["port"] == 4789, "the legacy port"
    run(t)
