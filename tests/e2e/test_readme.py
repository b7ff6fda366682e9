"""The README's own commands for the demo and the benchmark, run exactly as printed.

(The install walkthrough and the Compose files run on the machines:
tests/machines/test_package.py.)  This module runs after test_cluster.py,
whose lab uses the same names, is down.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import readme  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.e2e
if os.geteuid() != 0 or not shutil.which("dockerd"):
    pytest.skip("the demo needs root and dockerd", allow_module_level=True)


def run_as_printed(where, timeout):
    (line,) = readme.commands(where)
    res = subprocess.run(line, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, "%s\n%s\n%s" % (line, res.stdout[-3000:], res.stderr[-3000:])
    return res.stdout


def test_the_demo_runs_and_both_receivers_lose_nothing():
    out = run_as_printed("demo", timeout=900)
    reports = re.findall(r"--- receiver (rx\d) on host \d ---\n(.*?)(?=--- receiver|\Z)", out, re.S)
    assert [name for name, _ in reports] == ["rx2", "rx3"], out[-3000:]
    for name, log in reports:
        lost, total = max(((int(a), int(b)) for a, b in re.findall(r"(\d+)/\s*(\d+) \(", log)), key=lambda r: r[1])
        assert total > 500 and lost == 0, (name, lost, total)


def test_the_benchmark_command_runs():
    out = run_as_printed("bench", timeout=600)
    assert re.search(r"Raft commit \(fsync\) proposed on the leader\s*: median [\d.]+ ms", out), out


def test_every_part_of_the_benchmark_runs():
    """Briefly, so a part the README command leaves out cannot rot unseen; the figures are not judged."""
    res = subprocess.run([sys.executable, "bench/bench.py", "--rounds", "1", "--seconds", "1", "--kills", "2",
                          "--joins", "1", "--parts", "tcp,multicast,run,failover,pruning"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for line in ("TCP shoutd / host-to-host underlay", "multicast 100 Mbit/s to", "docker run median",
                 "shoutd resident memory", "failover after kill -9 of the leader, 2 times",
                 "pruned / flooded underlay bytes sent, listeners on 3 of 3 hosts", "join latency",
                 "a burst of 100 joins"):
        assert line in res.stdout, (line, res.stdout[-3000:])


def test_the_scale_simulation_runs():
    """bench/scale.py (issue 16's simulation), at a size the test machine forms in seconds."""
    res = subprocess.run([sys.executable, "bench/scale.py", "--hosts", "4", "--allocations", "20", "--idle", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    row = re.search(r"^\| 4 \| ([\d.]+) s \| .* \| ([\d.]+) s \| ([\d.]+) s \|", res.stdout, re.M)
    assert row, res.stdout
