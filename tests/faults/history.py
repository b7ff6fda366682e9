"""A concurrent IPAM workload that records what every caller was told, and a checker for it.

Clients on every host allocate addresses and release the ones they hold,
through the plugin socket exactly as Docker calls it.  Each call is recorded
with when it started, when it ended and what the caller learned:
- "ok": acknowledged;
- "fail": refused, so it must never take effect (nothing was sent, or shoutd
  said so definitely);
- "unknown": the caller cannot tell (shoutd said so, the connection broke
  after the request was sent, or the call timed out).

`check` then decides from the history and the hosts' final states, without
trusting shoutd's own view:
- no address was ever held by two clients at once;
- every acknowledged allocation is still there unless its holder released it;
- nothing refused took effect (addresses present are explained by acknowledged
  or unknown operations);
- every host ends with the same state.
"""

import random
import threading
import time
from dataclasses import dataclass

from ..hostlab import NotSent, plugin_call

UNKNOWN_MARK = "whether it took effect"


@dataclass
class Op:
    client: str
    kind: str            # "alloc" | "release"
    addr: str            # the address allocated (if acknowledged) or released
    invoke: float
    complete: float = None
    outcome: str = None  # "ok" | "fail" | "unknown"
    detail: str = ""


def call(path, method, body, timeout=30.0):
    """('ok', reply) | ('fail', why) | ('unknown', why): what a plugin caller can know."""
    try:
        status, reply = plugin_call(path, method, body, timeout)
    except NotSent as e:
        return "fail", str(e)                        # shoutd is down: nothing can happen
    except (OSError, ValueError) as e:
        return "unknown", "no answer: %s" % e        # sent, then the daemon died or stalled
    if status == 200:
        return "ok", reply
    message = reply.get("Err") or reply.get("Error") or ""
    return ("unknown" if UNKNOWN_MARK in message else "fail"), message


class Workload:
    """`clients` threads per host, allocating and releasing in one pool until stopped."""

    def __init__(self, hosts, pool_id, seed, clients=2, timeout=30.0):
        self.hosts = hosts
        self.pool_id = pool_id
        self.timeout = timeout
        self.history = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(h, "%s/%d" % (h.name, i), seed * 1000 + k),
                                          daemon=True)
                         for k, (h, i) in enumerate((h, i) for h in hosts for i in range(clients))]

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 10)
        return self.history

    def _record(self, op):
        with self._lock:
            self.history.append(op)

    def _client(self, host, name, seed):
        rng = random.Random(seed)
        held = []
        while not self._stop.is_set():
            if held and rng.random() < 0.4:
                addr = held.pop(rng.randrange(len(held)))
                op = Op(name, "release", addr, time.monotonic())
                op.outcome, reply = call(host.socket, "IpamDriver.ReleaseAddress",
                                         {"PoolID": self.pool_id, "Address": addr}, self.timeout)
                if op.outcome == "fail":
                    held.append(addr)                 # refused: still ours
            else:
                op = Op(name, "alloc", None, time.monotonic())
                op.outcome, reply = call(host.socket, "IpamDriver.RequestAddress",
                                         {"PoolID": self.pool_id, "Address": "", "Options": {}}, self.timeout)
                if op.outcome == "ok":
                    op.addr = reply["Address"].split("/")[0]
                    held.append(op.addr)
            op.complete = time.monotonic()
            if op.outcome != "ok":
                op.detail = str(reply)[:300]
            self._record(op)
            # Calls fail fast while hosts are down; do not spin.
            time.sleep(rng.uniform(0.0, 0.02) if op.outcome == "ok" else rng.uniform(0.05, 0.2))  # pacing

    def counts(self):
        out = {}
        for op in self.history:
            key = "%s %s" % (op.kind, op.outcome)
            out[key] = out.get(key, 0) + 1
        return out


def check(history, finals):
    """Problems found in `history` given each host's final address set (`finals`: host -> set)."""
    problems = []
    sets = list(finals.values())
    for host, addrs in finals.items():
        if addrs != sets[0]:
            problems.append("hosts disagree: %s has %d addresses, %s has %d (differing: %s)"
                            % (host, len(addrs), next(iter(finals)), len(sets[0]),
                               sorted(addrs ^ sets[0])[:10]))
    final = sets[0] if sets else set()
    releases = {}
    for op in history:
        if op.kind == "release":
            releases.setdefault((op.client, op.addr), []).append(op)

    def released_after(alloc):
        """The holder's first release of it that may have happened (acknowledged or unknown)."""
        for r in sorted(releases.get((alloc.client, alloc.addr), ()), key=lambda r: r.invoke):
            if r.invoke >= alloc.complete and r.outcome in ("ok", "unknown"):
                return r
        return None

    allocs = [op for op in history if op.kind == "alloc" and op.outcome == "ok"]
    by_addr = {}
    for a in allocs:
        by_addr.setdefault(a.addr, []).append(a)
    for addr, xs in by_addr.items():
        xs.sort(key=lambda a: a.invoke)
        for i, x in enumerate(xs):
            rx = released_after(x)
            for y in xs[i + 1:]:
                ry = released_after(y)
                ordered = (rx is not None and rx.invoke <= y.complete) or (ry is not None and ry.invoke <= x.complete)
                if not ordered:
                    problems.append("address %s held twice: by %s (acknowledged at %.3f) and by %s (at %.3f)"
                                    % (addr, x.client, x.complete, y.client, y.complete))
    held = set()
    for a in allocs:
        if released_after(a) is None:
            held.add(a.addr)
            if a.addr not in final:
                problems.append("acknowledged allocation of %s to %s is lost" % (a.addr, a.client))
    maybe = {op.addr for op in history if op.kind == "release" and op.outcome == "unknown"}
    unexplained = final - held - maybe
    unknown_allocs = sum(1 for op in history if op.kind == "alloc" and op.outcome == "unknown")
    if len(unexplained) > unknown_allocs:
        problems.append("%d addresses are held that no acknowledged or unknown operation explains (at most %d "
                        "unknown allocations): a refused write took effect? %s"
                        % (len(unexplained), unknown_allocs, sorted(unexplained)[:10]))
    return problems
