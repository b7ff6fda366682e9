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

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import INTERNAL, ShoutdError

log = logging.getLogger(__name__)

ZERO_MAC = "00:00:00:00:00:00"


class NetlinkFailure(ShoutdError):
    def __init__(self, action, obj, err):
        code = err.code if isinstance(err, NetlinkError) else getattr(err, "errno", None)
        text = errno.errorcode.get(code, str(code)) if code else str(err)
        super().__init__("cannot %s %s: %s (%s)" % (action, obj, getattr(err, "args", [err])[-1], text), INTERNAL)
        self.code = code


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

    def close(self):
        self.ipr.close()

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

    def ensure_bridge(self, name, mtu, alias):
        link = self.link(name)
        if link is not None and _info(link)[0] != "bridge":
            self.delete(name)
            link = None
        if link is None:
            log.info("creating bridge %s (%s)", name, alias)
            # No IGMP snooping: with no querier on the segment it would prune
            # groups after a few minutes.  Flooding is what a hub-like L2 needs.
            self._do("create", "bridge " + name, self.ipr.link, "add", ifname=name, kind="bridge",
                     br_mcast_snooping=0, br_stp_state=0, mtu=mtu)
            link = self.link(name)
        if _info(link)[1].get_attr("IFLA_BR_MCAST_SNOOPING") != 0:
            self._do("configure", "bridge " + name, self.ipr.link, "set", index=link["index"],
                     kind="bridge", br_mcast_snooping=0)
        self._set(link, name, mtu=mtu, ifalias=alias, state="up")
        return link["index"]

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

    def ensure_veth(self, host, peer, mac, mtu, bridge_index, alias):
        """The host end joins the bridge; the peer waits for Docker to move it."""
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
        return link["index"]

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
