"""The bridge's and the VXLAN device's multicast databases (MDB), over netlink.

pyroute2 (0.7 and 0.9) knows the MDB message numbers but has no message
classes and no API for them, and bookworm's `bridge` command cannot give a
VXLAN entry its destination.  So the messages are declared here, after the
kernel's <linux/if_bridge.h>, with pyroute2's own nlmsg/nla classes, and sent
on a plain netlink socket: no pyroute2 internals, the same on both versions.

Three kinds of entry are used (see desired.py):
- learned:   the bridge's own IGMP/MLD snooping: (group, a container's veth)
- permanent: (group, port shx<V>) on the bridge: some other host listens
- VXLAN:     (group, dst VTEP) on shx<V> itself (kernel 6.4 and later)

The socket is made on first use, in the calling thread's network namespace
(the netlink worker's, see worker.py).
"""

import errno
import ipaddress
import os
import socket
import struct
from collections import namedtuple

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, nla, nlmsg

RTM_NEWMDB, RTM_DELMDB, RTM_GETMDB = 84, 85, 86
RTNLGRP_MDB = 26
AF_BRIDGE = 7
MDB_PERMANENT = 1
NLA_F_NESTED = 0x8000
SOL_NETLINK, NETLINK_EXT_ACK = 270, 11
NLMSGERR_ATTR_MSG = 1
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
_PROTO = {4: 0x0800, 6: 0x86DD}

# struct br_mdb_entry: ifindex, state, flags, vid, then the group (a 16-byte
# union) and its protocol, padded to 28 bytes.
_ENTRY_FIELDS = (("ifindex", "I"), ("state", "B"), ("flags", "B"), ("vid", "H"),
                 ("addr", "16s"), ("proto", ">H"), ("pad", "2x"))


class MdbDump(nlmsg):
    """A dump reply: struct br_port_msg, then MDBA_MDB > MDBA_MDB_ENTRY > MDBA_MDB_ENTRY_INFO."""
    fields = (("family", "B"), ("pad1", "3x"), ("ifindex", "I"))
    nla_map = ((0, "MDBA_UNSPEC", "none"), (1, "MDBA_MDB", "mdb"), (2, "MDBA_ROUTER", "hex"))

    class mdb(nla):
        nla_map = ((0, "MDBA_MDB_UNSPEC", "none"), (1, "MDBA_MDB_ENTRY", "entry"))

        class entry(nla):
            nla_map = ((0, "MDBA_MDB_ENTRY_UNSPEC", "none"), (1, "MDBA_MDB_ENTRY_INFO", "info"))

            class info(nla):
                fields = _ENTRY_FIELDS
                nla_map = ((0, "MDBA_MDB_EATTR_UNSPEC", "none"), (1, "MDBA_MDB_EATTR_TIMER", "uint32"),
                           (2, "MDBA_MDB_EATTR_SRC_LIST", "hex"), (3, "MDBA_MDB_EATTR_GROUP_MODE", "uint8"),
                           (4, "MDBA_MDB_EATTR_SOURCE", "hex"), (5, "MDBA_MDB_EATTR_RTPROT", "uint8"),
                           (6, "MDBA_MDB_EATTR_DST", "cdata"))


class MdbSet(nlmsg):
    """RTM_NEWMDB / RTM_DELMDB: one entry, and for a VXLAN device its destination."""
    fields = (("family", "B"), ("pad1", "3x"), ("ifindex", "I"))
    nla_map = ((0, "MDBA_SET_ENTRY_UNSPEC", "none"), (1, "MDBA_SET_ENTRY", "entry"),
               (2, "MDBA_SET_ENTRY_ATTRS", "attrs"))

    class entry(nla):
        fields = _ENTRY_FIELDS

    class attrs(nla):
        nla_flags = NLA_F_NESTED      # the VXLAN driver parses it strictly
        nla_map = ((0, "MDBE_ATTR_UNSPEC", "none"), (1, "MDBE_ATTR_SOURCE", "hex"),
                   (2, "MDBE_ATTR_SRC_LIST", "hex"), (3, "MDBE_ATTR_GROUP_MODE", "uint8"),
                   (4, "MDBE_ATTR_RTPROT", "uint8"), (5, "MDBE_ATTR_DST", "cdata"))


class MdbError(OSError):
    """errno and, where the kernel gave one, its own explanation."""


def _group_bytes(group):
    address = ipaddress.ip_address(group)
    return address.packed.ljust(16, b"\0"), _PROTO[address.version]


