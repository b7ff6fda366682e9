"""The cluster's state version (state/ops.py), moved forward as hosts are upgraded one at a time.

Two steps, each taken on whatever host it concerns:
- The leader raises the cluster's version, by the op cluster_version, once
  every member, voter or replica, has registered from a release that runs
  it.  A member not heard of yet (just added), or registered by an older
  release, holds it back; the op never lowers it.
- Then every host reports what the new version lets it report (today: its
  shoutd release, shown by `shoutdctl peers`), by registering again in the
  newer form.  That is the upgrade's only migration so far.
A host that cannot run the cluster's version stops applying (ClusterState.apply)
and this loop, like the others, then waits for nothing: caught_up stays unset.
And a host restarted with an older release than its state was written by
refuses to start at all (`check_state_version`): a downgrade changes nothing.
"""

import logging
import os

from . import __version__
from .errors import UNAVAILABLE, ShoutdError
from .kickloop import KickLoop
from .state import STATE_VERSION, ops

log = logging.getLogger(__name__)


class Versions(KickLoop):
    def __init__(self, node, view, submit, advertise, hostname, interval=30.0):
        super().__init__(interval, view.caught_up)
        self.node = node
        self.view = view                  # state, status, caught_up (the RaftNode)
        self.submit = submit
        self.advertise = advertise
        self.hostname = hostname

    def registration(self):
        """This host's member_up, in the newest form the cluster's version allows."""
        return ops.within(ops.member_up(self.node, self.advertise, self.hostname, release=__version__),
                          self.view.state.version)

    async def step(self, periodic):
        try:
            await self.raise_version()
            await self.report()
        except ShoutdError as e:
            log.info("cluster state version: %s; trying again", e)
            self.kick(delay=1.0)

    async def raise_version(self):
        state, status = self.view.state, self.view.status
        if status.role != "leader":
            return
        # Replicas (roles.py) apply the same log as the voters: they hold it back too.
        everyone = set(status.nodes) | set(state.members)
        known = {m: rec["version"] for m, rec in state.members.items()}
        if everyone - set(known):
            return                        # a member that has not registered yet: its release is unknown
        target = min(min(known.values()), STATE_VERSION)
        before = state.version
        if target <= before:
            return
        await self.submit(ops.cluster_version(self.node, target))
        log.info("cluster state version raised from %d to %d: every member runs it", before, target)

    async def report(self):
        me = self.view.state.members.get(self.node)
        if me is None or me["version"] != STATE_VERSION:
            return                        # not registered yet, or registered by another release: register() will
        wanted = self.registration()
        if "release" in wanted and me.get("release") != wanted["release"]:
            await self.submit(wanted)
            log.info("reported this host's release %s to the cluster (state version %d)", wanted["release"],
                     self.view.state.version)


# -- the state version on disk: a downgrade is refused before anything is changed ------------------

VERSION_FILE = "state-version"


def remember_state_version(state_dir, version):
    """Keep the newest state version this host's state has reached (read at the next start)."""
    path = os.path.join(state_dir, VERSION_FILE)
    if _read(path) >= version:
        return                            # only ever raised, like the cluster's version
    with open(path + ".new", "w") as f:
        f.write("%d\n" % version)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".new", path)


def check_state_version(state_dir):
    """Refuse to start on a state that a newer release has written: before Raft reads or writes any of it."""
    found = _read(os.path.join(state_dir, VERSION_FILE))
    if found > STATE_VERSION:
        raise ShoutdError("the state in %s is at state version %d, written by a newer shoutd; this shoutd %s runs "
                          "up to %d. Downgrading below the cluster's state version is refused, and nothing was "
                          "changed: install the newer release again" % (state_dir, found, __version__, STATE_VERSION),
                          UNAVAILABLE, "UpgradeNeeded")


def _read(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0
