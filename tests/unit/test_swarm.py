"""Swarm networks (issue 15): the followed networks of the state machine, the managed socket's replies,
the managed plugin's making and installing, and its relay."""

import asyncio
import io
import json
import os
import tarfile
import tempfile

import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoutd.docker import managed, relay
from shoutd.docker.plugin import make_app
from shoutd.errors import ShoutdError
from shoutd.state import ops

from ..support import docker_id
from .test_plugin import NODE, Harness
from .test_versions import registered

SWARM_NET = "e3ts5pzxib54h9gyjves7353e"      # swarmkit's ids: 25 base-36 digits
EP1, EP2 = docker_id("ep1"), docker_id("ep2")
IPV4 = [{"AddressSpace": "", "Pool": "10.0.2.0/24", "Gateway": "10.0.2.1/24"}]


def state_at(version):
    cs = registered(ops.STATE_VERSION, ops.STATE_VERSION)
    for v in range(3, version + 1):
        assert "error" not in cs.apply(ops.cluster_version("a", v))
    return cs


def follow(cs, node="a", swarm=SWARM_NET, subnet="10.0.2.0/24"):
    result = cs.apply(ops.network_follow(node, swarm, subnet, "10.0.2.1", {"multicast": "flood"}, 7380))
    assert "error" not in result, result
    return result["value"]


def value(cs, op):
    result = cs.apply(op)
    assert "error" not in result, result
    return result["value"]


# -- the state machine ----------------------------------------------------------------------------


def test_swarm_networks_wait_for_state_version_5_on_every_host():
    cs = state_at(4)
    op = ops.network_follow("a", SWARM_NET, "10.0.2.0/24", "10.0.2.1", {}, 7380)
    with pytest.raises(ShoutdError) as err:
        ops.check_proposable(op, cs)
    assert err.value.name == "UpgradeNeeded" and "needs state version 5" in str(err.value)
    assert "needs state version 5" in cs.apply(op)["error"] and cs.networks == {}, "a 0.4 host refuses it alike"
    cs.apply(ops.cluster_version("a", 5))
    net = value(cs, op)
    assert (net["subnet"], net["gateway"], net["port"], net["multicast"]) == ("10.0.2.0/24", "10.0.2.1", 7380, "pruned")


def test_every_host_that_meets_a_swarm_network_finds_the_same_one():
    cs = state_at(5)
    first = follow(cs, "a")
    again = follow(cs, "b")
    assert again == first and len(cs.networks) == 1
    value(cs, ops.network_bind("a", first["id"], SWARM_NET, {}))
    value(cs, ops.network_bind("b", first["id"], SWARM_NET, {}))
    assert cs.network_by_docker_id("b", SWARM_NET)["id"] == first["id"]
    assert cs.network_by_subnet("10.0.2.0/24") is None, "shoutd's IPAM never serves a swarm network's subnet"


def test_a_swarm_network_may_share_a_subnet_with_one_of_shoutd_s_own():
    cs = state_at(5)
    own = value(cs, ops.network_reserve("a", "10.0.2.0/24", None, "10.213.0.0/16", 24, port=7380))
    followed = follow(cs)
    assert own["id"] != followed["id"] and own["vni"] != followed["vni"]
    assert cs.network_by_subnet("10.0.2.0/24")["id"] == own["id"]


def test_endpoints_take_swarm_s_addresses_and_a_stale_holder_gives_way():
    cs = state_at(5)
    net = follow(cs)
    value(cs, ops.endpoint_add("a", net["id"], EP1, "10.0.2.3", "0a:5d:0a:00:02:03"))
    assert cs.networks[net["id"]]["addresses"]["10.0.2.3"]["node"] == "a"
    # Swarm gave .3 to a new task on b: a's task is gone in swarm's eyes, whatever a last said.
    value(cs, ops.endpoint_add("b", net["id"], EP2, "10.0.2.3", "0a:5d:0a:00:02:03"))
    assert EP1 not in cs.endpoints and cs.networks[net["id"]]["endpoints"] == {"10.0.2.3": EP2}
    value(cs, ops.endpoint_remove("b", EP2))
    assert cs.networks[net["id"]]["addresses"] == {}, "the address goes with its endpoint"
    outside = cs.apply(ops.endpoint_add("a", net["id"], EP1, "10.9.9.9", "0a:5d:0a:09:09:09"))
    assert "10.9.9.9" in outside["error"] and not cs.endpoints


