"""The request memory: a retried proposal answers as the first did, and a withdrawn one never takes effect.

Every op carries a request id (`req`).  The last REQUEST_MEMORY successful
requests are remembered with their result, so that a retried proposal
returns the same answer instead of acting twice.  A proposer that gave up
waiting for its op proposes `withdraw` for it: if the op has not been
applied yet it never will be, and if it has, it is undone where its op has
an undo (ops.py).  Either way the proposer learns a definite outcome (see
raft/node.py).
"""

from typing import TYPE_CHECKING

from .. import checks

if TYPE_CHECKING:
    from . import ClusterState

REQUEST_MEMORY = 10000
WITHDRAWN = {"withdrawn": True}


def remember(state: "ClusterState", req: str, outcome) -> None:
    requests = state.data["requests"]
    requests[req] = outcome
    while len(requests) > REQUEST_MEMORY:
        requests.popitem(last=False)


def withdraw(state: "ClusterState", op: dict):
    """Settle request `target`: never apply it from now on, or undo it if that is safe.

    Returns {"withdrawn": True} when the target has no effect (it never
    ran, or it was undone), else {"applied": its result}.
    """
    from .ops import OPS
    target = checks.own_id(op["target"], "request id")
    requests = state.data["requests"]
    done = requests.get(target)
    if done == WITHDRAWN:
        return dict(WITHDRAWN)
    if done is None:
        remember(state, target, WITHDRAWN)
        return dict(WITHDRAWN)
    spec = OPS.get(done["op"])
    if spec is not None and spec.undo is not None and spec.undo(state, target, done["result"]):
        requests[target] = WITHDRAWN
        return dict(WITHDRAWN)
    return {"applied": done["result"]}


def barrier(state: "ClusterState", op: dict) -> None:
    """A no-op whose commit proves that this host has applied everything committed before it."""
    return None
