"""The D-Bus adapter rebuilds its properties only when what they show can have moved.

Every host applies every op; the properties (Leader, Peers, Networks) are
built from the whole membership, so rebuilding them on an address or endpoint
change would cost every host O(members) per op for nothing (issue 16).
"""

from shoutd.dbus_api import Exported
from shoutd.raft import RaftStatus
from shoutd.state import ADDRESSES, ENDPOINTS, GROUPS, MEMBERS, NETWORKS


class Iface:
    def __init__(self):
        self.refreshed = 0

    def refresh(self):
        self.refreshed += 1


def status(leader="a:7380", nodes=("a:7380", "b:7380")):
    return RaftStatus(self="a:7380", leader=leader, term=1, role="leader", has_quorum=True,
                      nodes={n: "connected" for n in nodes})


def test_properties_follow_members_networks_and_raft_only():
    iface = Iface()
    exported = Exported(None, iface)
    exported.refresh({ADDRESSES}, status())
    assert iface.refreshed == 1                  # the first look: everything is news
    for parts in ({ADDRESSES}, {ENDPOINTS, GROUPS}, set()):
        exported.refresh(parts, status())
    assert iface.refreshed == 1                  # nothing the properties show moved
    exported.refresh({MEMBERS}, status())
    exported.refresh({NETWORKS, ADDRESSES}, status())
    assert iface.refreshed == 3
    exported.refresh({ADDRESSES}, status(leader="b:7380"))
    exported.refresh(set(), status(leader="b:7380", nodes=("a:7380", "b:7380", "c:7380")))
    assert iface.refreshed == 5                  # a new leader, a new voter
