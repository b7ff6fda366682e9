"""org.darkkitchen.Shoutd on the system bus: status and peer management.

A thin adapter over Service.  Two things are done here and nowhere else:
- Errors become named D-Bus errors (org.darkkitchen.Shoutd.Error.*) carrying
  the Service's message, never a Python traceback.
- Only root may change anything.  The bus policy file says so too, but the
  daemon checks the caller itself, so a wrong policy file does not open the
  door: dbus-next never shows a method its caller, so a message handler
  intercepts the mutating calls first, asks the bus for the caller's uid and
  only then runs them.
"""

import asyncio
import logging

from dbus_next import BusType, Message, MessageType, PropertyAccess, Variant
from dbus_next.aio import MessageBus
from dbus_next.errors import DBusError
from dbus_next.service import ServiceInterface, dbus_property, method, signal

from .errors import CONFLICT, INVALID, NO_QUORUM, NOT_FOUND, UNAVAILABLE, ShoutdError
from .state import MEMBERS, NETWORKS
from .state.records import network_label

log = logging.getLogger(__name__)

BUS_NAME = "org.darkkitchen.Shoutd"
OBJECT_PATH = "/org/darkkitchen/Shoutd"
INTERFACE = "org.darkkitchen.Shoutd"
ERROR = "org.darkkitchen.Shoutd.Error."
MUTATING = {"AddPeer", "RemovePeer"}
_BY_KIND = {INVALID: "InvalidArgument", CONFLICT: "Conflict", NOT_FOUND: "NotFound", UNAVAILABLE: NO_QUORUM}


def dbus_error(e):
    if isinstance(e, ShoutdError):
        return DBusError(ERROR + (e.name or _BY_KIND.get(e.kind, "Failed")), e.message)
    log.exception("bug in a D-Bus method", exc_info=e)
    return DBusError(ERROR + "Failed", "internal error: %s (see the shoutd log)" % e)


def status_variant(st):
    members = [[m["address"], m["vtep"], m["hostname"], m["state"]] for m in st["members"]]
    networks = [[n["name"], n["subnet"], n["vni"], n["endpoints"]] for n in st["networks"]]
    return {"Self": Variant("s", st["self"]), "Leader": Variant("s", st["leader"]),
            "Term": Variant("t", int(st["term"] or 0)), "Quorum": Variant("b", st["quorum"]),
            "Ready": Variant("b", st["ready"]), "Members": Variant("a(ssss)", members),
            "Networks": Variant("a(ssuu)", networks),
            # Hosts that applied the same log show the same pair: a quick check that they agree.
            "Applied": Variant("t", int(st["applied"])), "StateDigest": Variant("s", st["digest"]),
            # The Raft log behind it: the entry known committed, and the last one applied.
            "CommitIndex": Variant("t", int(st["commit_index"] or 0)),
            "LastApplied": Variant("t", int(st["last_applied"] or 0)),
            # Per network: its multicast mode and, when pruned, who listens to which group.
            "Multicast": Variant("a(ssa(sas))", [[network_label(n), n["multicast"],
                                                  [[g, hosts] for g, hosts in n["groups"]]]
                                                 for n in st["networks"]]),
            # False on kernels before 6.4: this host sends every group to every host.
            "KernelPrunes": Variant("b", st["kernel_prunes"]),
            # What in this host's firewall keeps shoutd traffic from flowing, each with what to do ([] if nothing).
            "Firewall": Variant("as", st["firewall"]),
            # Raft as this host sees it: whom it cannot reach, when the leader last changed
            # (Unix seconds, 0 if never seen), the slowest journal flush of the last 10 minutes.
            "Unreachable": Variant("as", st["unreachable"]),
            "LeaderChanged": Variant("d", float(st["leader_changed"])),
            "SlowestFlush": Variant("d", float(st["slowest_flush"])),
            # The cluster's state version, the newest this host runs, and why this host stopped applying
            # the cluster's log ("" while it applies it: see state/ops.py); each member's release.
            "StateVersion": Variant("u", int(st["state_version"])),
            "RunsStateVersion": Variant("u", int(st["runs_state_version"])),
            "Halted": Variant("s", st["halted"]),
            "Releases": Variant("a{ss}", dict(st["releases"])),
            # Each member's role: "voter" (in Raft) or "replica" (follows the state through a voter).
            "Roles": Variant("a{ss}", dict(st["roles"]))}


