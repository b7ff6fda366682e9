"""Let bridged shoutd traffic past iptables when br_netfilter would hand it over.

Docker loads br_netfilter and, with its default iptables rules, sets the
FORWARD policy to DROP.  From then on every frame our bridges forward between
a container's veth and the VXLAN device also passes iptables FORWARD (as
`-i shbV -o shbV`), and is dropped.  The per-bridge nf_call_iptables switch
cannot turn that off while the namespace-wide sysctl is on, so shoutd keeps
one rule, `FORWARD -i shb+ -o shb+ -j ACCEPT`, while the sysctl is set.
Traffic between two shoutd bridges, or out to the host, is not matched.
"""

import logging
import shutil
import subprocess

log = logging.getLogger(__name__)

SYSCTL = "/proc/sys/net/bridge/bridge-nf-call-iptables"
RULE = ["FORWARD", "-i", "shb+", "-o", "shb+", "-m", "comment", "--comment", "shoutd: bridged overlay traffic",
        "-j", "ACCEPT"]


def bridged_traffic_hits_iptables():
    try:
        with open(SYSCTL) as f:
            return f.read().strip() == "1"
    except OSError:
        return False            # br_netfilter not loaded: iptables never sees bridged frames


def ensure_forward_accept(run=subprocess.run):
    """Idempotent; returns what it did, for the log and the tests."""
    if not bridged_traffic_hits_iptables():
        return "not needed"
    iptables = shutil.which("iptables")
    if iptables is None:
        log.warning("br_netfilter passes bridged traffic to iptables, but there is no iptables "
                    "command to allow it; install iptables or allow -i shb+ -o shb+ in FORWARD")
        return "no iptables"
    if run([iptables, "-w", "-C"] + RULE, capture_output=True).returncode == 0:
        return "present"
    res = run([iptables, "-w", "-I"] + RULE, capture_output=True, text=True)
    if res.returncode != 0:
        log.warning("cannot add the iptables rule for bridged shoutd traffic: %s", res.stderr.strip())
        return "failed"
    log.info("added iptables rule: FORWARD -i shb+ -o shb+ -j ACCEPT (br_netfilter is on)")
    return "added"
