"""Small, repeatable kernel operations over netlink (pyroute2).

Each `ensure_*` makes one kernel object match a spec and is safe to call any
number of times: it creates what is missing, fixes what differs, and leaves
what already matches alone, so a container's veth is never torn down just
because shoutd restarted.  `delete` treats "already gone" as success.

Netlink errors are turned into ShoutdError here, naming the object, so nothing
above this module sees an errno.  Everything here runs on the data plane's one
worker thread (see worker.py): pyroute2 must not run on the asyncio loop.
"""

import errno
import logging
import os

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import INTERNAL, ShoutdError
from .mdb import MdbError, MdbSocket

log = logging.getLogger(__name__)

ZERO_MAC = "00:00:00:00:00:00"


class NetlinkFailure(ShoutdError):
    def __init__(self, action, obj, err):
        code = err.code if isinstance(err, NetlinkError) else getattr(err, "errno", None)
        text = errno.errorcode.get(code, str(code)) if code else str(err)
        super().__init__("cannot %s %s: %s (%s)" % (action, obj, getattr(err, "args", [err])[-1], text), INTERNAL)
        self.code = code


# A pruned network's bridge is the IGMP querier for its host's containers.  It
# has no IPv6 address, so it is no MLD querier, and without one the bridge
# floods IPv6 multicast as a flooding network does: only IPv4 groups are
# pruned (shoutd networks are IPv4).  Times are in centiseconds (the kernel's
# clock_t).  A query every 30 s (not 125) bounds how long a listener that
# vanished without a leave is still served: membership interval = robustness
# 2 x 30 s + 10 s response = 70 s.  A leave is acted on after 2 group queries
# 1 s apart (the kernel's defaults).
SNOOPING = {"IFLA_BR_MCAST_SNOOPING": 1, "IFLA_BR_MCAST_QUERIER": 1, "IFLA_BR_MCAST_IGMP_VERSION": 3,
            "IFLA_BR_MCAST_MLD_VERSION": 2, "IFLA_BR_MCAST_QUERY_INTVL": 3000,
            "IFLA_BR_MCAST_STARTUP_QUERY_INTVL": 750, "IFLA_BR_MCAST_MEMBERSHIP_INTVL": 7000,
            "IFLA_BR_MCAST_QUERIER_INTVL": 6500}
NO_SNOOPING = {"IFLA_BR_MCAST_SNOOPING": 0}
# Not a multicast router port: a group leaves the host only where the bridge MDB says so.
NOT_A_ROUTER_PORT = 0
# A container's MAC is pinned to its veth on the bridge: static (the kernel's
# NUD_NOARP), a bridge entry (NTF_MASTER), and sticky (NTF_STICKY, learning
# never moves it).
NUD_NOARP, NTF_MASTER, NTF_STICKY = 0x40, 0x04, 0x40


def vxlan_mdb_supported(release=None):
    """The VXLAN device has its own MDB from Linux 6.4; older kernels flood every group."""
    release = release or os.uname().release
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (6, 4)


def _nla_kwarg(name):
    """IFLA_BR_MCAST_QUERIER -> br_mcast_querier, as pyroute2 names its keywords."""
    return name[len("IFLA_"):].lower()


_VXLAN_ATTR_NAMES = {"IFLA_VXLAN_ID": "the VNI", "IFLA_VXLAN_LOCAL": "the local address",
                     "IFLA_VXLAN_PORT": "the UDP port", "IFLA_VXLAN_LINK": "the underlay interface",
                     "IFLA_VXLAN_LEARNING": "learning"}


def _info(link):
    linkinfo = link.get_attr("IFLA_LINKINFO")
    if linkinfo is None:
        return None, None
    return linkinfo.get_attr("IFLA_INFO_KIND"), linkinfo.get_attr("IFLA_INFO_DATA")


