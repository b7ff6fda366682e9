"""shoutdctl: the command line, talking D-Bus to the local shoutd.

    shoutdctl status | networks | peers [--json]
    shoutdctl network NAME [--json]
    shoutdctl peers add|remove ADDRESS
    shoutdctl start ADVERTISE_ADDRESS [--peer-addresses=A,B]
    shoutdctl plugin install|remove [--docker-socket PATH] [--managed-socket PATH]

Exit codes scripts can rely on:
    0 success, 1 shoutd refused (the message says why), 2 usage,
    3 shoutd is not running (or no system bus), 4 permission denied,
    5 the cluster has no quorum.
"""

import argparse
import asyncio
import configparser
import ipaddress
import json
import os
import subprocess
import sys
import time

from dbus_next import BusType, Message, MessageType
from dbus_next.aio import MessageBus

from . import checks, errors
from . import config as configmod
from .docker import managed
from .docker.engine import Engine
from .state.records import network_label
from .dbus_api import BUS_NAME, ERROR, INTERFACE, OBJECT_PATH
from .errors import ShoutdError

DEFAULT_RAFT_PORT = 7380

OK, REFUSED, USAGE, NOT_RUNNING, DENIED, NO_QUORUM = 0, 1, 2, 3, 4, 5


class Failure(Exception):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def _code_for(error_name):
    if error_name in ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"):
        return NOT_RUNNING
    if error_name in (ERROR + "AccessDenied", "org.freedesktop.DBus.Error.AccessDenied"):
        return DENIED
    if error_name == ERROR + errors.NO_QUORUM:
        return NO_QUORUM
    return REFUSED


async def call(member, signature="", body=()):
    try:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except Exception as e:  # noqa: BLE001 - any failure to reach the bus means the same to a user
        raise Failure("cannot reach the system D-Bus (%s); is dbus running?" % e, NOT_RUNNING) from None
    try:
        reply = await bus.call(Message(destination=BUS_NAME, path=OBJECT_PATH, interface=INTERFACE,
                                       member=member, signature=signature, body=list(body)))
    finally:
        bus.disconnect()
    if reply.message_type == MessageType.ERROR:
        text = reply.body[0] if reply.body else reply.error_name
        code = _code_for(reply.error_name)
        if code == NOT_RUNNING:
            text = "shoutd is not running (start it with: systemctl start shoutd)"
        elif code == DENIED and not text.startswith(member):
            text = "%s: permission denied; it changes the cluster and is for root only (use sudo)" % member
        raise Failure(text, code)
    return reply.body


def unwrap(status):
    return {k: v.value for k, v in status.items()}


def table(rows, headers):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [headers] + rows]
    return "\n".join(lines)


def show_status(st):
    if st.get("Halted"):
        print("HALTED   %s" % st["Halted"])
    print("node     %s" % st["Self"])
    print("leader   %s" % (st["Leader"] or "none (no quorum?)"))
    print("term     %d   quorum %s   ready %s" % (st["Term"], "yes" if st["Quorum"] else "NO",
                                                  "yes" if st["Ready"] else "no"))
    if "Applied" in st:
        # Equal on every host that has applied the same log.
        print("state    %d operations applied, digest %s" % (st["Applied"], st["StateDigest"]))
    if "StateVersion" in st:
        print("version  the cluster runs state version %d; this shoutd runs up to %d" % (st["StateVersion"],
                                                                                     st["RunsStateVersion"]))
    for problem in st.get("Firewall", []):
        print("FIREWALL %s" % problem)
    if "LeaderChanged" in st:
        print("raft     %s; slowest journal flush (10 min) %.3f s" % (leader_change(st["LeaderChanged"]),
                                                                       st["SlowestFlush"]))
        if st["Unreachable"]:
            print("cannot reach %s" % ", ".join(st["Unreachable"]))
    print()
    show_members(st)
    print()
    show_networks(st)