class ShoutdInterface(ServiceInterface):
    def __init__(self, service):
        super().__init__(INTERFACE)
        self.service = service
        self._last = self._snapshot()

    # Reached only through Gate, after the caller was found to be root.
    async def checked(self, member, address):
        try:
            if member == "AddPeer":
                await self.service.membership.add_peer(address)
            else:
                await self.service.membership.remove_peer(address)
        except Exception as e:  # noqa: BLE001 - the boundary
            raise dbus_error(e) from None

    @method()
    async def AddPeer(self, address: "s"):  # noqa: F821 - D-Bus signature
        """Add the host at ADDRESS (ip or ip:port) to the cluster."""
        raise DBusError(ERROR + "AccessDenied", "the caller could not be verified")

    @method()
    async def RemovePeer(self, address: "s"):  # noqa: F821
        """Remove the host at ADDRESS from the cluster."""
        raise DBusError(ERROR + "AccessDenied", "the caller could not be verified")

    @method()
    def Status(self) -> "a{sv}":  # noqa: F821
        try:
            return status_variant(self.service.membership.status())
        except Exception as e:  # noqa: BLE001
            raise dbus_error(e) from None

    @method()
    def Network(self, name: "s") -> "a{sv}":  # noqa: F821
        """One network by name or id: its hosts and every address with its holder."""
        try:
            net = self.service.membership.network(name)
        except Exception as e:  # noqa: BLE001
            raise dbus_error(e) from None
        return {"Name": Variant("s", net["name"]), "Id": Variant("s", net["id"]),
                "Subnet": Variant("s", net["subnet"]), "Gateway": Variant("s", net["gateway"]),
                "VNI": Variant("u", net["vni"]), "Port": Variant("q", net["port"]), "Hosts": Variant("as", net["hosts"]),
                "Multicast": Variant("s", net["multicast"]),
                "Groups": Variant("a(sas)", [[g, hosts] for g, hosts in net["groups"]]),
                "Addresses": Variant("a(ssss)", [[a["ip"], a["member"], a["host"], a["endpoint"]]
                                                 for a in net["addresses"]])}

    @dbus_property(access=PropertyAccess.READ)
    def Leader(self) -> "s":  # noqa: F821
        return self._last["leader"]

    @dbus_property(access=PropertyAccess.READ)
    def Peers(self) -> "as":  # noqa: F821
        return self._last["peers"]

    @dbus_property(access=PropertyAccess.READ)
    def Networks(self) -> "as":  # noqa: F821
        return self._last["networks"]

    @signal()
    def PeerJoined(self, address) -> "s":  # noqa: F821
        return address

    @signal()
    def PeerLeft(self, address) -> "s":  # noqa: F821
        return address

    @signal()
    def LeaderChanged(self, leader) -> "s":  # noqa: F821
        return leader

    def _snapshot(self):
        st = self.service.membership.status()
        return {"leader": st["leader"], "peers": [m["address"] for m in st["members"]],
                "networks": sorted(network_label(n) for n in st["networks"])}

    def refresh(self):
        """Announce what changed; called on the loop after state or status changes."""
        new = self._snapshot()
        old, self._last = self._last, new
        changed = {}
        if new["leader"] != old["leader"]:
            changed["Leader"] = new["leader"]
            self.LeaderChanged(new["leader"])
        if new["peers"] != old["peers"]:
            changed["Peers"] = new["peers"]
            for p in sorted(set(new["peers"]) - set(old["peers"])):
                self.PeerJoined(p)
            for p in sorted(set(old["peers"]) - set(new["peers"])):
                self.PeerLeft(p)
        if new["networks"] != old["networks"]:
            changed["Networks"] = new["networks"]
        if changed:
            self.emit_properties_changed(changed)


