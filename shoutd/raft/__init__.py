"""The Raft cluster: everything that knows about PySyncObj lives in this package.

PySyncObj has sharp edges (see docs/libraries.md and each module's note),
and they are handled here and nowhere else:
- node.py       the member: built on the main thread, watched (health, honest
                quorum), bridged to asyncio; writes with definite outcomes
- machine.py    the replicated state machine on the tick thread, and the
                loop's own replica of it (no copies, no locks for readers)
- transport.py  the Raft port hardened against strangers; who was heard when
- journal.py    the journal fsynced before anything is acknowledged
- join.py       AddPeer's join protocol, and the membership kept across restarts
- feed.py, replica.py, replica_node.py, channel.py
                replicas: hosts outside Raft that follow the state through
                one voter's feed (roles.py says who votes)

PySyncObj before 0.3.16 keeps the Raft term and vote only in memory, so
restarting every member at once can elect a stale leader and overwrite
committed entries (upstream issue #201).  shoutd refuses to run on it.
"""

import pysyncobj.version

from ..errors import ShoutdError
from . import keys
from .join import JOIN, REPLICA, VERSION, JoinRequests, MemberFile, answer_version, ask_to_join, ask_version
from .node import RaftNode, RaftStatus, check_port_free

MIN_PYSYNCOBJ = (0, 3, 16)

keys.install()      # every SyncObj and TcpUtility takes Raft's key from keys.py: the secret is stretched once

__all__ = ["JOIN", "REPLICA", "VERSION", "JoinRequests", "MemberFile", "RaftNode", "RaftStatus", "answer_version",
           "ask_to_join", "ask_version", "check_port_free", "check_pysyncobj"]


def check_pysyncobj(version=None):
    """Refuse a PySyncObj that could lose committed entries."""
    version = version or pysyncobj.version.VERSION
    try:
        parts = tuple(int(p) for p in version.split(".")[:3])
    except ValueError:
        return
    if parts < MIN_PYSYNCOBJ:
        raise ShoutdError("PySyncObj %s is too old: before %s it keeps the Raft term and vote only in memory, so "
                          "a restart of every member can lose committed data. Install python3-pysyncobj %s or "
                          "later (shoutd's packages ship it; pip: pip install 'pysyncobj>=%s')"
                          % (version, ".".join(map(str, MIN_PYSYNCOBJ)), ".".join(map(str, MIN_PYSYNCOBJ)),
                             ".".join(map(str, MIN_PYSYNCOBJ))))