def test_unbinding_keeps_the_network_and_freeing_it_drops_its_endpoints():
    cs = state_at(5)
    net = follow(cs)
    value(cs, ops.network_bind("a", net["id"], SWARM_NET, {}))
    value(cs, ops.endpoint_add("a", net["id"], EP1, "10.0.2.3", "0a:5d:0a:00:02:03"))
    value(cs, ops.network_unbind("a", net["id"]))
    assert cs.networks[net["id"]]["bindings"] == {} and EP1 in cs.endpoints
    value(cs, ops.network_unfollow("b", SWARM_NET))
    assert cs.networks == {} and cs.endpoints == {}
    assert value(cs, ops.network_unfollow("b", SWARM_NET)) is None, "freeing twice is harmless"


@pytest.mark.parametrize("swarm, subnet", [("not-an-id", "10.0.2.0/24"), (SWARM_NET, "banana"),
                                           (SWARM_NET, "fd00::/64"), (docker_id("x"), "10.0.2.0/24")])
def test_bad_swarm_networks_are_refused_and_change_nothing(swarm, subnet):
    cs = state_at(5)
    before = (dict(cs.networks), cs.version)
    result = cs.apply(ops.network_follow("a", swarm, subnet, None, {}, 7380))
    assert result["kind"] == "invalid" and (dict(cs.networks), cs.version) == before


def test_a_local_network_cannot_be_bound_with_a_swarm_id():
    cs = state_at(5)
    own = value(cs, ops.network_reserve("a", None, None, "10.213.0.0/16", 24, port=7380))
    assert "not a Docker id" in cs.apply(ops.network_bind("a", own["id"], SWARM_NET, {}))["error"]


# -- the managed socket --------------------------------------------------------------------------


def run_swarm(test, version=ops.STATE_VERSION):
    async def main():
        h = Harness()
        h.raft.cluster.apply(ops.member_up(NODE, "198.18.0.1", "h1"))     # runs this release
        for v in range(3, version + 1):
            assert "error" not in h.raft.cluster.apply(ops.cluster_version(NODE, v))
        async with TestClient(TestServer(make_app(h.service, swarm=True))) as client:
            await test(h, client)
    asyncio.run(main())


def test_the_managed_socket_speaks_for_swarm_networks_only():
    async def t(h, c):
        assert await h.call(c, "Plugin.Activate") == (200, {"Implements": ["NetworkDriver"]})
        assert await h.call(c, "NetworkDriver.GetCapabilities") == (200, {"Scope": "global",
                                                                          "ConnectivityScope": "global"})
        status, reply = await h.call(c, "IpamDriver.RequestPool", {"Pool": ""})
        assert status == 404 and "does not implement IpamDriver.RequestPool" in reply["Err"]
        status, reply = await h.call(c, "AuthZPlugin.AuthZReq", {})
        assert status == 404
    run_swarm(t)


