"""Keep IGMP and MLD of a pruned network on their own host.

In a pruned network every host's bridge is the IGMP/MLD querier for its own
containers (see desired.py).  The bridge sends its queries out of every port,
the VXLAN port included, and a bridge that hears another's query falls silent
for minutes (querier election): each host would then keep its containers'
memberships alive only while some other host is up.  Reports crossing hosts
are the other half of the trap (an IGMPv2 listener that hears another's
report stays silent, so its own bridge may never learn it; ovn-org/ovn#126).
So no IGMP or MLD message leaves a host through a pruned network's VXLAN
device: one ebtables chain, SHOUTD-MCAST, reached from OUTPUT (the bridge's
own queries) and FORWARD (containers' messages), drops them per device.
Flooding networks are left alone: there, IGMP crosses hosts as before.

Only frames to a multicast MAC jump to the chain (`-d Multicast`: the group
bit, one masked compare), as every IGMP and MLD message has one.  Unicast,
nearly all of a bridge's frames, then costs one compare; shoutd 0.5 and older
jumped on `-o shx+` (LEGACY_JUMP), which sent every frame towards another
host through the chain's rules and their per-packet ebtables matches.

ebtables (the nf_tables one, which Debian's iptables package provides) is
used because the bridge hooks are all the kernel offers for this: tc would
need the act_gact module, which not every kernel has.
"""

import logging
import shutil
import subprocess

log = logging.getLogger(__name__)

CHAIN = "SHOUTD-MCAST"
JUMP = ["-d", "Multicast", "-j", CHAIN]
LEGACY_JUMP = ["-o", "shx+", "-j", CHAIN]


def rules(device):
    return [["-p", "IPv4", "-o", device, "--ip-proto", "igmp", "-j", "DROP"],
            # MLD: query, v1 report and done (130-132), v2 report (143)
            ["-p", "IPv6", "-o", device, "--ip6-proto", "ipv6-icmp", "--ip6-icmp-type", "130:132", "-j", "DROP"],
            ["-p", "IPv6", "-o", device, "--ip6-proto", "ipv6-icmp", "--ip6-icmp-type", "143", "-j", "DROP"]]


def _device(line):
    words = line.split()
    return words[words.index("-o") + 1] if "-o" in words else None


class Fence:
    """ensure(devices) makes SHOUTD-MCAST drop IGMP/MLD out of exactly those devices."""

    def __init__(self, run=subprocess.run):
        self.run = run
        self.ebtables = None
        self._missing_logged = False

    def _ebtables(self, *args):
        res = self.run([self.ebtables, *args], capture_output=True, text=True)
        return res.returncode, res.stdout, res.stderr.strip()

    def _lines(self, chain):
        code, out, _ = self._ebtables("-L", chain)
        if code != 0:
            return None
        return [line.strip() for line in out.splitlines() if line.startswith("-")]

    def ensure(self, devices):
        self.ebtables = shutil.which("ebtables") or shutil.which("ebtables-nft")
        if self.ebtables is None:
            if devices and not self._missing_logged:
                log.warning("no ebtables command: IGMP and MLD of pruned networks cross hosts, so each host's "
                            "querier may fall silent; install iptables (it provides ebtables)")
                self._missing_logged = True
            return
        did = []
        present = self._lines(CHAIN)
        if present is None and not devices:
            return
        if present is None:
            self._do(did, "create chain " + CHAIN, "-N", CHAIN, "-P", "RETURN")
            present = []
        for hook in ("OUTPUT", "FORWARD"):
            lines = self._lines(hook) or []
            for _ in range(lines.count(" ".join(LEGACY_JUMP))):
                self._do(did, "replace the jump of shoutd 0.5 from " + hook, "-D", hook, *LEGACY_JUMP)
            if " ".join(JUMP) not in lines:
                self._do(did, "jump from " + hook, "-A", hook, *JUMP)
        by_device = {}
        for line in present:
            by_device.setdefault(_device(line), []).append(line)
        for device in sorted(set(by_device) - set(devices)):
            for line in by_device[device]:
                self._do(did, "remove %s rule" % device, "-D", CHAIN, *line.split())
        for device in sorted(devices):
            lines = by_device.get(device, [])
            if len(lines) == len(rules(device)):
                continue
            for line in lines:
                self._do(did, "remove %s rule" % device, "-D", CHAIN, *line.split())
            for rule in rules(device):
                self._do(did, "keep IGMP/MLD off " + device, "-A", CHAIN, *rule)
        if did:
            log.info("IGMP/MLD fence: %s", "; ".join(dict.fromkeys(did)))

    def _do(self, did, what, *args):
        code, _, err = self._ebtables(*args)
        if code != 0:
            log.warning("IGMP/MLD fence: cannot %s: %s", what, err)
        else:
            did.append(what)