class Netlink:
    """One rtnetlink socket, used from a single thread."""

    def __init__(self):
        self.ipr = IPRoute()
        self._mdb = None

    def close(self):
        self.ipr.close()
        if self._mdb is not None:
            self._mdb.close()

    def _do(self, action, obj, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NetlinkError as e:
            raise NetlinkFailure(action, obj, e) from None

    # -- reading ---------------------------------------------------------

    def link(self, name):
        try:
            return self.ipr.link("get", ifname=name)[0]
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise NetlinkFailure("look up", "link " + name, e) from None

    def index(self, name):
        link = self.link(name)
        return link["index"] if link is not None else None

    def link_names(self, pattern):
        names = (l.get_attr("IFLA_IFNAME") for l in self._do("list", "links", self.ipr.get_links))
        return sorted(n for n in names if pattern.match(n))

    def underlay(self, address):
        """(ifindex, ifname, mtu) of the interface that holds `address`."""
        for a in self._do("list", "addresses", self.ipr.get_addr, family=2):
            if a.get_attr("IFA_ADDRESS") == address:
                link = self._do("look up", "underlay link", self.ipr.link, "get", index=a["index"])[0]
                return a["index"], link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU")
        return None

    def default_route_address(self):
        """The primary IPv4 address of the interface on the default route."""
        for route in self._do("list", "routes", self.ipr.get_default_routes, family=2):
            oif = route.get_attr("RTA_OIF")
            for a in self._do("list", "addresses", self.ipr.get_addr, family=2, index=oif):
                return a.get_attr("IFA_ADDRESS")
        return None

    def fdb_remotes(self, name):
        """{(mac, dst)} of the VXLAN device's remote entries."""
        index = self.index(name)
        if index is None:
            return set()
        out = set()
        for e in self._do("dump", "FDB of " + name, self.ipr.fdb, "dump", ifindex=index):
            dst = e.get_attr("NDA_DST")
            if dst is not None and e["ifindex"] == index:
                out.add((e.get_attr("NDA_LLADDR"), dst))
        return out

    # -- ensuring --------------------------------------------------------

    def ensure_bridge(self, name, mtu, alias, snooping=False):
        """A flooding network's bridge snoops nothing (a hub); a pruned one's snoops and queries."""
        want = SNOOPING if snooping else NO_SNOOPING
        link = self.link(name)
        if link is not None and _info(link)[0] != "bridge":
            self.delete(name)
            link = None
        if link is None:
            log.info("creating bridge %s (%s)", name, alias)
            self._do("create", "bridge " + name, self.ipr.link, "add", ifname=name, kind="bridge",
                     br_stp_state=0, mtu=mtu, **{_nla_kwarg(k): v for k, v in want.items()})
            link = self.link(name)
        data = _info(link)[1]
        differs = {k: v for k, v in want.items() if data.get_attr(k) != v}
        if differs:
            log.info("%s: setting %s (%s)", name, ", ".join("%s %s" % (_nla_kwarg(k), v) for k, v in differs.items()),
                     alias)
            self._do("configure", "bridge " + name, self.ipr.link, "set", index=link["index"],
                     kind="bridge", **{_nla_kwarg(k): v for k, v in differs.items()})
        if snooping:
            self._without_ipv6(name)
        self._set(link, name, mtu=mtu, ifalias=alias, state="up")
        return link["index"]

    def _without_ipv6(self, name):
        """No IPv6 address on a pruned network's bridge (see SNOOPING).

        /proc/sys/net shows the network namespace of the thread that opens it: this worker's.
        """
        path = "/proc/sys/net/ipv6/conf/%s/disable_ipv6" % name
        try:
            with open(path) as f:
                if f.read().strip() == "1":
                    return
            with open(path, "w") as f:
                f.write("1")
        except FileNotFoundError:
            return                       # IPv6 is off in this kernel or namespace altogether
        except OSError as e:
            raise NetlinkFailure("turn off IPv6 on", "bridge " + name, e) from None
        log.info("%s: IPv6 off (not an MLD querier: IPv6 multicast floods)", name)

    def ensure_not_router_port(self, name):
        """The VXLAN port of a pruned network's bridge: never a multicast router port."""
        link = self.link(name)
        slave = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_SLAVE_DATA")
        if slave is None or slave.get_attr("IFLA_BRPORT_MULTICAST_ROUTER") != NOT_A_ROUTER_PORT:
            log.info("%s: no multicast router port (groups leave only where the MDB says)", name)
            self._do("configure", "bridge port " + name, self.ipr.brport, "set", index=link["index"],
                     multicast_router=NOT_A_ROUTER_PORT)

    def ensure_vxlan(self, name, vni, local, port, underlay_index, mtu, bridge_index, alias):
        link = self.link(name)
        want = {"IFLA_VXLAN_ID": vni, "IFLA_VXLAN_LOCAL": local, "IFLA_VXLAN_PORT": port,
                "IFLA_VXLAN_LINK": underlay_index, "IFLA_VXLAN_LEARNING": 0}
        if link is not None:
            kind, data = _info(link)
            if kind != "vxlan":
                differs = ["it is a %s device" % kind]
            else:
                differs = ["%s is %s, not %s" % (_VXLAN_ATTR_NAMES[k], data.get_attr(k), v)
                           for k, v in want.items() if data.get_attr(k) != v]
            if differs:
                # A VXLAN device's identity cannot be changed in place: replace it.
                log.info("replacing %s (%s): %s", name, alias, "; ".join(differs))
                self.delete(name)
                link = None
        if link is None:
            log.info("creating VXLAN %s VNI %d local %s port %d (%s)", name, vni, local, port, alias)
            # Learning off: remote MACs are programmed from the cluster state,
            # and BUM traffic goes to the all-zero entries, one per peer.
            self._do("create", "VXLAN " + name, self.ipr.link, "add", ifname=name, kind="vxlan",
                     vxlan_id=vni, vxlan_local=local, vxlan_port=port, vxlan_link=underlay_index,
                     vxlan_learning=0, mtu=mtu)
            link = self.link(name)
        self._set(link, name, mtu=mtu, master=bridge_index, ifalias=alias)
        return link["index"]

    def ensure_fdb(self, name, wanted):
        """Make the VXLAN device's remote entries exactly `wanted` {(mac, dst)}."""
        index = self.index(name)
        have = self.fdb_remotes(name)
        for mac, dst in sorted(wanted - have):
            log.info("%s: adding FDB %s -> VTEP %s", name, mac, dst)
            self._do("add", "FDB entry %s dst %s on %s" % (mac, dst, name),
                     self.ipr.fdb, "append", ifindex=index, lladdr=mac, dst=dst)
        for mac, dst in sorted(have - wanted):
            log.info("%s: removing FDB %s -> VTEP %s", name, mac, dst)
            try:
                self.ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst)
            except NetlinkError as e:
                if e.code != errno.ENOENT:
                    raise NetlinkFailure("remove", "FDB entry %s dst %s on %s" % (mac, dst, name), e) from None

    def ensure_up(self, name):
        link = self.link(name)
        if link is not None:
            self._set(link, name, state="up")

    def ensure_veth(self, host, peer, mac, mtu, bridge_index, alias, pinned=None):
        """The host end joins the bridge; the peer waits for Docker to move it.

        `pinned`: a dump (see pinned()) taken in this pass, or None."""
        link = self.link(host)
        if link is not None and _info(link)[0] != "veth":
            self.delete(host)
            link = None
        if link is None:
            if self.link(peer) is not None:      # an orphan from an interrupted create
                self.delete(peer)
            log.info("creating veth %s (container side %s, MAC %s, %s)", host, peer, mac, alias)
            self._do("create", "veth " + host, self.ipr.link, "add", ifname=host, kind="veth", mtu=mtu,
                     peer={"ifname": peer, "address": mac, "mtu": mtu})
            link = self.link(host)
        self._set(link, host, mtu=mtu, master=bridge_index, ifalias=alias, state="up")
        self._pin(host, link["index"], mac, self.pinned() if pinned is None else pinned)
        return link["index"]

    def pinned(self):
        """{(port index, MAC)} of every pinned bridge entry: one dump serves all veths of a pass."""
        return {(e["ifindex"], e.get_attr("NDA_LLADDR"))
                for e in self._do("dump", "the bridges' FDBs", self.ipr.fdb, "dump")
                if e["state"] & NUD_NOARP and e["flags"] & NTF_STICKY}

    def _pin(self, host, index, mac, pinned):
        """The bridge sends frames for the container's MAC into its veth, whatever it learned before.

        Swarm hands a freed address to a task on another node at once, and the
        MAC (derived from the address) moves with it.  A bridge that learned
        the MAC on its VXLAN port, from the old holder, would drop the frames
        a sender with a cached ARP entry sends to the new container, until that
        container happens to speak."""
        if (index, mac) in pinned:
            return
        log.info("%s: pinning MAC %s to it on its bridge", host, mac)
        self._do("pin", "MAC %s to %s" % (mac, host), self.ipr.fdb, "replace", ifindex=index, lladdr=mac,
                 state=NUD_NOARP, flags=NTF_MASTER | NTF_STICKY)

    # -- multicast databases (pruned networks, see desired.py) -------------

    def mdb_entries(self):
        """Every MDB entry in this namespace: one dump serves all networks of a reconciler pass."""
        if self._mdb is None:
            self._mdb = MdbSocket()
        try:
            return self._mdb.entries()
        except MdbError as e:
            raise NetlinkFailure("dump", "the multicast databases", e) from None

    def _mdb_change(self, action, obj, fn, *args):
        try:
            fn(*args)
        except MdbError as e:
            raise NetlinkFailure(action, obj, e) from None

    def local_groups(self, bridges):
        """{bridge: {group}}: the groups this host's containers listen to, as each bridge's snooping learned.

        `bridges` maps a bridge to its VXLAN device; entries on the bridge
        itself (the host's own) and on the VXLAN port (ours) are not a container's.
        """
        index = {name: (self.index(name), self.index(vxlan)) for name, vxlan in bridges.items()}
        by_index = {br: name for name, (br, _) in index.items() if br is not None}
        out = {name: set() for name in bridges}
        for e in self.mdb_entries():
            name = by_index.get(e.device)
            if name is not None and e.port not in index[name]:
                out[name].add(e.group)
        return out

    def ensure_bridge_mdb(self, bridge, vxlan, groups, entries=None):
        """Exactly `groups` go out of the VXLAN port, whatever this host's own listeners.

        `entries`: a dump (mdb_entries) taken since this network's devices were made, or None."""
        br, vx = self.index(bridge), self.index(vxlan)
        entries = self.mdb_entries() if entries is None else entries
        have = {e.group for e in entries if e.device == br and e.port == vx and e.permanent}
        for group in sorted(groups - have):
            log.info("%s: group %s out through %s (another host listens)", bridge, group, vxlan)
            self._mdb_change("add", "MDB entry %s port %s on %s" % (group, vxlan, bridge), self._mdb.add,
                             br, vx, group)
        for group in sorted(have - groups):
            log.info("%s: group %s no longer out through %s (no other host listens)", bridge, group, vxlan)
            self._mdb_change("remove", "MDB entry %s port %s on %s" % (group, vxlan, bridge), self._mdb.delete,
                             br, vx, group)

    def ensure_vxlan_mdb(self, vxlan, wanted, entries=None):
        """The VXLAN device's MDB is exactly `wanted` {(group, VTEP)} (`entries` as for ensure_bridge_mdb)."""
        vx = self.index(vxlan)
        entries = self.mdb_entries() if entries is None else entries
        have = {(e.group, e.dst) for e in entries if e.device == vx and e.dst is not None}
        for group, dst in sorted(wanted - have):
            log.info("%s: group %s -> VTEP %s", vxlan, group, dst)
            self._mdb_change("add", "VXLAN MDB entry %s dst %s on %s" % (group, dst, vxlan), self._mdb.add,
                             vx, vx, group, dst)
        for group, dst in sorted(have - wanted):
            log.info("%s: group %s no longer -> VTEP %s", vxlan, group, dst)
            self._mdb_change("remove", "VXLAN MDB entry %s dst %s on %s" % (group, dst, vxlan), self._mdb.delete,
                             vx, vx, group, dst)

    def delete(self, name):
        try:
            self.ipr.link("del", ifname=name)
            log.info("deleted link %s", name)
        except NetlinkError as e:
            if e.code not in (errno.ENODEV, errno.ENOENT):
                raise NetlinkFailure("delete", "link " + name, e) from None

    def _set(self, link, name, **want):
        """Change only the attributes that differ, so repeats make no netlink writes."""
        current = {"mtu": link.get_attr("IFLA_MTU"), "master": link.get_attr("IFLA_MASTER"),
                   "ifalias": link.get_attr("IFLA_IFALIAS"),
                   "state": "up" if link["flags"] & 1 else "down"}
        change = {k: v for k, v in want.items() if v is not None and current.get(k) != v}
        if change:
            self._do("configure", "link " + name, self.ipr.link, "set", index=link["index"], **change)
