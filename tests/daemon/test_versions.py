"""Releases meeting in one cluster (issue 13): AddPeer refuses a host too old for the cluster's state version."""

from shoutd import __version__
from shoutd.state.ops import STATE_VERSION

from ..hostlab import previous_tree
from ..support import wait_for
from .conftest import status

CALL = ["call", "org.darkkitchen.Shoutd", "/org/darkkitchen/Shoutd", "org.darkkitchen.Shoutd"]


def test_addpeer_refuses_a_host_on_an_older_release_and_takes_one_on_this(world, tmp_path):
    secret = world.secret()
    a = world.host().start(secret, world.bus())
    # Alone, this host runs this release: its cluster runs state version 3 at once.
    wait_for(lambda: status(a.bus)["StateVersion"] == STATE_VERSION, timeout=30, what="this release's state version")
    old = world.host().start(secret, world.bus(), tree=previous_tree(str(tmp_path)))
    res = a.bus.busctl(*CALL, "AddPeer", "s", old.ip, check=False)
    assert res.returncode != 0 and "upgrade it first" in res.stderr, res.stderr
    assert sorted(m[0] for m in status(a.bus)["Members"]) == [a.member], "nothing changed"
    assert len(status(old.bus)["Members"]) == 1, "the old host stays in its own cluster"
    new = world.host().start(secret, world.bus())
    a.bus.busctl(*CALL, "AddPeer", "s", new.ip)
    wait_for(lambda: sorted(m[0] for m in status(a.bus)["Members"]) == sorted([a.member, new.member]),
             timeout=30, what="the host on this release joined")
    wait_for(lambda: set(status(a.bus)["Releases"].values()) == {__version__}, timeout=30, what="its release reported")
    assert status(a.bus)["Roles"] == {a.member: "voter", new.member: "voter"}, "two hosts: both vote"