def leader_change(when, now=None):
    if not when:
        return "no leader change seen since shoutd started"
    ago = max(0, int((now or time.time()) - when))
    return "leader changed %s (%s ago)" % (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)),
                                            "%dh%02dm" % (ago // 3600, ago % 3600 // 60) if ago >= 3600
                                            else "%dm%02ds" % (ago // 60, ago % 60))


def show_members(st):
    releases, roles = st.get("Releases", {}), st.get("Roles", {})
    print(table([list(m) + [roles.get(m[0]) or "voter", releases.get(m[0]) or "-"] for m in st["Members"]],
                ["MEMBER", "VTEP", "HOST", "STATE", "ROLE", "RELEASE"]))


def show_networks(st):
    modes = {m[0]: m[1] for m in st.get("Multicast", [])}
    print(table([list(n) + [modes.get(n[0] or n[1], "") or "-"] for n in st["Networks"]],
                ["NETWORK", "SUBNET", "VNI", "ENDPOINTS", "MULTICAST"]))
    groups = [[name, g, ", ".join(hosts)] for name, _, listened in st.get("Multicast", []) for g, hosts in listened]
    if groups:
        print()
        print(table(groups, ["NETWORK", "GROUP", "LISTENING HOSTS"]))
    if "KernelPrunes" in st and not st["KernelPrunes"] and any(m[1] == "pruned" for m in st.get("Multicast", [])):
        print()
        print("note: this host's kernel has no VXLAN multicast database (Linux 6.4 or later has): it sends\n"
              "every group to every host; the other hosts still deliver only to containers that listen")


def show_network(net):
    print("network  %s  (id %s)" % (net["Name"] or "-", net["Id"]))
    port = "   UDP port %d" % net["Port"] if "Port" in net else ""
    print("subnet   %s   gateway %s   VNI %d%s" % (net["Subnet"], net["Gateway"], net["VNI"], port))
    print("hosts    %s" % (", ".join(net["Hosts"]) or "none"))
    if "Multicast" in net:
        print("multicast %s" % (net["Multicast"] or "-"))
        for g, hosts in net.get("Groups", []):
            print("  group %s: %s" % (g, ", ".join(hosts)))
    print()
    print(table([[a[0], a[2] or a[1], a[1], a[3][:12] or "-"] for a in net["Addresses"]],
                ["ADDRESS", "HOST", "MEMBER", "ENDPOINT"]))


def network_json(net):
    print(json.dumps({"name": net["Name"], "id": net["Id"], "subnet": net["Subnet"], "gateway": net["Gateway"],
                      "vni": net["VNI"], "port": net.get("Port"), "hosts": net["Hosts"],
                      "multicast": net.get("Multicast"),
                      "groups": {g: hosts for g, hosts in net.get("Groups", [])},
                      "addresses": [dict(zip(("address", "member", "hostname", "endpoint"), a))
                                    for a in net["Addresses"]]}, indent=2))


def as_json(st, part=None):
    out = {"self": st["Self"], "leader": st["Leader"], "term": st["Term"], "quorum": st["Quorum"],
           "ready": st["Ready"], "applied": st.get("Applied"), "digest": st.get("StateDigest"),
           "members": [dict(zip(("address", "vtep", "hostname", "state"), m)) for m in st["Members"]],
           "networks": [dict(zip(("name", "subnet", "vni", "endpoints"), n)) for n in st["Networks"]],
           "kernel_prunes": st.get("KernelPrunes"), "unreachable": st.get("Unreachable"),
           "firewall": st.get("Firewall"),
           "leader_changed": st.get("LeaderChanged"), "slowest_flush": st.get("SlowestFlush"),
           "state_version": st.get("StateVersion"), "runs_state_version": st.get("RunsStateVersion"),
           "halted": st.get("Halted")}
    for m in out["members"]:
        m["release"] = st.get("Releases", {}).get(m["address"], "")
        m["role"] = st.get("Roles", {}).get(m["address"], "voter")
    modes = {m[0]: (m[1], {g: hosts for g, hosts in m[2]}) for m in st.get("Multicast", [])}
    for n in out["networks"]:
        n["multicast"], n["groups"] = modes.get(network_label(n), ("", {}))
    print(json.dumps(out[part] if part else out, indent=2))


def start(args):
    """The seed's convenience: write the config, then enable and start the service."""
    try:
        advertise = str(ipaddress.IPv4Address(args.advertise_address))
    except ValueError as e:
        raise Failure("bad address to advertise: %s" % e, USAGE) from None
    peers = [p.strip() for p in (args.peer_addresses or "").split(",") if p.strip()]
    for p in peers:
        try:
            checks.member_address(p, DEFAULT_RAFT_PORT, "peer")
        except ShoutdError as e:
            raise Failure(str(e), USAGE) from None
    cp = configparser.ConfigParser(interpolation=None)
    if os.path.exists(args.config):
        cp.read(args.config)
    if not cp.has_section("shoutd"):
        cp.add_section("shoutd")
    cp.set("shoutd", "advertise_address", advertise)
    cp.set("shoutd", "peers", ", ".join(peers))
    os.makedirs(os.path.dirname(args.config) or ".", exist_ok=True)
    try:
        with open(args.config + ".new", "w") as f:
            cp.write(f)
        os.replace(args.config + ".new", args.config)
    except PermissionError:
        raise Failure("cannot write %s: permission denied (use sudo)" % args.config, DENIED) from None
    print("wrote %s (advertise_address = %s, peers = %s)" % (args.config, advertise, ", ".join(peers) or "none"))
    if args.no_start:
        return
    res = subprocess.run(["systemctl", "enable", "--now", "shoutd"])
    if res.returncode:
        raise Failure("systemctl enable --now shoutd failed", REFUSED)


async def plugin(args):
    """Install (create or update) or remove the managed plugin darkkitchen/shoutd in the local Docker."""
    argv = ["--config", args.config]
    for flag in ("docker_socket", "managed_socket"):
        if getattr(args, flag):
            argv += ["--" + flag.replace("_", "-"), getattr(args, flag)]
    try:
        cfg = configmod.load(argv)
    except ShoutdError as e:
        raise Failure(str(e), USAGE) from None
    engine = Engine(cfg.docker_socket, timeout=120.0)
    try:
        done = await (managed.install(engine, cfg.managed_socket) if args.action == "install"
                      else managed.remove(engine))
    except ShoutdError as e:
        code = NOT_RUNNING if e.kind == errors.UNAVAILABLE else REFUSED
        raise Failure(str(e), code) from None
    finally:
        await engine.close()
    print(done)


def parser():
    p = argparse.ArgumentParser(prog="shoutdctl", description="Control the local shoutd over D-Bus.",
                                epilog="exit codes: 0 ok, 1 refused, 2 usage, 3 not running, "
                                       "4 permission denied, 5 no quorum")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    # --json is accepted after the subcommand too, where people put it.
    json_too = argparse.ArgumentParser(add_help=False)
    json_too.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", parents=[json_too], help="this node, leader, members and networks")
    sub.add_parser("networks", parents=[json_too], help="the cluster's networks")
    one = sub.add_parser("network", parents=[json_too], help="one network: its hosts and who holds each address")
    one.add_argument("name", help="the network's name (or shoutd id)")
    peers = sub.add_parser("peers", parents=[json_too], help="list, add or remove cluster members")
    peers.add_argument("action", nargs="?", choices=["add", "remove"])
    peers.add_argument("address", nargs="?", help="IPv4 address, optionally :port")
    st = sub.add_parser("start", help="write the config and enable and start the service")
    st.add_argument("advertise_address")
    st.add_argument("--peer-addresses", default="", help="comma-separated peer addresses")
    st.add_argument("--config", default="/etc/shoutd/shoutd.conf")
    st.add_argument("--no-start", action="store_true", help=argparse.SUPPRESS)
    pl = sub.add_parser("plugin", help="install or remove the managed plugin darkkitchen/shoutd (swarm networks)")
    pl.add_argument("action", choices=["install", "remove"])
    pl.add_argument("--config", default=configmod.DEFAULT_CONFIG, help="shoutd's config (default: %(default)s)")
    pl.add_argument("--docker-socket", help="the Docker engine's API socket (default: as shoutd's config says)")
    pl.add_argument("--managed-socket", help="shoutd's managed socket (default: as shoutd's config says)")
    return p


async def run(args):
    if args.command == "start":
        return start(args)
    if args.command == "plugin":
        return await plugin(args)
    if args.command == "peers" and args.action:
        if not args.address:
            raise Failure("usage: shoutdctl peers %s ADDRESS" % args.action, USAGE)
        member = "AddPeer" if args.action == "add" else "RemovePeer"
        await call(member, "s", [args.address])
        print("%s: %s" % ("added" if args.action == "add" else "removed", args.address))
        return
    if args.command == "network":
        net = unwrap((await call("Network", "s", [args.name]))[0])
        network_json(net) if args.json else show_network(net)
        return
    st = unwrap((await call("Status"))[0])
    part = {"networks": "networks", "peers": "members"}.get(args.command)
    if args.json:
        as_json(st, part)
    elif args.command == "status":
        show_status(st)
    elif args.command == "networks":
        show_networks(st)
    else:
        show_members(st)


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        asyncio.run(run(args))
    except Failure as e:
        print("shoutdctl: %s" % e, file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    return OK


if __name__ == "__main__":
    sys.exit(main())
