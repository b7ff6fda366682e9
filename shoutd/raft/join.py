"""Joining a host to a cluster (AddPeer), and remembering the membership across restarts.

The join.  PySyncObj adds a member on the existing cluster, but the new host
must also start with the right member list.  So a member running AddPeer first
asks the new host, with a `shoutd_join` utility message on its Raft port, to
drop its one-node cluster and rebuild with the full list; then it commits the
addition.  Utility messages arrive only after the secret-keyed handshake, so
only a holder of the cluster secret can ask a host to join.  The new host
answers at once and acts once the asker hung up (or JOIN_GRACE later at
most): PySyncObj's client treats a hang-up that arrives together with the
reply as a lost connection.

The membership file.  PySyncObj replays membership *changes* from its journal
on top of the nodes it is started with, so a host that joined through AddPeer
would come back knowing only the members added after it.  The current
membership is therefore kept in state_dir/members.json, rewritten whenever it
changes while a leader is known, and read at start.
"""

import asyncio
import json
import logging
import os

from pysyncobj.utility import TcpUtility, UtilityException

from ..errors import CONFLICT, UNAVAILABLE, ShoutdError

log = logging.getLogger(__name__)

JOIN = "shoutd_join"
REPLICA = "shoutd_replica"  # a join as a replica (roles.py): follow the voters named, outside Raft
VERSION = "shoutd_version"  # a utility message: which state version the shoutd there runs
JOIN_GRACE = 1.0          # at most this many seconds between answering a join request and acting on it
MEMBERS_FILE = "members.json"


async def ask_to_join(secret, addr, members, timeout=10.0, replica=False):
    """Ask the shoutd at `addr` to leave its one-node cluster and join `members` (as a replica of them)."""
    def call():
        try:
            utility = TcpUtility(password=secret, timeout=timeout)      # keyed from keys.py's cache
            return utility.executeCommand(addr, [REPLICA if replica else JOIN] + members)
        except UtilityException as e:
            return "unreachable: %s" % e
    reply = str(await asyncio.get_running_loop().run_in_executor(None, call))
    if reply.startswith("unreachable"):
        raise ShoutdError("host %s did not accept the join request (%s): is shoutd running there, "
                          "listening on that address, with the same cluster secret?"
                          % (addr, reply.split(": ", 1)[-1]), UNAVAILABLE)
    if reply != "joining":
        raise ShoutdError("host %s refused to join: %s" % (addr, reply), CONFLICT)


async def ask_version(secret, addr, timeout=3.0):
    """The newest state version the shoutd at `addr` runs; None if it does not say (shoutd 0.2, or unreachable)."""
    def call():
        try:
            return TcpUtility(password=secret, timeout=timeout).executeCommand(addr, [VERSION])
        except UtilityException:
            return None
    reply = await asyncio.get_running_loop().run_in_executor(None, call)
    try:
        return int(reply)
    except (TypeError, ValueError):
        return None


def answer_version(version):
    """The VERSION utility message's handler, for RaftNode's utility_messages."""
    return lambda args, reply, hung_up: reply(str(version), None)


class JoinRequests:
    """The answering side: registered as the JOIN and REPLICA utility messages of a RaftNode."""

    def __init__(self, self_addr, on_join):
        self.self_addr = self_addr
        self.on_join = on_join       # called on the loop with the new member list, and whether as a replica
        self.node = None             # the RaftNode, once built

    def handlers(self):
        return {JOIN: self, REPLICA: lambda args, reply, hung_up: self(args, reply, hung_up, replica=True)}

    def __call__(self, args, callback, hung_up, replica=False):
        """On the tick thread: answer at once, rebuild on the loop once the asker has the answer."""
        node = self.node
        members = [str(a) for a in args]
        if (self.self_addr in members) == replica:
            return callback("the member list %s this host (%s)" % ("names" if replica else "does not name",
                                                                    self.self_addr), None)
        if node is None or node.loop is None:
            return callback("%s is not ready to join yet; try again" % self.self_addr, None)
        if len(node.status.nodes) > 1:
            others = ", ".join(n for n in sorted(node.status.nodes) if n != self.self_addr)
            return callback("%s is already a member of a cluster with %s; remove it there first"
                            % (self.self_addr, others), None)
        if node.machine.has_networks():
            return callback("%s has shoutd networks of its own; remove them before it joins" % self.self_addr, None)
        callback("joining", None)
        node.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._act(hung_up, members, replica)))

    async def _act(self, hung_up, members, replica):
        deadline = asyncio.get_running_loop().time() + JOIN_GRACE
        while not hung_up() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)         # the asker reads the answer, then hangs up
        self.on_join(members, replica)


class MemberFile:
    """members.json: the Raft members, or, on a replica, {"replica_of": the voters}."""

    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, MEMBERS_FILE) if state_dir else None
        self.replica_of = []
        self.known = self.load()

    def load(self):
        if self.path is None:
            return []
        try:
            with open(self.path) as f:
                members = json.load(f)
            if isinstance(members, dict):
                self.replica_of = sorted(m for m in members.get("replica_of", []) if isinstance(m, str))
                return []
            return sorted(m for m in members if isinstance(m, str))
        except (OSError, ValueError, TypeError, AttributeError):
            return []

    def remember(self, status):
        """Keep the membership of `status` (a RaftStatus) if a leader vouches for it."""
        members = sorted(status.nodes)
        if self.path is None or status.leader is None or members == self.known or self.replica_of:
            return
        self.known = members
        self._write(members)

    def remember_members(self, members):
        """This host is a Raft member with `members` from now on (a promoted replica)."""
        self.replica_of, self.known = [], sorted(members)
        self._write(self.known)

    def remember_replica(self, voters):
        """This host follows `voters` from now on (and after a restart)."""
        self.replica_of, self.known = sorted(voters), []
        self._write({"replica_of": self.replica_of})

    def _write(self, content):
        with open(self.path + ".new", "w") as f:
            json.dump(content, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.path + ".new", self.path)
