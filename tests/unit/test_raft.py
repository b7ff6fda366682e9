"""Raft through PySyncObj on loopback: concurrent IPAM, and a port that only the secret opens.

No root needed; each test builds its nodes on the main thread, as the daemon does.
"""

import asyncio
import os
import pickle
import socket
import struct
import tempfile
import time
import zlib

import pytest

from shoutd.errors import ShoutdError
from shoutd.raft import RaftNode, check_port_free

SECRET = "test-secret-0123456789abcdef"


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def trio():
    addrs = ["127.0.0.1:%d" % p for p in free_ports(3)]
    nodes = [RaftNode(a, addrs, SECRET) for a in addrs]
    yield nodes
    for n in nodes:
        n.destroy()


async def until(pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_concurrent_allocation_from_three_nodes_never_duplicates(trio):
    async def main():
        await until(lambda: all(n.status()["leader"] for n in trio))
        net = await trio[0].submit({"op": "network_reserve", "req": "n1", "node": "a",
                                    "pool": "10.213.0.0/16", "pool_prefix": 24})
        calls = [trio[i % 3].submit({"op": "ip_allocate", "req": "r%d" % i, "node": "abc"[i % 3],
                                     "network": net["id"]}) for i in range(90)]
        ips = await asyncio.gather(*calls)
        assert len(set(ips)) == 90
        await until(lambda: all(len(n.state().networks["n1"]["addresses"]) == 90 for n in trio))
        assert trio[0].state().data == trio[1].state().data == trio[2].state().data
    asyncio.run(main())


def test_the_no_op_behind_each_command_commits_but_is_not_a_state_change(trio):
    """submit() puts a no-op behind every command (see RaftNode.submit); it must stay invisible."""
    async def main():
        await until(lambda: all(n.status()["leader"] and n.status()["ready"] for n in trio))
        # Settled: the leader's own first entry is applied everywhere.
        await until(lambda: len({n.status()["last_applied"] for n in trio}) == 1)
        changes = [[] for _ in trio]
        for node, seen in zip(trio, changes):
            node.on_change(lambda seen=seen: seen.append(1))
        before = trio[0].status()["last_applied"]
        await trio[1].submit({"op": "member_up", "node": "x", "advertise": "10.0.0.9", "raft": "x"})
        # The command and its no-op: two entries, applied everywhere.
        await until(lambda: all(n.status()["last_applied"] >= before + 2 for n in trio))
        assert [len(seen) for seen in changes] == [1, 1, 1]
        assert all(list(n.state().members) == ["x"] for n in trio)
    asyncio.run(main())


def test_a_refused_op_raises_a_clear_error_and_the_cluster_goes_on(trio):
    async def main():
        await until(lambda: all(n.status()["leader"] for n in trio))
        with pytest.raises(ShoutdError) as err:
            await trio[1].submit({"op": "network_reserve", "req": "x", "node": "a", "subnet": "nonsense",
                                  "pool": "10.213.0.0/16", "pool_prefix": 24})
        assert "nonsense" in str(err.value)
        # An op that would crash a naive state machine must not stop later commands.
        with pytest.raises(ShoutdError):
            await trio[2].submit({"op": "ip_allocate"})
        net = await trio[2].submit({"op": "network_reserve", "req": "y", "node": "a",
                                    "pool": "10.213.0.0/16", "pool_prefix": 24})
        assert net["subnet"] == "10.213.0.0/24"
    asyncio.run(main())


def test_a_lone_node_without_quorum_says_so():
    a, b = ["127.0.0.1:%d" % p for p in free_ports(2)]
    node = RaftNode(a, [a, b], SECRET)       # its partner never starts

    async def main():
        with pytest.raises(ShoutdError) as err:
            await node.submit({"op": "ip_allocate", "req": "r", "node": "a", "network": "n"}, timeout=2.0)
        assert err.value.kind == "unavailable" and "majority" in str(err.value)
    try:
        asyncio.run(main())
    finally:
        node.destroy()


def test_state_survives_a_restart_through_the_journal():
    (port,) = free_ports(1)
    addr = "127.0.0.1:%d" % port
    with tempfile.TemporaryDirectory() as d:
        files = dict(journal=os.path.join(d, "j"), dump=os.path.join(d, "d"))

        async def write(node):
            await until(lambda: node.status()["ready"])
            await node.submit({"op": "network_reserve", "req": "keep", "node": "a",
                               "pool": "10.213.0.0/16", "pool_prefix": 24})
        node = RaftNode(addr, [], SECRET, **files)
        asyncio.run(write(node))
        node.destroy()
        time.sleep(0.5)

        async def read(node):
            await until(lambda: node.status()["ready"])
            return node.state().networks
        node = RaftNode(addr, [], SECRET, **files)
        try:
            assert "keep" in asyncio.run(read(node))
        finally:
            node.destroy()


def test_without_the_secret_nothing_is_unpickled(tmp_path):
    """PySyncObj's wire format is pickle: an attacker's pickle must never run."""
    (port,) = free_ports(1)
    addr = "127.0.0.1:%d" % port
    node = RaftNode(addr, [], SECRET)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    try:
        asyncio.run(until(lambda: node.status()["ready"]))
        payload = zlib.compress(pickle.dumps(Exploit()))
        for message in (payload, zlib.compress(pickle.dumps(["add", "127.0.0.1:1"]))):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(struct.pack("i", len(message)) + message)
                s.settimeout(2)
                try:
                    assert s.recv(100) == b""        # dropped without a reply
                except (ConnectionResetError, socket.timeout):
                    pass
        time.sleep(0.5)
        assert not marker.exists()
        assert node.status()["nodes"] == {addr: "self"}, "membership must not change"
        asyncio.run(node.submit({"op": "member_up", "node": addr, "advertise": "127.0.0.1", "raft": addr}))
    finally:
        node.destroy()


def test_a_busy_raft_port_is_reported_not_retried_forever():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        with pytest.raises(ShoutdError) as err:
            check_port_free("127.0.0.1", s.getsockname()[1])
        assert "raft_port" in str(err.value) and "in use" in str(err.value)
    finally:
        s.close()
