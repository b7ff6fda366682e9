"""The cluster's replicated state machine: members, networks, addresses, endpoints, groups.

Every shoutd daemon holds an identical copy of this state; Raft (see raft/)
decides the order in which operations are applied.  So `apply` must be a pure,
deterministic function of (state, op): no clocks, no randomness, no I/O.  Ids
that need to be fresh (a network's id, a request id) are chosen by the
proposer and carried in the op.

`apply` never raises.  It runs on PySyncObj's tick thread, where an exception
would stop (0.3.11) or endlessly retry (0.3.17) the whole cluster's progress.
Ops check every value before they mutate anything, so a refused op leaves no
trace; the edges (plugin, D-Bus) run the same checks (checks.py) first.

The ops themselves, one table with the version each arrived in, are in
ops.py, and their handlers in a module per domain: members, networks (and
their addresses), endpoints, groups, requests (the request memory).  The
records' shapes are in records.py.  Every op's cost is independent of the
state's size: addresses, endpoints and requests are found through dict
indexes, never by scanning.
"""

import hashlib
import json
import logging
from typing import Dict, List

from .. import checks
from ..errors import INTERNAL, INVALID, NOT_FOUND, UNAVAILABLE, ShoutdError
from . import endpoints as _endpoints
from . import ops
from . import requests as _requests
from .networks import VNI_MAX, VNI_MIN
from .ops import ADDRESSES, ENDPOINTS, EVERYTHING, GROUPS, MEMBERS, NETWORKS, OPS, STATE_VERSION, version_needed
from .records import BASE_VERSION, Data, Endpoint, Member, Network, empty, network_label, normalize, pruned, summary
from .rules import Halt, reject

log = logging.getLogger(__name__)

# Docker tells us a network is ours by the address space our IPAM reports.
ADDRESS_SPACE = "shoutd"

__all__ = ["ADDRESSES", "ADDRESS_SPACE", "BASE_VERSION", "ClusterState", "ENDPOINTS", "EVERYTHING", "GROUPS",
           "MEMBERS", "NETWORKS", "STATE_VERSION", "VNI_MAX", "VNI_MIN", "empty", "network_label", "pruned",
           "summary"]


def upgrade_message(version, what=None):
    """Why this host stopped applying, and what to do: `what` it met, when it is not a newer version."""
    met = "committed %s" % what if what else "runs state version %d" % version
    return ("upgrade this host: the cluster %s, and this shoutd runs up to state version %d. Nothing "
            "was applied past that point; the containers here keep their network as it was, and once a newer "
            "shoutd runs here it applies the rest" % (met, ops.STATE_VERSION))


