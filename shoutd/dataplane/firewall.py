"""Let bridged shoutd traffic past the host's firewall, and say so when shoutd cannot.

With br_netfilter loaded and bridge-nf-call-iptables (or -ip6tables) set,
every frame a shoutd bridge forwards between a container's veth and the VXLAN
device also passes the IPv4 (IPv6) FORWARD hook, as `-i shbV -o shbV`.
Docker loads br_netfilter (before 27.3 always; from 27.3 only for icc=false,
userland-proxy=false or docker_gwbridge) and, when it enables forwarding
itself, sets FORWARD's policy to DROP, for ip6tables too from 27.  The
per-bridge nf_call_iptables switch cannot turn that off while the
namespace-wide sysctl is on, so shoutd keeps one rule per family,
`FORWARD -i shb+ -o shb+ -j ACCEPT`, while the sysctl is set.  It goes right
below the jump to DOCKER-USER, never above it, so the user's own rules there
still come first; Docker 28 re-inserts DOCKER-USER and DOCKER-FORWARD at the
top on every start, which only pushes them further above it.  Traffic between
two shoutd bridges, or out to the host, is not matched.

Every frame a shoutd bridge forwards runs this rule, so it carries no
`-m comment`: iptables-nft keeps a comment as an xtables match that the
kernel calls on each packet (comment_mt in a profile of TCP between
containers).  The rule is known by its exact text.  shoutd 0.5 and older
added it with a comment (LEGACY_COMMENT); ensure replaces that form.

An nftables base chain on the forward hook with policy drop (a hand-written
ruleset, firewalld, or Docker 29's nftables backend when it enables
forwarding) drops the same frames whatever iptables accepts: a packet must be
accepted by every base chain on a hook.  Editing someone else's table is not
shoutd's to do, so it names the chain and the rule to add, in its log and in
its status (`problems`).  The chains are read over netlink, not with the nft
command: firewalld writes its tables through libnftables, with no nft installed.  The bridge family's forward hook sees every bridged
frame, br_netfilter or not.
"""

import logging
import shutil
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)

MATCH = ["-i", "shb+", "-o", "shb+", "-j", "ACCEPT"]
RULE = "-A FORWARD " + " ".join(MATCH)            # as `iptables -S FORWARD` lists it
LEGACY_COMMENT = "shoutd: bridged overlay traffic"
LEGACY_MATCH = MATCH[:4] + ["-m", "comment", "--comment", LEGACY_COMMENT] + MATCH[4:]
USER_CHAIN = "DOCKER-USER"
SYSCTL = "/proc/sys/net/bridge/bridge-nf-call-%s"


@dataclass(frozen=True)
class Family:
    command: str        # iptables or ip6tables
    sysctl: str         # br_netfilter's switch that hands bridged frames to it
    nft: tuple          # the nftables families whose forward hook then sees them


IPV4 = Family("iptables", SYSCTL % "iptables", ("ip", "inet"))
IPV6 = Family("ip6tables", SYSCTL % "ip6tables", ("ip6", "inet"))


def bridged_traffic_hits(family):
    try:
        with open(family.sysctl) as f:
            return f.read().strip() == "1"
    except OSError:
        return False            # br_netfilter not loaded: iptables never sees bridged frames


def position(rules):
    """Where the rule belongs in `iptables -S FORWARD`'s rules: right below the last DOCKER-USER jump."""
    appended = [r.split() for r in rules if r.startswith("-A FORWARD ")]
    jumps = [i for i, words in enumerate(appended) if words[-2:] == ["-j", USER_CHAIN]]
    return jumps[-1] + 2 if jumps else 1


