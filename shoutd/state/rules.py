"""How an op says no, and how a host says it cannot go on.

`reject` refuses one op: every host refuses it the same way, the state is
unchanged, and the proposer gets the message.  `Halt` is for what this
release cannot apply at all (an op it does not know, a state version newer
than it runs): carrying on would leave this host's state different from the
others', so it stops applying altogether (see ClusterState.apply).
"""

from typing import NoReturn

from ..errors import INVALID, ShoutdError


def reject(message: str, kind: str = INVALID) -> NoReturn:
    raise ShoutdError(message, kind)


class Halt(Exception):
    """This release cannot apply what the cluster has committed; `version` is what the cluster runs."""

    def __init__(self, version, what=None):
        super().__init__(what or "state version %d" % version)
        self.version = version
        self.what = what
