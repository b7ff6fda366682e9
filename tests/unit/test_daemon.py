"""The daemon's gate on the state: nothing acts on it before this process's registration commits.

A restarted node that wins the election can call itself ready while its
journal's commit index lags the entries it holds; the reconciler acting then
removed a running container's veth (seen in CI).  Here with a real one-node
Raft on loopback; tests/e2e shows it on real hosts (graceful restart keeps
every veth).
"""

import asyncio
import types

import pytest

from shoutd.daemon import Daemon
from shoutd.dataplane.reconciler import Underlay
from shoutd.raft import MemberFile, RaftNode

from ..support import free_ports, until

SECRET = "test-secret-0123456789abcdef"


class Notifier:
    def __init__(self):
        self.seen = []

    def status(self, raft, caught_up):
        self.seen.append(caught_up)


@pytest.fixture
def one_node(tmp_path):
    """A real one-node Raft on loopback and a Daemon factory over it."""
    (port,) = free_ports(1)
    addr = "127.0.0.1:%d" % port
    cfg = types.SimpleNamespace(raft_address=addr, advertise_address="127.0.0.1", docker_socket="/nonexistent",
                                driver_name="shoutd", state_dir=str(tmp_path), default_pool="10.213.0.0/16",
                                default_pool_prefix=24, voters_five_from=7, voter_lost_after=60.0)
    raft = RaftNode(addr, [], SECRET)

    def daemon(notifier):
        return Daemon(cfg, raft, None, Underlay("127.0.0.1", 4789, 1, 1500), notifier, MemberFile(str(tmp_path)))
    try:
        yield types.SimpleNamespace(addr=addr, raft=raft, daemon=daemon)
    finally:
        raft.destroy()


def test_the_state_is_used_only_after_this_process_registered(one_node):
    raft, addr = one_node.raft, one_node.addr

    async def main():
        notifier = Notifier()
        daemon = one_node.daemon(notifier)
        await until(lambda: raft.status.replayed and raft.status.has_quorum, what="PySyncObj ready with a leader")
        assert not raft.caught_up.is_set(), "PySyncObj's ready is not yet current"
        await daemon.register()
        assert raft.caught_up.is_set() and addr in raft.state.members
        await until(lambda: notifier.seen and notifier.seen[-1] is True, what="readiness announced")
    asyncio.run(main())


def test_a_dead_raft_thread_ends_the_daemon_with_an_error(one_node):
    """PySyncObj's tick thread can die (0.3.11 on an assertion); the process must not live on without it."""
    raft = one_node.raft

    async def main():
        daemon = one_node.daemon(Notifier())
        await until(lambda: raft.status.replayed)
        raft.sync.destroy()                       # the tick thread ends
        await asyncio.wait_for(daemon.watch_raft(), 10)
        assert daemon.stopping.is_set() and daemon.exit_code == 1
        assert "stopped" in raft.health().text and raft.health().fatal
    asyncio.run(main())


def test_each_run_serves_on_its_own_copy_of_a_socket_systemd_passed(tmp_path):
    """A host that joins as a replica runs the daemon again in the same process: aiohttp closes the first run's
    socket on the way out, and the second run must still serve on the one systemd passed."""
    import socket

    from shoutd.daemon import listening
    path = str(tmp_path / "plugin.sock")
    passed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    passed.bind(path)
    passed.listen(4)
    first, owned = listening([passed], 0, str(tmp_path / "own.sock"), "the plugin API")
    assert not owned
    first.close()                                   # as aiohttp's cleanup does at the end of a run
    second, _ = listening([passed], 0, str(tmp_path / "own.sock"), "the plugin API")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    served, _ = second.accept()
    served.close()
    client.close()
    second.close()
    passed.close()
    assert not (tmp_path / "own.sock").exists()
