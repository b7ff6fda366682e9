"""D-Bus control of a real shoutd on a private, system-like bus; clusters formed with AddPeer."""

import json

from ..support import until, wait_for
from .conftest import status

NOBODY = 65534
CALL = ["call", "org.darkkitchen.Shoutd", "/org/darkkitchen/Shoutd", "org.darkkitchen.Shoutd"]


def wait(pred, timeout=30):
    wait_for(pred, timeout=timeout)


def test_anyone_reads_status_only_root_changes_anything(world):
    bus = world.bus()
    world.host().start(world.secret(), bus)
    st = status(bus)
    assert st["Self"] == "198.20.0.1:7380" and st["Leader"] == st["Self"] and st["Quorum"] is True
    assert st["Members"] == [["198.20.0.1:7380", "198.20.0.1", st["Members"][0][2], "leader"]]

    as_nobody = bus.busctl(*CALL, "Status", user=NOBODY)
    assert "Self" in as_nobody.stdout
    denied = bus.busctl(*CALL, "AddPeer", "s", "198.20.0.9", user=NOBODY, check=False)
    assert denied.returncode != 0 and "Access denied" in denied.stderr, denied.stderr

    bad = bus.busctl(*CALL, "AddPeer", "s", "not-an-address", check=False)
    assert bad.returncode != 0 and "not a host address" in bad.stderr and "Traceback" not in bad.stderr
    mine = bus.busctl(*CALL, "RemovePeer", "s", "198.20.0.1", check=False)
    assert "this host" in mine.stderr
    again = bus.busctl(*CALL, "AddPeer", "s", "198.20.0.1:7380", check=False)
    assert "already a member" in again.stderr


def test_the_daemon_checks_the_caller_even_if_the_policy_lets_everyone_in(world):
    bus = world.bus(permissive=True)
    world.host().start(world.secret(), bus)
    denied = bus.busctl(*CALL, "AddPeer", "s", "198.20.0.9", user=NOBODY, check=False)
    assert denied.returncode != 0 and "for root only" in denied.stderr, denied.stderr
    mon = bus.busctl("--json=short", "call", "org.darkkitchen.Shoutd", "/org/darkkitchen/Shoutd",
                     "org.freedesktop.DBus.Properties", "Get", "ss", "org.darkkitchen.Shoutd", "Peers")
    assert json.loads(mon.stdout)["data"][0]["data"] == ["198.20.0.1:7380"], "nothing was added"


def test_introspection_shows_the_documented_interface(world):
    bus = world.bus()
    world.host().start(world.secret(), bus)
    out = bus.busctl("introspect", "org.darkkitchen.Shoutd", "/org/darkkitchen/Shoutd", user=NOBODY).stdout
    for member, kind, sig in (("AddPeer", "method", "s"), ("RemovePeer", "method", "s"),
                              ("Status", "method", "-"), ("Leader", "property", "s"),
                              ("Peers", "property", "as"), ("Networks", "property", "as"),
                              ("PeerJoined", "signal", "s"), ("PeerLeft", "signal", "s"),
                              ("LeaderChanged", "signal", "s")):
        line = next((l for l in out.splitlines() if l.startswith("." + member)), "")
        assert kind in line and sig in line, (member, out)


def test_addpeer_forms_a_cluster_and_removepeer_shrinks_it(world):
    secret = world.secret()
    bus_a, bus_b = world.bus(), world.bus()
    world.host().start(secret, bus_a)
    b = world.host().start(secret, bus_b)          # a lone one-node cluster, until asked
    bus_a.busctl(*CALL, "AddPeer", "s", b.ip)
    both = ["198.20.0.1:7380", "198.20.0.2:7380"]
    wait(lambda: sorted(m[0] for m in status(bus_a)["Members"]) == both)
    wait(lambda: sorted(m[0] for m in status(bus_b)["Members"]) == both)
    wait(lambda: all(m[3] in ("leader", "connected", "self") for m in status(bus_a)["Members"])
         and status(bus_a)["Leader"] == status(bus_b)["Leader"] != "")
    # b registered its VTEP in the shared state: a sees its address.
    wait(lambda: any(m[1] == b.ip for m in status(bus_a)["Members"]))
    b.wait_log("joining the cluster of 198.20.0.1:7380")

    # A host that joined through AddPeer comes back into the same cluster after a restart.
    b.stop()
    b.start(secret, bus_b)
    wait(lambda: sorted(m[0] for m in status(bus_b)["Members"]) == both)
    wait(lambda: status(bus_b)["Leader"] == status(bus_a)["Leader"] != "" and status(bus_b)["Ready"])

    # A host with another secret can neither join nor be joined.
    c = world.host().start(world.secret("other-secret"), world.bus())
    wrong = bus_a.busctl(*CALL, "AddPeer", "s", c.ip, check=False)
    assert wrong.returncode != 0 and "same cluster secret" in wrong.stderr, wrong.stderr
    assert sorted(m[0] for m in status(bus_a)["Members"]) == both

    bus_a.busctl(*CALL, "RemovePeer", "s", b.ip)
    wait(lambda: [m[0] for m in status(bus_a)["Members"]] == ["198.20.0.1:7380"])
    assert status(bus_a)["Quorum"] is True


