"""Value checks shared by every edge and by the state machine.

A bad value must be refused before it reaches Raft: once committed, it is on
every host for good, and the reconciler would trip over it on every pass
(a broadcast MAC as a unicast FDB entry sends every host's broadcast to one
host).  So the adapters check what callers send, and the state machine
checks again with the same functions, as a second line.  Each check returns
the value in its canonical form or raises ShoutdError(INVALID) naming the
value and what a good one looks like.
"""

import ipaddress
import re

from .errors import INVALID, ShoutdError

# Docker's network and endpoint ids are 64 lowercase hex digits.  The kernel
# names a container's veth after the first 12 (see dataplane/desired.py).
_DOCKER_ID = re.compile(r"^[0-9a-f]{12,64}$")
_SWARM_ID = re.compile(r"^[0-9a-z]{25}$")
# shoutd's own network (pool) ids, and request ids: uuid4().hex, or shorter
# names in tests and older states.
_OWN_ID = re.compile(r"^[0-9A-Za-z_.-]{1,64}$")
# Docker's rule for network names.
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
MAX_OPTIONS = 64
MAX_OPTION_LENGTH = 4096
# Multicast modes of a network (`docker network create --opt multicast=...`).
PRUNED, FLOOD = "pruned", "flood"
MULTICAST_MODES = (PRUNED, FLOOD)
# Groups one host may report for one network: bounds the replicated state.
MAX_GROUPS = 1024
LINK_LOCAL_V4 = ipaddress.IPv4Network("224.0.0.0/24")


def _fail(message):
    raise ShoutdError(message, INVALID)


def docker_id(value, what):
    if not isinstance(value, str) or not _DOCKER_ID.match(value):
        _fail("%s %s is not a Docker id (12 to 64 lowercase hex digits)" % (what, quoted(value)))
    return value


def swarm_id(value, what):
    """A swarm object's id (swarmkit's identity.NewID: 25 lowercase base-36 digits)."""
    if not isinstance(value, str) or not _SWARM_ID.match(value):
        _fail("%s %s is not a swarm id (25 lowercase letters and digits)" % (what, quoted(value)))
    return value


def network_id(value, what):
    """A Docker network's id: a local network's (hex) or a swarm network's."""
    if isinstance(value, str) and _SWARM_ID.match(value):
        return value
    return docker_id(value, what)


def own_id(value, what):
    if not isinstance(value, str) or not _OWN_ID.match(value):
        _fail("%s %s is not a shoutd id (1 to 64 letters, digits, '_', '.' or '-')" % (what, quoted(value)))
    return value


def network_name(value):
    if not isinstance(value, str) or not _NAME.match(value):
        _fail("network name %s is not valid: use letters, digits, '_', '.' and '-', starting with a letter "
              "or digit" % quoted(value))
    return value


def unicast_mac(value):
    """Six hex octets; unicast (I/G bit clear) and not all zero."""
    text = value.lower() if isinstance(value, str) else value
    if not isinstance(text, str) or not _MAC.match(text):
        _fail("MAC address %s is not six hex octets such as 0a:5d:0a:d5:00:02" % quoted(value))
    if int(text[:2], 16) & 1:
        _fail("MAC address %s is a multicast or broadcast address; a container needs a unicast one" % text)
    if text == "00:00:00:00:00:00":
        _fail("MAC address 00:00:00:00:00:00 is not a usable address")
    return text


def ipv4(value, what):
    if not isinstance(value, str):
        _fail("%s %s is not an IPv4 address" % (what, quoted(value)))
    try:
        return ipaddress.IPv4Interface(value).ip if "/" in value else ipaddress.IPv4Address(value)
    except ValueError:
        _fail("%s %s is not an IPv4 address" % (what, quoted(value)))


def subnet(value, what):
    """An IPv4 subnet as Docker sends it (host bits allowed) -> the network, as text."""
    try:
        return str(ipaddress.IPv4Network(value, strict=False))
    except (ValueError, TypeError):
        _fail("%s %r is not an IPv4 subnet" % (what, value))


