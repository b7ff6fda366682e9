"""Docker's AuthZ API (opt-in): refuse `docker network rm` of a network in use on other hosts.

Docker cannot be stopped from removing its copy of a network through the
network driver API (libnetwork honours only a ForbiddenError from
DeleteNetwork, which a remote driver cannot send), but an authorization
plugin can refuse the request itself.  Only `DELETE /networks/X` of a shoutd
network that has containers on other hosts is refused; everything else passes.
"""

import re
import urllib.parse

_NETWORK_DELETE = re.compile(r"^(?:/v[0-9.]+)?/networks/([^/]+)/?$")


class Authz:
    def __init__(self, cluster):
        self.cluster = cluster

    def authorize(self, method, uri):
        """(allow, message) for one Docker API request."""
        match = _NETWORK_DELETE.match(uri.split("?", 1)[0]) if method == "DELETE" else None
        if match is None:
            return True, ""
        ident = urllib.parse.unquote(match.group(1))
        state, node = self.cluster.state(), self.cluster.node
        net = state.network_by_name(ident) or state.network_by_docker_id(node, ident)
        if net is None:
            bound = [n for n in state.networks.values() if n["bindings"].get(node, "").startswith(ident)]
            net = bound[0] if len(bound) == 1 else None
        if net is None or not any(e["node"] != node for e in state.endpoints_of(net["id"])):
            return True, ""
        return False, state.in_use_message(net)