def test_shoutdctl_tables_json_and_exit_codes(world):
    bus = world.bus()
    res = bus.ctl("status")
    assert res.returncode == 3 and "not running" in res.stderr
    world.host().start(world.secret(), bus)
    res = bus.ctl("status")
    assert res.returncode == 0 and "MEMBER" in res.stdout and "198.20.0.1:7380" in res.stdout
    # Raft's own events: when the leader last changed (this host's own election) and the slowest flush.
    assert "leader changed 20" in res.stdout and "slowest journal flush (10 min)" in res.stdout, res.stdout
    st = status(bus)
    assert st["LeaderChanged"] > 0 and st["SlowestFlush"] >= 0 and st["Unreachable"] == []
    assert st["Firewall"] == [], "no shoutd network here yet: nothing of the firewall was looked at"
    st = json.loads(bus.ctl("--json", "status").stdout)
    assert st["leader_changed"] > 0 and "slowest_flush" in st
    res = bus.ctl("--json", "peers")
    assert res.returncode == 0 and json.loads(res.stdout)[0]["address"] == "198.20.0.1:7380"
    assert json.loads(bus.ctl("--json", "networks").stdout) == []
    res = bus.ctl("network", "nosuch")
    assert res.returncode == 1 and "no shoutd network named 'nosuch'" in res.stderr, res.stderr
    assert "Traceback" not in world.hosts[0].read_log(), "a refusal is an answer, not a traceback in the log"
    res = bus.ctl("peers", "add", "198.20.0.7", user=NOBODY)
    assert res.returncode == 4 and "root" in res.stderr, res.stderr
    res = bus.ctl("peers", "add", "bogus")
    assert res.returncode == 1 and "not a host address" in res.stderr
    assert bus.ctl("peers", "add").returncode == 2


def test_signals_and_properties_changed_are_announced(world):
    """A D-Bus client sees PeerJoined, LeaderChanged-free growth and PropertiesChanged for Peers."""
    import asyncio

    from dbus_next import Message
    from dbus_next.aio import MessageBus

    secret = world.secret()
    bus_a, bus_b = world.bus(), world.bus()
    world.host().start(secret, bus_a)
    b = world.host().start(secret, bus_b)

    async def watch():
        client = await MessageBus(bus_address=bus_a.address).connect()
        seen = []
        client.add_message_handler(lambda m: seen.append((m.member, m.body)) if m.message_type.name == "SIGNAL" else None)
        await client.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                  interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                  body=["type='signal',sender='org.darkkitchen.Shoutd'"]))
        proc = await asyncio.create_subprocess_exec("busctl", "--address=" + bus_a.address, *CALL, "AddPeer",
                                                    "s", b.ip, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 0, err
        await until(lambda: any(s[0] == "PeerJoined" for s in seen) and any(s[0] == "PropertiesChanged" for s in seen),
                    timeout=30, what="PeerJoined and PropertiesChanged")
        client.disconnect()
        return seen
    seen = asyncio.run(watch())
    assert ("PeerJoined", ["198.20.0.2:7380"]) in seen, seen
    changed = [s[1] for s in seen if s[0] == "PropertiesChanged"]
    assert any(body[0] == "org.darkkitchen.Shoutd" and "Peers" in body[1] for body in changed), changed


def test_no_quorum_is_a_named_error(world):
    bus = world.bus()
    h = world.host()
    h.start(world.secret(), bus, peers=["198.20.0.77"], wait=False)     # its only peer never comes
    h.wait_log("D-Bus: ")
    res = bus.busctl(*CALL, "AddPeer", "s", "198.20.0.78", check=False)
    assert res.returncode != 0 and "no quorum" in res.stderr, res.stderr
    res = bus.ctl("peers", "add", "198.20.0.78")
    assert res.returncode == 5, (res.returncode, res.stderr)
