"""The daemon's gate on the state: nothing acts on it before this process's registration commits.

A restarted node that wins the election can call itself ready while its
journal's commit index lags the entries it holds; the reconciler acting then
removed a running container's veth (seen in CI).  Here with a real one-node
Raft on loopback; tests/e2e shows it on real hosts (graceful restart keeps
every veth).
"""

import asyncio
import types

from shoutd.daemon import Daemon
from shoutd.dataplane.reconciler import Underlay
from shoutd.raft import MemberFile, RaftNode

from ..support import free_ports, until

SECRET = "test-secret-0123456789abcdef"


class Notifier:
    def __init__(self):
        self.seen = []

    def status(self, status):
        self.seen.append(status[1])


def test_the_state_is_used_only_after_this_process_registered(tmp_path):
    (port,) = free_ports(1)
    addr = "127.0.0.1:%d" % port
    cfg = types.SimpleNamespace(raft_address=addr, advertise_address="127.0.0.1", docker_socket="/nonexistent",
                                driver_name="shoutd", state_dir=str(tmp_path), default_pool="10.213.0.0/16",
                                default_pool_prefix=24)
    raft = RaftNode(addr, [], SECRET)

    async def main():
        notifier = Notifier()
        daemon = Daemon(cfg, raft, None, Underlay("127.0.0.1", 4789, 1, 1500), notifier, MemberFile(str(tmp_path)))
        await until(lambda: raft.status.ready and raft.status.has_quorum, what="PySyncObj ready with a leader")
        assert daemon.current_state() is None and daemon.status()[1] is False, "ready is not yet current"
        await daemon.register()
        state = daemon.current_state()
        assert state is not None and addr in state.members
        await until(lambda: notifier.seen and notifier.seen[-1] is True, what="readiness announced")
    try:
        asyncio.run(main())
    finally:
        raft.destroy()


def test_a_dead_raft_thread_ends_the_daemon_with_an_error(tmp_path):
    """PySyncObj's tick thread can die (0.3.11 on an assertion); the process must not live on without it."""
    (port,) = free_ports(1)
    addr = "127.0.0.1:%d" % port
    cfg = types.SimpleNamespace(raft_address=addr, advertise_address="127.0.0.1", docker_socket="/nonexistent",
                                driver_name="shoutd", state_dir=str(tmp_path), default_pool="10.213.0.0/16",
                                default_pool_prefix=24)
    raft = RaftNode(addr, [], SECRET)

    async def main():
        daemon = Daemon(cfg, raft, None, Underlay("127.0.0.1", 4789, 1, 1500), Notifier(), MemberFile(str(tmp_path)))
        await until(lambda: raft.status.ready)
        raft.sync.destroy()                       # the tick thread ends
        await asyncio.wait_for(daemon.watch_raft(), 10)
        assert daemon.stopping.is_set() and daemon.exit_code == 1
        assert "stopped" in raft.health()
    try:
        asyncio.run(main())
    finally:
        raft.destroy()