class Gate:
    """Runs AddPeer/RemovePeer only for root, whatever the bus policy says."""

    def __init__(self, bus, iface):
        self.bus = bus
        self.iface = iface

    def __call__(self, msg):
        if (msg.message_type != MessageType.METHOD_CALL or msg.interface != INTERFACE
                or msg.member not in MUTATING or msg.path != OBJECT_PATH):
            return None
        asyncio.ensure_future(self._run(msg))
        return True

    async def _run(self, msg):
        try:
            if msg.signature != "s":
                raise DBusError(ERROR + "InvalidArgument", "%s takes one string, the address" % msg.member)
            reply = await self.bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                                interface="org.freedesktop.DBus", member="GetConnectionUnixUser",
                                                signature="s", body=[msg.sender]))
            if reply.message_type != MessageType.METHOD_RETURN or reply.body[0] != 0:
                log.warning("%s refused: caller %s is not root", msg.member, msg.sender)
                raise DBusError(ERROR + "AccessDenied", "%s changes the cluster and is for root only; "
                                "run it with sudo" % msg.member)
            await self.iface.checked(msg.member, msg.body[0])
            answer = Message.new_method_return(msg)
        except DBusError as e:
            answer = Message.new_error(msg, e.type, e.text)
        except Exception as e:  # noqa: BLE001
            err = dbus_error(e)
            answer = Message.new_error(msg, err.type, err.text)
        if not msg.flags & 0x1:        # NO_REPLY_EXPECTED
            self.bus.send(answer)


class Exported:
    """The connection and the exported interface, for the daemon."""

    def __init__(self, bus, iface):
        self.bus = bus
        self.iface = iface
        self._status = None

    def refresh(self, parts, status):
        """After a change (`parts` of the state, Raft's `status`): members, networks or the leader may have moved.

        The properties are built from the whole membership, and every host
        sees every op: an op that moved none of them (an address, an
        endpoint, a group) costs nothing here."""
        key = status.key()
        if parts & {MEMBERS, NETWORKS} or key != self._status:
            self._status = key
            self.iface.refresh()

    async def disconnect(self):
        self.bus.disconnect()
        try:
            await asyncio.wait_for(self.bus.wait_for_disconnect(), 2.0)
        except Exception:  # noqa: BLE001 - a timeout, or the error that closed it: gone either way
            pass


class AnsweredErrors(logging.Filter):
    """Drops dbus-next's traceback for an error a method answered on purpose.

    dbus-next 0.2.3 sends a method's DBusError to the caller, as it should,
    and then lets it escape (its reply context's __exit__ drops the value that
    says "handled"), so it logs "got unexpected error processing a message"
    with a traceback at ERROR for every refusal, `shoutdctl network nosuch`
    included.  The caller has the message; a bug is logged by dbus_error.
    """

    def filter(self, record):
        text = record.getMessage()
        return not (text.startswith("got unexpected error processing a message") and "DBusError" in text)


ANSWERED_ERRORS = AnsweredErrors()       # one instance, so a daemon that runs again adds it once


async def serve(service, address=None):
    """Connect, export and own the name."""
    logging.getLogger().addFilter(ANSWERED_ERRORS)
    bus = await (MessageBus(bus_address=address) if address else MessageBus(bus_type=BusType.SYSTEM)).connect()
    iface = ShoutdInterface(service)
    bus.add_message_handler(Gate(bus, iface))
    bus.export(OBJECT_PATH, iface)
    await bus.request_name(BUS_NAME)
    return Exported(bus, iface)