def test_a_swarm_network_s_whole_life_through_the_managed_socket():
    async def t(h, c):
        assert await h.call(c, "NetworkDriver.AllocateNetwork", {
            "NetworkID": SWARM_NET, "Options": {"multicast": "flood"}, "IPv4Data": IPV4}) == (200, {"Options": {}})
        net = h.raft.cluster.network_by_swarm_id(SWARM_NET)
        assert (net["subnet"], net["gateway"], net["multicast"], net["port"]) == ("10.0.2.0/24", "10.0.2.1",
                                                                                  "flood", 7380)
        assert await h.call(c, "NetworkDriver.CreateNetwork", {
            "NetworkID": SWARM_NET, "IPv4Data": IPV4,
            "Options": {"com.docker.network.generic": {"multicast": "flood"}}}) == (200, {})
        assert net["bindings"] == {NODE: SWARM_NET} and h.reconciler.waits >= 1
        status, ep = await h.call(c, "NetworkDriver.CreateEndpoint", {
            "NetworkID": SWARM_NET, "EndpointID": EP1, "Interface": {"Address": "10.0.2.3/24"}})
        assert (status, ep) == (200, {"Interface": {"MacAddress": "0a:5d:0a:00:02:03"}})
        status, joined = await h.call(c, "NetworkDriver.Join", {"NetworkID": SWARM_NET, "EndpointID": EP1,
                                                               "SandboxKey": "/var/run/docker/netns/x"})
        assert status == 200 and joined["InterfaceName"]["DstPrefix"] == "eth" and "Gateway" not in joined
        assert await h.call(c, "NetworkDriver.Leave", {"NetworkID": SWARM_NET, "EndpointID": EP1}) == (200, {})
        assert await h.call(c, "NetworkDriver.DeleteEndpoint", {"NetworkID": SWARM_NET,
                                                                "EndpointID": EP1}) == (200, {})
        assert await h.call(c, "NetworkDriver.DeleteNetwork", {"NetworkID": SWARM_NET}) == (200, {})
        assert h.raft.cluster.network_by_swarm_id(SWARM_NET)["bindings"] == {}, "the network stays for other nodes"
        assert await h.call(c, "NetworkDriver.FreeNetwork", {"NetworkID": SWARM_NET}) == (200, {})
        assert h.raft.cluster.networks == {}
        assert await h.call(c, "NetworkDriver.FreeNetwork", {"NetworkID": SWARM_NET}) == (200, {})
    run_swarm(t)


def test_a_node_s_leave_after_swarm_freed_the_network_is_not_an_error():
    """`docker stack rm`: the manager's FreeNetwork can come before a node's Leave and DeleteEndpoint."""
    async def t(h, c):
        await h.call(c, "NetworkDriver.CreateNetwork", {"NetworkID": SWARM_NET, "IPv4Data": IPV4})
        await h.call(c, "NetworkDriver.CreateEndpoint", {"NetworkID": SWARM_NET, "EndpointID": EP1,
                                                         "Interface": {"Address": "10.0.2.3/24"}})
        assert await h.call(c, "NetworkDriver.FreeNetwork", {"NetworkID": SWARM_NET}) == (200, {})
        for call in ("NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint"):
            assert await h.call(c, call, {"NetworkID": SWARM_NET, "EndpointID": EP1}) == (200, {}), call
        assert await h.call(c, "NetworkDriver.DeleteNetwork", {"NetworkID": SWARM_NET}) == (200, {})
        assert h.raft.cluster.endpoints == {} and h.raft.cluster.networks == {}
    run_swarm(t)


def test_a_worker_s_create_network_follows_a_network_its_leader_allocated_elsewhere():
    async def t(h, c):
        # AllocateNetwork ran on a manager whose shoutd was down, say: CreateNetwork alone is enough.
        assert (await h.call(c, "NetworkDriver.CreateNetwork", {"NetworkID": SWARM_NET, "IPv4Data": IPV4}))[0] == 200
        assert h.raft.cluster.network_by_swarm_id(SWARM_NET)["bindings"] == {NODE: SWARM_NET}
    run_swarm(t)


@pytest.mark.parametrize("body, words", [
    ({"NetworkID": "nope", "IPv4Data": IPV4}, "not a swarm id"),
    ({"NetworkID": SWARM_NET}, "has no IPv4 subnet"),
    ({"NetworkID": SWARM_NET, "IPv4Data": IPV4, "IPv6Data": [{"Pool": "fd00::/64"}]}, "IPv4 only"),
    ({"NetworkID": SWARM_NET, "IPv4Data": IPV4, "Options": {"multicast": "loud"}}, "multicast"),
    ({"NetworkID": SWARM_NET, "IPv4Data": "10.0.2.0/24"}, "IPv4Data must be a list"),
])
def test_bad_allocations_are_refused_with_what_is_wrong_and_nothing_is_kept(body, words):
    async def t(h, c):
        status, reply = await h.call(c, "NetworkDriver.AllocateNetwork", body)
        assert status == 400 and words in reply["Err"], reply
        assert h.raft.cluster.networks == {}
    run_swarm(t)


