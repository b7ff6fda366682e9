"""Settings: /etc/shoutd/shoutd.conf, each overridable by a command-line flag.

The file is INI with one [shoutd] section, the form Debian admins expect
of a conffile.  Every value is checked here, once, with a message that names
the setting and its source, so nothing deeper ever sees a bad value.
"""

import argparse
import configparser
import copy
import ipaddress
import os
import secrets
import stat
from dataclasses import dataclass

from . import checks
from .errors import ShoutdError

DEFAULT_CONFIG = "/etc/shoutd/shoutd.conf"
MIN_SECRET = 16
# The UDP port of VXLAN traffic.  Each network keeps the port it was created with (state version 4).
# Not 4789: Docker's overlay (swarm) uses that, and a device with its VNI there makes ours fail with
# "file exists" (or the other way round): on another port, no VNI of Docker's can meet one of ours.
VXLAN_PORT = 7380
LEGACY_VXLAN_PORT = 4789        # networks made before shoutd 0.4 name no port: they use this


@dataclass
class Setting:
    key: str
    default: object
    help: str
    parse: object = str


def _port(text):
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError("%d is not a port number" % port)
    return port


def _ipv4(text):
    return str(ipaddress.IPv4Address(text.strip())) if text.strip() else ""


def _peers(text):
    return [p for p in text.replace(",", " ").split() if p]


def _pool(text):
    return str(ipaddress.IPv4Network(text.strip()))


def _boolean(text):
    value = str(text).strip().lower()
    if value in ("yes", "true", "on", "1"):
        return True
    if value in ("no", "false", "off", "0"):
        return False
    raise ValueError("use yes or no")


def _prefix(text):
    value = int(text)
    if not 8 <= value <= 30:
        raise ValueError("%d is not between 8 and 30" % value)
    return value


def _five_from(text):
    value = int(text)
    if not 5 <= value <= 100000:
        raise ValueError("%d is not between 5 and 100000" % value)
    return value


def _seconds(text):
    value = float(text)
    if not 5 <= value <= 86400:
        raise ValueError("%g is not between 5 and 86400 seconds" % value)
    return value


SETTINGS = [
    Setting("advertise_address", "", "this host's VTEP and Raft address (default: the address of "
            "the interface on the default route)", _ipv4),
    Setting("peers", [], "other members' addresses, host or host:port, comma-separated", _peers),
    Setting("raft_port", 7380, "TCP port for Raft between shoutd daemons", _port),
    Setting("vxlan_port", None, "UDP port for VXLAN: of the networks this host creates (default %d), and "
            "of those made before shoutd 0.4 (default %d)" % (VXLAN_PORT, LEGACY_VXLAN_PORT), _port),
    Setting("plugin_socket", "/run/docker/plugins/shoutd.sock", "Docker plugin socket to serve"),
    Setting("managed_socket", "/run/shoutd/managed.sock", "socket the managed plugin darkkitchen/shoutd "
            "relays swarm networks' calls to"),
    Setting("managed_plugin", True, "install (or bring up to date) the managed plugin darkkitchen/shoutd in the "
            "local Docker when shoutd starts, for swarm networks (yes or no)", _boolean),
    Setting("docker_socket", "/run/docker.sock", "the local Docker engine's API socket"),
    Setting("state_dir", "/var/lib/shoutd", "where the Raft journal and snapshots live"),
    Setting("secret_file", "/etc/shoutd/secret", "the cluster secret shared by every member"),
    Setting("default_pool", "10.213.0.0/16", "subnets for networks created without --subnet", _pool),
    Setting("default_subnet_size", 24, "prefix length of subnets taken from default_pool", _prefix),
    Setting("journal_sync", True, "fsync the Raft journal before acknowledging a change, so that "
            "acknowledged changes survive a power loss (yes or no)", _boolean),
    Setting("voters_five_from", 7, "from this many members on, 5 hosts vote (are in Raft) instead of 3; "
            "the others are replicas. Read on the leader", _five_from),
    Setting("voter_lost_after", 60.0, "seconds a voter may be silent before the leader puts a replica in its "
            "place", _seconds),
    Setting("log_level", "info", "debug, info, warning or error"),
]