class ClusterState:
    def __init__(self, data=None):
        self.halted = None                  # why this host stopped applying (see apply), or None
        version = data.get("version", BASE_VERSION) if isinstance(data, dict) else BASE_VERSION
        if isinstance(version, int) and version > ops.STATE_VERSION:
            # A snapshot written by a newer release: refused whole, as an op would be.
            self.halted = upgrade_message(version)
            data = None
        self.data: Data = normalize(data) if data is not None else empty()
        self.changed = set(EVERYTHING)      # parts changed since a follower last looked

    # -- reading ---------------------------------------------------------

    @property
    def version(self) -> int:
        """The state version the cluster runs (ops.py)."""
        return self.data["version"]

    @property
    def members(self) -> Dict[str, Member]:
        return self.data["members"]

    @property
    def networks(self) -> Dict[str, Network]:
        return self.data["networks"]

    @property
    def endpoints(self) -> Dict[str, Endpoint]:
        return self.data["endpoints"]

    @property
    def applied(self):
        """(number of ops applied, digest of them all): equal on hosts that applied the same log."""
        return self.data["log"]["applied"], self.data["log"]["digest"]

    def take_changes(self):
        """The parts changed since the last call."""
        changed, self.changed = self.changed, set()
        return changed

    def role(self, member) -> str:
        """"voter" or "replica" (raft/feed.py); before state version 6 every member votes."""
        voters = self.data["voters"]
        return "voter" if not voters or member in voters else "replica"

    def network_by_name(self, name):
        return next((n for n in self.networks.values() if n["name"] == name), None)

    def network_by_subnet(self, subnet):
        """The shoutd-allocated network of `subnet` (a swarm network's subnet is swarm's business)."""
        return next((n for n in self.networks.values() if n["subnet"] == subnet and "swarm" not in n), None)

    def network_by_swarm_id(self, swarm_id):
        return next((n for n in self.networks.values() if n.get("swarm") == swarm_id), None)

    def network_by_docker_id(self, node, docker_id):
        return next((n for n in self.networks.values()
                     if n["bindings"].get(node) == docker_id), None)

    def endpoints_of(self, net_id):
        net = self.networks.get(net_id)
        if net is None:
            return []
        return [self.endpoints[e] for e in net["endpoints"].values()]

    def member_label(self, node):
        m = self.members.get(node)
        return "host %s (%s)" % (m["hostname"], m["advertise"]) if m else "host %s" % node

    def in_use_message(self, net):
        """Why `net` cannot go: which hosts still have which containers on it."""
        where: Dict[str, List[str]] = {}
        for ep in self.endpoints_of(net["id"]):
            where.setdefault(ep["node"], []).append(ep["ip"])
        detail = "; ".join("%s: %s" % (self.member_label(n), ", ".join(sorted(ips)))
                           for n, ips in sorted(where.items()))
        return ("shoutd network %s still has containers attached on %s. Disconnect or remove them "
                "first (docker network disconnect / docker rm)" % (network_label(net), detail))

    def network(self, net_id) -> Network:
        """The network `net_id`, or a refusal that says it is gone."""
        net = self.networks.get(net_id) if isinstance(net_id, str) else None
        if net is None:
            reject("shoutd network %s does not exist (removed on another host?)" % (net_id,), NOT_FOUND)
        return net

    def drop_endpoint(self, ep):
        _endpoints.drop(self, ep)

    # -- applying --------------------------------------------------------

    def apply(self, op):
        """Apply one operation; return {"value": ...} or {"error", "kind"}.

        A host that cannot apply an op as the others do (an op it does not
        know, a state version it does not run) stops: from then on it applies
        nothing, and says why in `halted`.  Its ops counter and digest stay
        where it stopped, so the hosts that went on differ from it visibly.
        """
        if self.halted:
            return {"error": self.halted, "kind": UNAVAILABLE}
        name = op.get("op") if isinstance(op, dict) else None
        spec = OPS.get(name) if isinstance(name, str) else None
        if spec is None and isinstance(op, dict) and isinstance(name, str):
            return self._halt(Halt(self.version, "an operation this release does not know (%r)" % name))
        self._record(op)
        try:
            if spec is None:
                reject("malformed operation %r" % (op,))
            if spec.gated and version_needed(op) > self.version:
                reject("%s needs state version %d, and the cluster runs %d; nothing was changed"
                       % (name, version_needed(op), self.version), UNAVAILABLE)
            req = op.get("req")
            if req is not None:
                checks.own_id(req, "request id")
                remembered = self.data["requests"].get(req)
                if remembered == _requests.WITHDRAWN:
                    reject("request %s was withdrawn because it did not commit in time; nothing was changed"
                           % req, UNAVAILABLE)
                if remembered is not None:
                    return {"value": remembered["result"]}
            value = spec.apply(self, op)
            if req is not None and name != "withdraw":
                _requests.remember(self, req, {"op": name, "result": value})
            self.changed |= spec.touches
            return {"value": value}
        except Halt as halt:
            return self._halt(halt)
        except ShoutdError as e:
            return {"error": e.message, "kind": e.kind}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return {"error": "malformed %s operation: %s" % (name, e), "kind": INVALID}
        except Exception as e:  # noqa: BLE001 - see the module note: never raise
            log.exception("bug: operation %r failed", op)
            return {"error": "internal error applying %s: %s (a bug in shoutd; please report it)"
                    % (name, e), "kind": INTERNAL}

    def _halt(self, halt):
        self.halted = upgrade_message(halt.version, halt.what)
        log.error("stopped applying the cluster's log: %s", self.halted)
        self.changed |= EVERYTHING
        return {"error": self.halted, "kind": UNAVAILABLE}

    def _record(self, op):
        """Fold every op, refused or not, into the digest of the applied log."""
        try:
            text = json.dumps(op, sort_keys=True, separators=(",", ":"), default=repr)
        except (TypeError, ValueError):
            text = repr(op)
        entry = self.data["log"]
        entry["applied"] += 1
        entry["digest"] = hashlib.blake2b((entry["digest"] + text).encode("utf-8", "replace"),
                                          digest_size=8).hexdigest()
