"""A state of twenty thousand addresses: commits cost what they did when it was empty, restarts stay quick.

Before the state was kept without copies (raft/machine.py), every applied
entry and every plugin request deep-copied it: at 6,000 addresses allocations
fell to 21 per second and a restart took 30 to 70 s to register.  The pace is
compared over windows of several seconds: at today's pace 2,000 allocations
were 1.5 s, in which one dump or GC pause made the ratio anything from 0.69
to 0.88, and failed CI once at 0.798.
"""

import concurrent.futures
import itertools
import time

import pytest

from ..hostlab import PluginError

pytestmark = pytest.mark.faults

TOTAL = 20000
WINDOW = 6000                    # about 5 s at the usual pace: one snapshot or GC pause does not decide it
CLIENTS_PER_HOST = 6


def test_twenty_thousand_addresses_keep_their_pace_and_a_restart_registers_quickly(cluster):
    hosts = cluster.hosts
    done = []                                    # completion times, in order
    given = []                                   # the addresses acknowledged
    left = itertools.count(TOTAL, -1)            # shared, so every client stays busy to the end

    def client(host):
        while next(left) > 0:
            reply = host.plugin("IpamDriver.RequestAddress", {"PoolID": cluster.pool, "Address": "", "Options": {}})
            done.append(time.monotonic())
            given.append(reply["Address"].split("/")[0])
    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(hosts) * CLIENTS_PER_HOST) as pool:
        jobs = [pool.submit(client, h) for h in hosts for _ in range(CLIENTS_PER_HOST)]
        for job in jobs:
            job.result()
    total = len(done)
    first = WINDOW / (done[WINDOW - 1] - began)
    last = WINDOW / (done[-1] - done[-WINDOW - 1])
    print("%d allocations in %.0fs: %.0f/s over the first %d, %.0f/s over the last %d (ratio %.2f)"
          % (total, done[-1] - began, first, WINDOW, last, WINDOW, last / first))
    assert total == TOTAL
    assert len(set(given)) == TOTAL, "an address was handed out twice"
    # The copies this guards against took the pace to 0.02 of the start; the code today ends at 0.81 to
    # 0.99 of it (a slowdown of up to a fifth whose cause is not found yet: dumps or GC), so 0.8 was a coin
    # toss and half of it is the line: a cost per allocation that doubles with the state.
    assert last >= 0.5 * first, "allocations slowed down as the state grew"

    finals = cluster.converged()
    assert all(addrs >= set(given) for addrs in finals.values()), "an acknowledged allocation is missing"

    h3 = hosts[2]
    h3.kill()
    started = time.monotonic()
    cluster.start(h3, wait=False)
    h3.wait_registered(timeout=60)
    took = time.monotonic() - started
    print("a host restarted with %d addresses in the state registered in %.1fs" % (total, took))
    assert took <= 5.0


def test_catching_up_after_a_partition_never_stalls_the_loop(cluster):
    """Before: a host cut off while thousands of entries committed froze for 18.5 s as it caught up."""
    h1, h2, h3 = cluster.hosts
    cluster.partition(h3)
    left = itertools.count(5000, -1)
    refused = []

    def client(host):
        while next(left) > 0:
            while True:
                try:
                    host.plugin("IpamDriver.RequestAddress", {"PoolID": cluster.pool, "Address": "", "Options": {}})
                    break
                except PluginError as e:
                    # The partition may cost an election: a refusal changed nothing and says try again.
                    if e.status != 503 or "nothing was changed" not in e.message or len(refused) > 50:
                        raise
                    refused.append(e.message)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        for job in [pool.submit(client, h) for h in (h1, h2) for _ in range(6)]:
            job.result()
    behind = h3.bus.status()["Applied"]
    cluster.heal()
    worst, began = 0.0, time.monotonic()
    while h3.bus.status()["Applied"] < h1.bus.status()["Applied"]:
        t = time.monotonic()
        h3.plugin("Plugin.Activate")                # answered by h3's event loop
        worst = max(worst, time.monotonic() - t)
        time.sleep(0.05)  # the probe interval
        assert time.monotonic() - began < 60, "host 3 did not catch up"
    print("host 3 caught up from %d to %d operations in %.1fs; its loop answered within %.3fs at worst "
          "(%d requests refused and retried during the partition)"
          % (behind, h1.bus.status()["Applied"], time.monotonic() - began, worst, len(refused)))
    assert worst < 1.0
    cluster.converged()
