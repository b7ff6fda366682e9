"""The IGMP/MLD fence's ebtables rules, against a fake ebtables that keeps them.

The real command and real IGMP are tried in tests/kernel/test_multicast.py.
"""

import subprocess

from shoutd.dataplane.fence import CHAIN, JUMP, LEGACY_JUMP, Fence, rules


class FakeEbtables:
    """`ebtables -L/-N/-A/-D` over chains of rule lines, listed as ebtables-nft lists them."""

    def __init__(self, chains=None):
        self.chains = {"INPUT": [], "FORWARD": [], "OUTPUT": []}
        self.chains.update(chains or {})
        self.calls = []

    def __call__(self, argv, capture_output=True, text=True):
        self.calls.append(argv[1:])
        op, chain, rest = argv[1], argv[2], argv[3:]
        code, out = 0, ""
        if op == "-L":
            if chain not in self.chains:
                code = 1
            else:
                out = "Bridge table: filter\n\nBridge chain: %s\n%s\n" % (chain, "\n".join(self.chains[chain]))
        elif op == "-N":
            self.chains[chain] = []
        elif op == "-A":
            self.chains[chain].append(" ".join(rest))
        elif op == "-D":
            if " ".join(rest) in self.chains.get(chain, []):
                self.chains[chain].remove(" ".join(rest))
            else:
                code = 1
        return subprocess.CompletedProcess(argv, code, out, "")


def fence(fake, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: "/usr/sbin/" + name)
    return Fence(run=fake)


def test_only_frames_to_a_multicast_mac_jump_to_the_chain(monkeypatch):
    fake = FakeEbtables()
    fence(fake, monkeypatch).ensure({"shx4200"})
    assert fake.chains["FORWARD"] == fake.chains["OUTPUT"] == [" ".join(JUMP)] == ["-d Multicast -j " + CHAIN]
    assert fake.chains[CHAIN] == [" ".join(r) for r in rules("shx4200")]


def test_the_jump_of_shoutd_0_5_is_replaced_and_a_second_pass_changes_nothing(monkeypatch):
    """shoutd 0.5 jumped on -o shx+: every frame towards another host ran the chain's matches."""
    legacy = " ".join(LEGACY_JUMP)
    fake = FakeEbtables({"FORWARD": [legacy, legacy], "OUTPUT": [legacy],
                         CHAIN: [" ".join(r) for r in rules("shx4200")]})
    f = fence(fake, monkeypatch)
    f.ensure({"shx4200"})
    assert fake.chains["FORWARD"] == fake.chains["OUTPUT"] == [" ".join(JUMP)]
    assert fake.chains[CHAIN] == [" ".join(r) for r in rules("shx4200")], "the device's rules were kept"
    fake.calls.clear()
    f.ensure({"shx4200"})
    assert [c for c in fake.calls if c[0] != "-L"] == []