def host_in(ip, subnet, what, label):
    """`ip` must be a host address of `subnet` (not its network or broadcast address)."""
    subnet = ipaddress.IPv4Network(subnet)
    if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
        _fail("%s %s is not a host address of %s (subnet %s)" % (what, ip, label, subnet))
    return ip


def mtu(value):
    if value in (None, "", 0):
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 68 <= value <= 65535:
        _fail("MTU %s is not between 68 and 65535" % quoted(value))
    return value


def options(value, what="options"):
    """A small dict of strings, as Docker's driver and IPAM options are."""
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        _fail("%s must be an object of strings" % what)
    if len(value) > MAX_OPTIONS:
        _fail("%s has %d entries; at most %d are accepted" % (what, len(value), MAX_OPTIONS))
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, (str, int, float, bool)) or \
                len(k) > MAX_OPTION_LENGTH or len(str(v)) > MAX_OPTION_LENGTH:
            _fail("%s: %s is not a short string option" % (what, quoted(k)))
        out[k] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


def text(value, what, limit=253):
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        _fail("%s %s is not printable text of at most %d characters" % (what, quoted(value), limit))
    return value


def udp_port(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        _fail("%s is not a UDP port number" % quoted(value))
    return value


def quoted(value):
    """The offending value for a message: quoted, and cut short if long."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def identity(value):
    """What Docker knows of a network besides its name and subnet: copied to every host's engine."""
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        _fail("a network's identity must be an object")
    out = {}
    for flag in ("internal", "attachable"):
        if not isinstance(value.get(flag, False), bool):
            _fail("%s must be true or false" % flag)
        out[flag] = value.get(flag, False)
    out["labels"] = options(value.get("labels"), "labels")
    out["options"] = options(value.get("options"), "driver options")
    out["ipam_options"] = options(value.get("ipam_options"), "IPAM options")
    return out


def multicast_mode(value):
    if value not in MULTICAST_MODES:
        _fail("multicast=%s is not a multicast mode; use --opt multicast=pruned (send each group only to "
              "the hosts that listen) or --opt multicast=flood (send all multicast to every host)" % quoted(value))
    return value


def multicast_group(value):
    """A group address as the bridge reports it; IPv4 link-local groups always flood, so never come here."""
    try:
        group = ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        group = None
    if group is None or not group.is_multicast:
        _fail("%s is not a multicast group address" % quoted(value))
    if group.version == 4 and group in LINK_LOCAL_V4:
        _fail("%s is a link-local group (224.0.0.0/24), which always goes to every host" % group)
    return str(group)


def multicast_groups(value):
    """A host's groups on one network: a sorted list without repeats."""
    if not isinstance(value, (list, tuple)):
        _fail("groups must be a list of multicast addresses")
    if len(value) > MAX_GROUPS:
        _fail("%d groups reported; at most %d per host and network are tracked" % (len(value), MAX_GROUPS))
    return sorted({multicast_group(g) for g in value}, key=group_order)


def group_order(group):
    address = ipaddress.ip_address(group)
    return address.version, address.packed


def member_address(value, default_port, what="member address"):
    """'ip' or 'ip:port' -> 'ip:port': a host's Raft address (config, D-Bus, shoutdctl)."""
    text = str(value).strip()
    host, _, port = text.rpartition(":") if ":" in text else (text, "", str(default_port))
    try:
        ip = ipaddress.IPv4Address(host)
        port = int(port)
        if not 0 < port < 65536 or ip.is_unspecified or ip.is_multicast:
            raise ValueError
    except ValueError:
        raise ShoutdError("%s %s is not a host address; give an IPv4 address, optionally with :port (default "
                          "port %d)" % (what, quoted(text), default_port), INVALID, "InvalidAddress") from None
    return "%s:%d" % (ip, port)
