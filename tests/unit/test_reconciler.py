"""The reconciler's bookkeeping, with a fake netlink worker: which passes reach the kernel.

The kernel side of a pass is tested against the real kernel in tests/kernel.
"""

import asyncio

from shoutd.dataplane.reconciler import Reconciler, Underlay
from shoutd.errors import ShoutdError
from shoutd.state import ClusterState

NODE = "198.18.0.1:7380"
UNDERLAY = Underlay("198.18.0.1", 4789, 2, 1500)


class FakeWorker:
    """Records each plan it is asked to apply (bridges, veths, full check?); fails while `failing` is set."""

    def __init__(self):
        self.plans = []
        self.failing = False

    async def run(self, fn, networks, endpoints, underlay, previous, fence=None, firewall=None):
        self.plans.append(([n.bridge for n in networks], [e.host for e in endpoints], previous is None))
        if self.failing:
            raise ShoutdError("cannot create bridge shb4200: Operation not permitted (EPERM)", "internal")


def cluster():
    state = ClusterState()
    for op in ({"op": "member_up", "node": NODE, "advertise": "198.18.0.1", "raft": NODE},
               {"op": "network_reserve", "req": "r1", "node": NODE, "pool": "10.213.0.0/16", "pool_prefix": 24}):
        assert "error" not in state.apply(op), op
    return state


class View:
    """The control plane as the reconciler sees it: a state, and the event that says it is current."""

    def __init__(self, state):
        self.state = state
        self.caught_up = asyncio.Event()
        self.caught_up.set()


def run(state, steps):
    """Drive a Reconciler through `steps`: callables taking (reconciler, state)."""
    worker = FakeWorker()

    async def main():
        rec = Reconciler(worker, NODE, UNDERLAY, View(state))
        for s in steps:
            await s(rec, state, worker)
    asyncio.run(main())
    return worker.plans


async def kicked(rec, state, worker):
    await rec.step(periodic=False)


async def periodic(rec, state, worker):
    await rec.step(periodic=True)


def test_an_unchanged_plan_does_not_reach_the_kernel_until_the_periodic_pass():
    state = cluster()

    async def allocate_an_address(rec, state, worker):
        net = next(iter(state.networks))
        assert "error" not in state.apply({"op": "ip_allocate", "req": "a1", "node": NODE, "network": net})

    plans = run(state, [kicked, allocate_an_address, kicked, kicked, periodic])
    # The first pass checks everything; the address and the repeat change nothing here;
    # the periodic pass checks everything again.
    assert len(plans) == 2 and plans[0] == plans[1] and plans[0][2] is True


def test_a_new_local_endpoint_is_applied_at_once():
    state = cluster()

    async def add_endpoint(rec, state, worker):
        net = next(iter(state.networks))
        ip = state.apply({"op": "ip_allocate", "req": "a1", "node": NODE, "network": net})["value"]
        assert "error" not in state.apply({"op": "endpoint_add", "node": NODE, "network": net,
                                           "endpoint": "ab" * 32, "ip": ip, "mac": "0a:5d:0a:d5:00:02"})

    plans = run(state, [kicked, add_endpoint, kicked])
    # Applied as a change on top of the first pass, not as a check of every object.
    assert plans[1][1] == ["shv" + "ab" * 6] and plans[1][2] is False


def test_after_a_failed_pass_the_same_plan_is_tried_again():
    state = cluster()

    async def fail(rec, state, worker):
        worker.failing = True

    async def recover(rec, state, worker):
        worker.failing = False

    async def reconcile_reports_the_error(rec, state, worker):
        task = asyncio.ensure_future(rec.reconcile(timeout=5))
        await asyncio.sleep(0)          # let reconcile() register before the pass
        await rec.step(periodic=False)
        try:
            await task
        except ShoutdError as e:
            assert "EPERM" in e.message
        else:
            raise AssertionError("reconcile() hid the failed pass")

    plans = run(state, [fail, reconcile_reports_the_error, recover, kicked, kicked])
    # The failed pass, its retry as a full check, and then nothing: the plan is applied.
    assert len(plans) == 2 and plans[0] == plans[1] and plans[1][2] is True, plans