def test_before_every_host_runs_0_5_a_swarm_network_is_refused_naming_the_upgrade():
    async def t(h, c):
        status, reply = await h.call(c, "NetworkDriver.AllocateNetwork", {"NetworkID": SWARM_NET, "IPv4Data": IPV4})
        assert status == 503 and "needs state version 5" in reply["Err"]
    run_swarm(t, version=4)


def test_the_legacy_socket_points_swarm_at_the_managed_plugin():
    async def t(h, c):
        status, reply = await h.call(c, "NetworkDriver.AllocateNetwork", {"NetworkID": SWARM_NET})
        assert status != 200 and "darkkitchen/shoutd" in reply["Err"]

    async def main():
        h = Harness()
        async with TestClient(TestServer(make_app(h.service))) as client:
            await t(h, client)
    asyncio.run(main())


# -- the managed plugin: made from shoutd's files, installed once ---------------------------------------


def test_the_plugin_is_a_relay_to_the_managed_socket_and_nothing_else():
    tar = tarfile.open(fileobj=io.BytesIO(managed.build("/run/shoutd/managed.sock")))
    every = tar.getnames()
    assert len(every) == len(set(every)), "each entry once"
    names = set(every)
    assert {"rootfs/run", "rootfs/run/shoutd", "rootfs/run/docker/plugins", "rootfs/usr"} <= names
    conf = json.load(tar.extractfile("config.json"))
    assert conf["entrypoint"][-2:] == ["/run/docker/plugins/shoutd.sock", "/run/shoutd/managed.sock"]
    assert conf["interface"] == {"types": ["docker.networkdriver/1.0"], "socket": "shoutd.sock"}
    assert {m["destination"]: m["source"] for m in conf["mounts"]} == {"/usr": "/usr", "/run/shoutd": "/run/shoutd"}
    assert "ro" in conf["mounts"][0]["options"], "the host's /usr is bound read-only"
    assert conf["linux"]["capabilities"] == []
    assert "rootfs/shoutd-relay.py" in names and tar.getmember("rootfs/lib64").linkname == "usr/lib64"
    assert tar.extractfile("rootfs/shoutd-relay.py").read() == open(relay.__file__, "rb").read()
    lab = json.load(tarfile.open(fileobj=io.BytesIO(managed.build("/var/tmp/h1/run/m.sock"))).extractfile(
        "config.json"))
    assert lab["mounts"][1]["source"] == "/var/tmp/h1/run" and lab["entrypoint"][-1] == "/run/shoutd/m.sock"


class FakeEngine:
    """Docker's plugin store, as far as managed.install sees it."""

    def __init__(self):
        self.plugins, self.calls = {}, []

    async def plugin(self, name):
        return self.plugins.get(name)

    async def create_plugin(self, name, tar):
        conf = json.load(tarfile.open(fileobj=io.BytesIO(tar)).extractfile("config.json"))
        self.calls.append("create")
        self.plugins[name] = {"Enabled": False, "Config": {"Description": conf["description"],
                                                           "Entrypoint": conf["entrypoint"]},
                              "Settings": {"Mounts": [{"Name": m["name"], "Source": m["source"]}
                                                      for m in conf["mounts"]]}}

    async def enable_plugin(self, name):
        self.calls.append("enable")
        self.plugins[name]["Enabled"] = True

    async def disable_plugin(self, name):
        self.calls.append("disable")
        self.plugins[name]["Enabled"] = False

    async def remove_plugin(self, name):
        self.calls.append("remove")
        del self.plugins[name]


def test_installing_twice_changes_nothing_and_an_older_plugin_is_replaced():
    async def t():
        engine = FakeEngine()
        assert (await managed.install(engine, "/run/shoutd/managed.sock")).startswith("created ")
        assert engine.calls == ["create", "enable"]
        assert (await managed.install(engine, "/run/shoutd/managed.sock")).endswith("is up to date")
        assert engine.calls == ["create", "enable"], "nothing done the second time"
        engine.plugins[managed.REFERENCE]["Config"]["Description"] = "shoutd ... (made by shoutd 0.4.0, build 0123)"
        assert (await managed.install(engine, "/run/shoutd/managed.sock")).startswith("replaced ")
        assert engine.calls[2:] == ["disable", "remove", "create", "enable"]
        assert (await managed.install(engine, "/srv/other.sock")).startswith("replaced "), "another socket: replaced"
        engine.plugins[managed.REFERENCE]["Enabled"] = False
        assert (await managed.install(engine, "/srv/other.sock")).startswith("enabled ")
        assert await managed.remove(engine) == "removed " + managed.REFERENCE and not engine.plugins
        assert await managed.remove(engine) == managed.REFERENCE + " is not installed"
    asyncio.run(t())


