"""How shoutd reads nftables (over netlink, as firewalld's tables need), against the real kernel.

Chains are written with the nft command in a throwaway network namespace;
shoutd's reader runs inside it and must see what nft wrote, and nothing else.
"""

import os
import shutil
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.kernel
if os.geteuid() != 0 or not shutil.which("nft"):
    pytest.skip("kernel tests need root and nft", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READ = "from shoutd.dataplane.firewall import forward_chains\nfor c in forward_chains(): print(repr(tuple(vars(c).values())))"


@pytest.fixture
def ns():
    name = "shfw-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def nft(ns, text):
    subprocess.run(["ip", "netns", "exec", ns, "nft", text], check=True)


def chains(ns):
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", READ], check=True, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=ROOT)).stdout
    return sorted(eval(line) for line in out.splitlines())   # noqa: S307 - our own repr of tuples


def test_forward_base_chains_their_policy_and_an_accept_of_shoutd_s_devices_are_read(ns):
    assert chains(ns) == []
    nft(ns, "add table inet filter; add chain inet filter forward { type filter hook forward priority 0; policy drop; }; "
            "add chain inet filter input { type filter hook input priority 0; policy drop; }; "
            "add chain inet filter regular")
    nft(ns, "add table bridge br; add chain bridge br forward { type filter hook forward priority 0; policy drop; }; "
            'insert rule bridge br forward iifname "sh*" oifname "sh*" accept')
    nft(ns, "add table ip6 six; add chain ip6 six forward { type filter hook forward priority 0; policy accept; }; "
            'insert rule ip6 six forward iifname "shb*" drop')
    assert chains(ns) == [("bridge", "br", "forward", "drop", True), ("inet", "filter", "forward", "drop", False),
                          ("ip6", "six", "forward", "accept", False)]
    nft(ns, 'insert rule inet filter forward iifname "shb*" oifname "shb*" accept')
    assert ("inet", "filter", "forward", "drop", True) in chains(ns)