class Config:
    """The settings, each one defaulting as SETTINGS says (the one place defaults are written)."""

    def __init__(self, **values):
        for s in SETTINGS:
            setattr(self, s.key, values[s.key] if s.key in values else copy.copy(s.default))

    @property
    def network_port(self):
        """The UDP port recorded for a network this host creates."""
        return self.vxlan_port or VXLAN_PORT

    @property
    def legacy_port(self):
        """The UDP port of networks that record none (made before state version 4)."""
        return self.vxlan_port or LEGACY_VXLAN_PORT

    @property
    def default_pool_prefix(self):
        return self.default_subnet_size

    @property
    def driver_name(self):
        """Docker names a legacy plugin after its socket file."""
        return os.path.splitext(os.path.basename(self.plugin_socket))[0]

    @property
    def raft_address(self):
        return "%s:%d" % (self.advertise_address, self.raft_port)

    def peer_addresses(self):
        out = []
        for peer in self.peers:
            try:
                out.append(checks.member_address(peer, self.raft_port, "peer"))
            except ShoutdError as e:
                raise ShoutdError("%s; fix peers in shoutd.conf or --peers" % e) from None
        return sorted(set(out))


def arg_parser():
    p = argparse.ArgumentParser(prog="shoutd", description="Layer-2 networks with working multicast "
                                "for Docker containers on many hosts.")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s)")
    for s in SETTINGS:
        p.add_argument("--" + s.key.replace("_", "-"), dest=s.key, default=None,
                       help="%s (default: %s)" % (s.help, s.default if s.default != [] else "none"))
    return p


def load(argv=None):
    args = arg_parser().parse_args(argv)
    values = {}
    if os.path.exists(args.config):
        cp = configparser.ConfigParser(interpolation=None)
        try:
            cp.read(args.config)
        except configparser.Error as e:
            raise ShoutdError("cannot read %s: %s" % (args.config, str(e).splitlines()[0])) from None
        if cp.sections() and not cp.has_section("shoutd"):
            raise ShoutdError("%s has no [shoutd] section" % args.config)
        if cp.has_section("shoutd"):
            known = {s.key for s in SETTINGS}
            for key, value in cp.items("shoutd"):
                if key not in known:
                    raise ShoutdError("%s: unknown setting %r; known settings are: %s"
                                      % (args.config, key, ", ".join(sorted(known))))
                values[key] = (value, args.config)
    elif args.config != DEFAULT_CONFIG:
        raise ShoutdError("config file %s does not exist" % args.config)
    for s in SETTINGS:
        flag = getattr(args, s.key)
        if flag is not None:
            values[s.key] = (flag, "--" + s.key.replace("_", "-"))
    cfg = Config()
    for s in SETTINGS:
        if s.key not in values:
            setattr(cfg, s.key, s.default)
            continue
        raw, source = values[s.key]
        try:
            setattr(cfg, s.key, s.parse(raw))
        except ValueError as e:
            raise ShoutdError("%s: bad value %r for %s: %s" % (source, raw, s.key, e)) from None
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ShoutdError("bad log_level %r: use debug, info, warning or error" % cfg.log_level)
    return cfg


def read_secret(cfg, multi_host):
    """The cluster secret, checked; a single host without one gets a random one."""
    path = cfg.secret_file
    if not os.path.exists(path):
        if multi_host:
            raise ShoutdError("a cluster with peers needs a shared secret, and %s does not exist. "
                              "Create it on one host with `umask 077; head -c 32 /dev/urandom | "
                              "base64 > %s` and copy the same file to every host" % (path, path))
        return secrets.token_urlsafe(32), False
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as e:
        raise ShoutdError("cannot read the cluster secret %s: %s" % (path, e.strerror)) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ShoutdError("the cluster secret %s is readable by others; run `chmod 600 %s`" % (path, path))
    if len(secret) < MIN_SECRET:
        raise ShoutdError("the cluster secret in %s is too short (%d bytes); use at least %d random "
                          "bytes" % (path, len(secret), MIN_SECRET))
    return secret, True