# -- the relay ---------------------------------------------------------------------------------------


def test_the_relay_copies_both_ways_and_outlives_a_service_that_is_down():
    async def t(tmp):
        listen, service = os.path.join(tmp, "plugin.sock"), os.path.join(tmp, "managed.sock")

        async def echo(reader, writer):
            data = await reader.read(1 << 20)
            writer.write(b"shoutd:" + data)
            await writer.drain()
            writer.close()

        task = asyncio.ensure_future(relay.serve(listen, service))
        for _ in range(100):
            if os.path.exists(listen):
                break
            await asyncio.sleep(0.01)
        assert os.stat(listen).st_mode & 0o777 == 0o600
        reader, writer = await asyncio.open_unix_connection(listen)     # the service is down: closed
        assert await reader.read() == b""
        writer.close()
        server = await asyncio.start_unix_server(echo, path=service)
        reader, writer = await asyncio.open_unix_connection(listen)
        payload = b"x" * 200000
        writer.write(payload)
        writer.write_eof()
        assert await reader.read() == b"shoutd:" + payload
        writer.close()
        server.close()
        task.cancel()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(t(tmp))


def test_the_relay_ends_at_once_on_sigterm():
    """It is PID 1 in the plugin's container, where an unhandled SIGTERM would be ignored."""
    import signal
    import subprocess
    import sys
    import time
    with tempfile.TemporaryDirectory() as tmp:
        listen = os.path.join(tmp, "plugin.sock")
        proc = subprocess.Popen([sys.executable, "-I", relay.__file__, listen, os.path.join(tmp, "m.sock")],
                                stderr=subprocess.PIPE)
        for _ in range(500):
            if os.path.exists(listen):
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0


def test_the_relay_says_how_it_is_used():
    assert relay.main([]) == 2


# -- the sockets systemd passes ------------------------------------------------------------------------

ACTIVATED = r"""
import os, socket, sys
sys.path.insert(0, sys.argv[1])
tmp = sys.argv[2]
made = []
for name in ("plugin.sock", "managed.sock"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.path.join(tmp, name))
    s.listen(1)
    made.append(s)
count = int(sys.argv[3])
for i, s in enumerate(made[:count]):
    os.dup2(s.fileno(), 3 + i)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(count), LISTEN_FDNAMES="shoutd.socket")
from shoutd import daemon
passed = daemon.activated_sockets()
plugin, owned = daemon.listening(passed, 0, os.path.join(tmp, "own-plugin.sock"), "plugin")
swarm, swarm_owned = daemon.listening(passed, 1, os.path.join(tmp, "own-managed.sock"), "swarm")
print(os.path.basename(plugin.getsockname()), owned, os.path.basename(swarm.getsockname()), swarm_owned,
      "LISTEN_FDS" in os.environ)
"""


@pytest.mark.parametrize("count, expected", [
    (2, "plugin.sock False managed.sock False False"),
    (1, "plugin.sock False own-managed.sock True False"),      # an older shoutd.socket, before its restart
])
def test_shoutd_takes_the_sockets_systemd_passes_in_the_socket_unit_s_order(count, expected):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", ACTIVATED, root, tmp, str(count)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split("\n")[0] == expected


def test_the_socket_unit_lists_the_sockets_in_the_order_shoutd_takes_them():
    from shoutd.config import Config
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "systemd", "shoutd.socket")) as f:
        listed = [line.split("=", 1)[1].strip() for line in f if line.startswith("ListenStream=")]
    assert listed == [Config().plugin_socket, Config().managed_socket]
