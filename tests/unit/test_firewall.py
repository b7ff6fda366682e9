"""The firewall rule for bridged shoutd traffic, against fake iptables and nft that keep their rules.

The real commands, in network namespaces with Docker's own rulesets, are
tried in tests/e2e/test_firewall.py.
"""

import subprocess

import pytest

from shoutd.dataplane.firewall import LEGACY_COMMENT, RULE, Chain, Family, Firewall, position

DOCKER_28 = ["-A FORWARD -j DOCKER-USER", "-A FORWARD -j DOCKER-FORWARD"]


class FakeIptables:
    """`iptables -w -S/-I/-D FORWARD` over a list of rules, one instance per family."""

    def __init__(self, rules=(), policy="DROP"):
        self.policy, self.rules = policy, list(rules)

    def __call__(self, argv):
        op, args = argv[2], argv[4:]
        rule = "-A FORWARD " + " ".join('"%s"' % a if " " in a else a for a in args)
        if op == "-S":
            return 0, "\n".join(["-P FORWARD " + self.policy] + self.rules) + "\n"
        if op == "-I":
            self.rules.insert(int(args[0]) - 1, "-A FORWARD " + " ".join(
                '"%s"' % a if " " in a else a for a in args[1:]))
            return 0, ""
        if op == "-D":
            if rule in self.rules:
                self.rules.remove(rule)
                return 0, ""
            return 1, ""
        raise AssertionError(argv)


class Host:
    """The commands a Firewall runs, with br_netfilter's switches in files of our own."""

    def __init__(self, tmp_path, v4=True, v6=True, ipv4=None, ipv6=None, chains=()):
        self.tables = {"iptables": ipv4 or FakeIptables(), "ip6tables": ipv6 or FakeIptables()}
        self.chains = list(chains)      # nftables forward base chains, as netlink reads them
        self.families = []
        for name, on, nft in (("iptables", v4, ("ip", "inet")), ("ip6tables", v6, ("ip6", "inet"))):
            path = tmp_path / ("bridge-nf-call-" + name)
            path.write_text("1\n" if on else "0\n")
            self.families.append(Family(name, str(path), nft))
        self.calls = []

    def run(self, argv, capture_output=True, text=False):
        self.calls.append(argv)
        tool = argv[0].rsplit("/", 1)[-1]
        code, out = self.tables[tool](argv)
        return subprocess.CompletedProcess(argv, code, out, "")

    def firewall(self, tools=("iptables", "ip6tables")):
        return Firewall(run=self.run, which=lambda t: "/usr/sbin/" + t if t in tools else None,
                        families=self.families, nft_chains=lambda: list(self.chains))


def ours(table):
    return [i for i, r in enumerate(table.rules) if r == RULE]


def test_the_rule_goes_right_below_docker_user_or_first():
    assert position(["-P FORWARD DROP"]) == 1
    assert position(["-P FORWARD DROP"] + DOCKER_28) == 2
    assert position(["-P FORWARD DROP", "-A FORWARD -j DOCKER-USER", "-A FORWARD -j DOCKER-USER", "-A FORWARD -j X"]) == 3


def test_without_br_netfilter_nothing_is_touched(tmp_path):
    host = Host(tmp_path, v4=False, v6=False)
    assert host.firewall().ensure() == {"iptables": "not needed", "ip6tables": "not needed"}
    assert not [c for c in host.calls if "iptables" in c[0]]


def test_a_drop_policy_in_both_families_gets_the_rule_in_both_below_docker_user(tmp_path):
    host = Host(tmp_path, ipv4=FakeIptables(DOCKER_28), ipv6=FakeIptables(DOCKER_28))
    fw = host.firewall()
    assert fw.ensure() == {"iptables": "added", "ip6tables": "added"}
    for table in host.tables.values():
        assert ours(table) == [1] and table.rules[0] == "-A FORWARD -j DOCKER-USER"
    assert fw.problems == ()
    assert fw.ensure() == {"iptables": "present", "ip6tables": "present"}, "idempotent"


def test_docker_28_re_inserting_its_chains_above_the_rule_leaves_it_alone(tmp_path):
    host = Host(tmp_path, v6=False)
    fw = host.firewall()
    assert fw.ensure()["iptables"] == "added"
    table = host.tables["iptables"]
    # dockerd restarts: DOCKER-USER and DOCKER-FORWARD go back to the top (deleted, then inserted).
    table.rules[:0] = DOCKER_28
    assert fw.ensure()["iptables"] == "present"
    assert table.rules[:2] == DOCKER_28 and ours(table) == [2]


def test_a_rule_above_docker_user_or_twice_is_put_once_below_it(tmp_path):
    host = Host(tmp_path, v6=False, ipv4=FakeIptables([RULE] + DOCKER_28 + [RULE]))
    assert host.firewall().ensure()["iptables"] == "moved"
    assert host.tables["iptables"].rules == DOCKER_28[:1] + [RULE] + DOCKER_28[1:]


def test_the_commented_rule_of_shoutd_0_5_is_replaced_by_the_plain_one(tmp_path):
    """The comment was an xtables match run on every bridged frame; an upgraded host loses it."""
    legacy = '-A FORWARD -i shb+ -o shb+ -m comment --comment "%s" -j ACCEPT' % LEGACY_COMMENT
    host = Host(tmp_path, v6=False, ipv4=FakeIptables(DOCKER_28[:1] + [legacy] + DOCKER_28[1:]))
    fw = host.firewall()
    assert fw.ensure()["iptables"] == "moved"
    assert host.tables["iptables"].rules == DOCKER_28[:1] + [RULE] + DOCKER_28[1:]
    assert fw.ensure()["iptables"] == "present"


def test_no_iptables_command_is_a_problem_that_says_what_to_do(tmp_path):
    host = Host(tmp_path, v6=False)
    fw = host.firewall(tools=())
    assert fw.ensure()["iptables"] == "no iptables"
    assert len(fw.problems) == 1 and "install iptables" in fw.problems[0]


def test_an_nft_forward_chain_that_drops_is_named_with_the_rule_to_add(tmp_path):
    host = Host(tmp_path, v6=False, chains=[
        Chain("inet", "filter", "forward", "drop", False),       # a hand-written ruleset: a problem
        Chain("ip", "filter", "FORWARD", "drop", False),         # iptables' own: handled by the rule
        Chain("ip6", "fw6", "forward", "drop", False),           # IPv6 frames are not handed over here
        Chain("ip", "docker-bridges", "filter-FORWARD", "accept", False),   # Docker 29's, as documented
        Chain("bridge", "br", "forward", "drop", False),         # sees bridged frames without br_netfilter
    ])
    fw = host.firewall()
    fw.ensure()
    assert len(fw.problems) == 2, fw.problems
    assert 'nft insert rule inet filter forward iifname "shb*" oifname "shb*" accept' in fw.problems[0]
    assert 'nft insert rule bridge br forward iifname "sh*" oifname "sh*" accept' in fw.problems[1]
    # The user adds the rules the messages give: the problems go.
    host.chains = [Chain(c.family, c.table, c.name, c.policy, True) for c in host.chains]
    fw.ensure()
    assert fw.problems == ()


@pytest.mark.parametrize("v4", [True, False])
def test_without_br_netfilter_only_the_bridge_family_matters(tmp_path, v4):
    host = Host(tmp_path, v4=v4, v6=False, chains=[Chain("inet", "filter", "forward", "drop", False)])
    fw = host.firewall()
    fw.ensure()
    assert len(fw.problems) == (1 if v4 else 0)
