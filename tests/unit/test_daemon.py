"""The daemon's gate on the state: nothing acts on it before this process's registration commits.

A restarted node that wins the election can call itself ready while its
journal's commit index lags the entries it holds; the reconciler acting then
removed a running container's veth (seen in CI).  The real Raft side of this
is exercised by tests/e2e (graceful restart keeps every veth).
"""

import asyncio
import types

from shoutd.daemon import Daemon
from shoutd.dataplane.reconciler import Underlay

from .fakes import FakeRaft

NODE = "198.18.0.1:7380"


class RaftSaysReady(FakeRaft):
    """A Raft that reports itself caught up with a leader from the start."""

    loop = None

    def status(self):
        return {"self": NODE, "leader": NODE, "term": 1, "has_quorum": True, "ready": True,
                "nodes": {NODE: "self"}, "commit_index": 1, "last_applied": 1}

    def on_change(self, callback):
        self.changed = callback


class Notifier:
    def __init__(self):
        self.seen = []

    def status(self, status):
        self.seen.append(status["ready"])


def test_the_state_is_used_only_after_this_process_registered(tmp_path):
    cfg = types.SimpleNamespace(raft_address=NODE, advertise_address="198.18.0.1", docker_socket="/nonexistent",
                                driver_name="shoutd", state_dir=str(tmp_path), default_pool="10.213.0.0/16",
                                default_pool_prefix=24)

    async def main():
        notifier = Notifier()
        daemon = Daemon(cfg, RaftSaysReady(), None, Underlay("198.18.0.1", 4789, 2, 1500), notifier)
        assert daemon.ready_state() is None and daemon.status()["ready"] is False
        await daemon.register()
        state = daemon.ready_state()
        assert state is not None and NODE in state.members
        assert notifier.seen[-1] is True, "the registration itself announces readiness"
    asyncio.run(main())