class Firewall:
    """One host's firewall as shoutd's traffic meets it; `ensure` runs on the netlink worker thread."""

    def __init__(self, run=subprocess.run, which=shutil.which, families=(IPV4, IPV6), nft_chains=None):
        self._run, self._which, self.families = run, which, families
        self._nft_chains = nft_chains or forward_chains
        self.problems = ()          # what keeps shoutd traffic from flowing, each with what to do
        self.done = {}              # family command -> what ensure last did, for the log and tests

    def ensure(self):
        problems = []
        hooked = set()
        for family in self.families:
            if not bridged_traffic_hits(family):
                self.done[family.command] = "not needed"
                continue
            hooked.update(family.nft)
            self.done[family.command], problem = self._ensure_rule(family)
            if problem:
                problems.append(problem)
        problems += self._nft_droppers(hooked | {"bridge"})
        if tuple(problems) != self.problems:
            for p in problems:
                log.warning("firewall: %s", p)
            if self.problems and not problems:
                log.info("firewall: nothing blocks shoutd traffic any more")
        self.problems = tuple(problems)
        return self.done

    def _ensure_rule(self, family):
        """(what was done, a problem or None) for one iptables family."""
        binary = self._which(family.command)
        if binary is None:
            return "no %s" % family.command, (
                "br_netfilter hands bridged traffic to %s, but there is no %s command to allow it; install "
                "iptables, or allow -i shb+ -o shb+ in FORWARD" % (family.command, family.command))
        listed = self._run([binary, "-w", "-S", "FORWARD"], capture_output=True, text=True)
        if listed.returncode != 0:
            return "failed", "cannot list %s FORWARD: %s" % (family.command, listed.stderr.strip())
        rules = listed.stdout.splitlines()
        appended = [r for r in rules if r.startswith("-A FORWARD ")]
        ours = [i for i, r in enumerate(appended) if r == RULE]
        legacy = [r for r in appended if LEGACY_COMMENT in r]
        want = position(rules)
        if len(ours) == 1 and ours[0] >= want - 1 and not legacy:
            return "present", None          # below DOCKER-USER: where Docker's re-inserts leave it
        # Above DOCKER-USER (shoutd before 0.4 inserted at the top), twice, or with a comment (up to 0.5).
        for match in [MATCH] * len(ours) + [LEGACY_MATCH] * len(legacy):
            self._run([binary, "-w", "-D", "FORWARD"] + match, capture_output=True)
        if ours or legacy:
            want = position([r for r in rules if r != RULE and LEGACY_COMMENT not in r])
        res = self._run([binary, "-w", "-I", "FORWARD", str(want)] + MATCH, capture_output=True, text=True)
        if res.returncode != 0:
            return "failed", "cannot add the %s rule for bridged shoutd traffic: %s" % (family.command,
                                                                                      res.stderr.strip())
        log.info("%s: FORWARD rule %d: -i shb+ -o shb+ -j ACCEPT (br_netfilter is on)", family.command, want)
        return "moved" if ours or legacy else "added", None

    def _nft_droppers(self, families):
        """A problem for each nftables forward base chain that drops what it does not accept."""
        problems = []
        for chain in self._nft_chains():
            if chain.family not in families or chain.policy != "drop" or chain.accepts_shoutd:
                continue
            if chain.family in ("ip", "ip6") and chain.table == "filter" and chain.name == "FORWARD":
                continue        # iptables' own chain: the rule above handles it
            where = "%s %s %s" % (chain.family, chain.table, chain.name)
            # The bridge family sees the bridge's ports (shoutd's veths shv*, its VXLAN devices shx*);
            # with br_netfilter, the ip families see the bridge itself (shb*).
            match = 'iifname "sh*" oifname "sh*"' if chain.family == "bridge" else 'iifname "shb*" oifname "shb*"'
            problems.append(
                "nftables chain %s drops forwarded traffic by policy, and bridged shoutd traffic passes it: "
                "containers on different hosts cannot reach each other. Accept it there: nft insert rule %s %s "
                "accept" % (where, where, match))
        return problems


@dataclass(frozen=True)
class Chain:
    """An nftables base chain on the forward hook, as the kernel holds it."""
    family: str
    table: str
    name: str
    policy: str
    accepts_shoutd: bool        # one of its rules accepts what matches shoutd's devices (sh*)


NFPROTO = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
FORWARD_HOOK = 2                # NF_INET_FORWARD, and NF_BR_FORWARD for the bridge family


def forward_chains():
    """Every nftables base chain on the forward hook, read over netlink (firewalld needs no nft command)."""
    from pyroute2.nftables.main import NFTables      # noqa: PLC0415 - only hosts that look need it
    try:
        nft = NFTables(nfgen_family=0)          # all families
        try:
            chains = nft.get_chains()
            rules = nft.get_rules()
        finally:
            nft.close()
    except Exception as e:  # noqa: BLE001 - no nf_tables, or no permission: nothing to read
        log.debug("cannot read nftables chains: %s", e)
        return []
    accepting = set()
    for rule in rules:
        if _accepts_shoutd(rule.get_attr("NFTA_RULE_EXPRESSIONS") or []):
            accepting.add((rule["nfgen_family"], rule.get_attr("NFTA_RULE_TABLE"), rule.get_attr("NFTA_RULE_CHAIN")))
    out = []
    for c in chains:
        hook = c.get_attr("NFTA_CHAIN_HOOK")
        if not hook or hook.get_attr("NFTA_HOOK_HOOKNUM") != FORWARD_HOOK:
            continue
        key = (c["nfgen_family"], c.get_attr("NFTA_CHAIN_TABLE"), c.get_attr("NFTA_CHAIN_NAME"))
        out.append(Chain(NFPROTO.get(key[0], str(key[0])), key[1], key[2],
                         "drop" if c.get_attr("NFTA_CHAIN_POLICY") == 0 else "accept", key in accepting))
    return out


def _attr(expr, *path):
    """A nested attribute of an nftables rule expression's data, or None."""
    node = expr.get_attr("NFTA_EXPR_DATA")
    for name in path:
        if node is None:
            return None
        node = node.get_attr(name)
    return node


def _accepts_shoutd(exprs):
    """A rule that compares an interface name with a prefix of shoutd's (sh*) and accepts."""
    def of(kind):
        return [e for e in exprs if e.get_attr("NFTA_EXPR_NAME") == kind]
    names = [_attr(e, "NFTA_CMP_DATA", "NFTA_DATA_VALUE") for e in of("cmp")]
    verdicts = [_attr(e, "NFTA_IMMEDIATE_DATA", "NFTA_DATA_VERDICT", "NFTA_VERDICT_CODE") for e in of("immediate")]
    return any(isinstance(n, bytes) and n.startswith(b"sh") for n in names) and "NF_ACCEPT" in verdicts