def _group_text(raw, proto):
    if proto == _PROTO[4]:
        return str(ipaddress.IPv4Address(raw[:4]))
    if proto == _PROTO[6]:
        return str(ipaddress.IPv6Address(raw))
    return None                                  # L2 (MAC) entries: not ours


def _dst_text(raw):
    return str(ipaddress.ip_address(bytes(raw)))


# device and port are ifindexes; dst (the VTEP) is None on a bridge.
Entry = namedtuple("Entry", "device port group dst permanent")


class MdbSocket:
    def __init__(self):
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        try:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except OSError:
            pass                      # older kernels: errors come without the kernel's text
        self._seq = 0

    def close(self):
        self._sock.close()

    def entries(self):
        """Every MDB entry of every bridge and VXLAN device in this namespace."""
        out, request = [], MdbDump()
        request["family"] = AF_BRIDGE
        for msg in self._request(request, RTM_GETMDB, NLM_F_REQUEST | NLM_F_DUMP):
            for mdb in msg.get_attrs("MDBA_MDB"):
                for entry in mdb.get_attrs("MDBA_MDB_ENTRY"):
                    for info in entry.get_attrs("MDBA_MDB_ENTRY_INFO"):
                        group = _group_text(info["addr"], info["proto"])
                        if group is None:
                            continue
                        dst = info.get_attr("MDBA_MDB_EATTR_DST")
                        out.append(Entry(msg["ifindex"], info["ifindex"], group,
                                         _dst_text(dst) if dst is not None else None,
                                         info["state"] == MDB_PERMANENT))
        return out

    def add(self, device, port, group, dst=None):
        """Add a permanent entry; one that exists already is fine."""
        try:
            self._change(RTM_NEWMDB, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE, device, port, group, dst)
        except MdbError as e:
            if e.errno != errno.EEXIST:
                raise

    def delete(self, device, port, group, dst=None):
        """Remove an entry; one that is gone already is fine."""
        try:
            self._change(RTM_DELMDB, NLM_F_REQUEST | NLM_F_ACK, device, port, group, dst)
        except MdbError as e:
            if e.errno != errno.ENOENT:
                raise

    def _change(self, kind, flags, device, port, group, dst):
        raw, proto = _group_bytes(group)
        msg = MdbSet()
        msg["family"] = AF_BRIDGE
        msg["ifindex"] = device
        msg["attrs"] = [("MDBA_SET_ENTRY", {"ifindex": port, "state": MDB_PERMANENT, "flags": 0, "vid": 0,
                                            "addr": raw, "proto": proto})]
        if dst is not None:
            msg["attrs"].append(("MDBA_SET_ENTRY_ATTRS",
                                 {"attrs": [("MDBE_ATTR_DST", ipaddress.ip_address(dst).packed)]}))
        self._request(msg, kind, flags)

    def _request(self, msg, kind, flags):
        self._seq += 1
        msg["header"]["type"] = kind
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = self._seq
        msg.encode()
        self._sock.send(msg.data)
        replies = []
        while True:
            data = self._sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, kind_, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
                chunk = data[offset:offset + length]
                offset += (length + 3) & ~3
                if seq != self._seq:
                    continue                          # a late answer to an earlier request
                if kind_ == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", chunk, 16)[0]
                    if code:
                        raise MdbError(code, _error_text(code, chunk))
                    return replies
                if kind_ == NLMSG_DONE:
                    return replies
                reply = MdbDump(chunk)
                reply.decode()
                replies.append(reply)


def _error_text(code, chunk):
    """strerror, plus the kernel's extended-ack message when it sent one."""
    text = os.strerror(code)
    flags = struct.unpack_from("=H", chunk, 6)[0]
    if not flags & NLM_F_ACK_TLVS:
        return text
    # struct nlmsgerr: the error, then our request (only its header when capped), then the TLVs.
    inner_length = struct.unpack_from("=I", chunk, 20)[0]
    offset = 20 + (((16 if flags & NLM_F_CAPPED else inner_length) + 3) & ~3)
    while offset + 4 <= len(chunk):
        length, kind = struct.unpack_from("=HH", chunk, offset)
        if length < 4:
            break
        if kind == NLMSGERR_ATTR_MSG:
            return "%s: %s" % (text, chunk[offset + 4:offset + length].split(b"\0")[0].decode("utf-8", "replace"))
        offset += (length + 3) & ~3
    return text


def listen_socket():
    """A non-blocking socket that becomes readable on every MDB change (RTNLGRP_MDB)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
    sock.bind((0, 0))
    sock.setsockopt(SOL_NETLINK, 1, RTNLGRP_MDB)        # NETLINK_ADD_MEMBERSHIP
    return sock

