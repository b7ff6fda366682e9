"""Docker's libnetwork remote API (NetworkDriver + IpamDriver) over a unix socket.

A thin adapter: each route reads its request (its shape is in api.py), calls
one Service method and shapes the reply.  All error handling lives in `_endpoint`: a bad body, a
missing field or a ShoutdError becomes a non-200 reply whose JSON carries the
message in `Err` (read by Docker's plugin client and the NetworkDriver API)
and `Error` (read by the IpamDriver API), never a traceback.

With `"authorization-plugins": ["shoutd"]` in Docker's daemon.json, the same
socket also answers Docker's AuthZ calls, to refuse `docker network rm` of a
network still used on other hosts (see Service.authorize).

Two tables of routes, one per socket.  The legacy socket (`-d shoutd`) has
scope "local" with connectivity scope "global": "global" scope makes Docker
demand swarm, while local scope with our own cluster-wide IPAM is what works
on current Docker without swarm.  The managed socket, which the managed
plugin `darkkitchen/shoutd` relays to (managed.py), serves swarm networks:
scope "global", AllocateNetwork and FreeNetwork, and swarm's IPAM.
"""

import json
import logging
import time

from aiohttp import web

from ..errors import INTERNAL, INVALID, UNAVAILABLE, ShoutdError
from ..service import MULTICAST
from ..state import ADDRESS_SPACE
from . import api

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
ROUTE_CONNECTED = 1   # libnetwork's types.CONNECTED: a route with no next hop
MAX_BODY = 1 << 20    # Docker's largest plugin request is a few KiB
_STATUS = {INVALID: 400, UNAVAILABLE: 503, INTERNAL: 500}
# aiohttp >= 3.9 wants typed keys; Debian bookworm's 3.8 has none.
SERVICE = web.AppKey("service", object) if hasattr(web, "AppKey") else "service"


def _reply(body, status=200):
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _decode(raw):
    """The request body as a dict, or a ShoutdError saying what is wrong with it."""
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (UnicodeDecodeError, ValueError) as e:
        raise ShoutdError("request body is not valid JSON (%s)" % e) from None
    except RecursionError:
        raise ShoutdError("request body is nested too deeply to be a Docker plugin request") from None
    if not isinstance(body, dict):
        raise ShoutdError("request body must be a JSON object")
    return body


def _endpoint(fn, needs_state):
    async def handler(request):
        method = request.path.lstrip("/")
        try:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                msg = "request body is larger than %d bytes; no Docker plugin request is" % MAX_BODY
                log.warning("%s refused: %s", method, msg)
                return _reply({"Err": msg, "Error": msg}, 413)
            body = _decode(raw)
            log.debug("%s %s", method, body)
            started = time.monotonic()
            if needs_state:
                await request.app[SERVICE].cluster.until_caught_up()
            answer = await fn(request.app[SERVICE], body)
            # Docker waits on every call; this is where `docker run` time goes.
            log.debug("%s answered in %.1f ms", method, (time.monotonic() - started) * 1000)
            return _reply(answer)
        except ShoutdError as e:
            log.warning("%s refused: %s", method, e)
            return _reply({"Err": e.message, "Error": e.message}, _STATUS.get(e.kind, 409))
        except Exception as e:  # noqa: BLE001 - the boundary: never a traceback to Docker
            log.exception("bug: %s failed", method)
            msg = "shoutd internal error in %s: %s (see the shoutd log)" % (method, e)
            return _reply({"Err": msg, "Error": msg}, 500)
    return handler


async def activate(service, body):
    return {"Implements": ["NetworkDriver", "IpamDriver", "authz"]}


async def capabilities(service, body):
    # GwAllocChecker: Docker 28+ then sends GwAllocCheck before it reserves a pool.
    return {"Scope": "local", "ConnectivityScope": "global", "GwAllocChecker": True}


async def gateway_check(service, body):
    skip4, skip6 = service.driver.gateway_check(api.parse(api.GwAllocCheck, body).Options)
    return {"SkipIPv4": skip4, "SkipIPv6": skip6}


def network_calls(handler):
    """CreateNetwork and DeleteNetwork, served by `handler(service)`: the driver, or swarm's follower."""
    async def create(service, body):
        req = api.parse(api.CreateNetwork, body)
        await handler(service).create_network(req.NetworkID, req.IPv4Data, req.Options)
        return {}

    async def delete(service, body):
        await handler(service).delete_network(api.parse(api.DeleteNetwork, body).NetworkID)
        return {}
    return create, delete


create_network, delete_network = network_calls(lambda service: service.driver)
swarm_create_network, swarm_delete_network = network_calls(lambda service: service.swarm)


async def create_endpoint(service, body):
    req = api.parse(api.CreateEndpoint, body)
    iface = await service.driver.create_endpoint(req.NetworkID, req.EndpointID, req.Interface, req.Options)
    return {"Interface": iface} if iface else {}


async def delete_endpoint(service, body):
    req = api.parse(api.Endpoint, body)
    await service.driver.delete_endpoint(req.NetworkID, req.EndpointID)
    return {}


async def endpoint_info(service, body):
    req = api.parse(api.Endpoint, body)
    return {"Value": service.driver.endpoint_info(req.NetworkID, req.EndpointID)}


async def join(service, body):
    req = api.parse(api.Join, body)
    peer = await service.driver.join(req.NetworkID, req.EndpointID, req.SandboxKey)
    # No Gateway: a shoutd network is a plain L2 segment.  Docker then adds
    # docker_gwbridge for the default route, so multicast is pinned to us.
    return {"InterfaceName": {"SrcName": peer, "DstPrefix": "eth"},
            "StaticRoutes": [{"Destination": MULTICAST, "RouteType": ROUTE_CONNECTED}]}


async def leave(service, body):
    req = api.parse(api.Endpoint, body)
    await service.driver.leave(req.NetworkID, req.EndpointID)
    return {}


async def nothing(service, body):
    return {}


async def swarm_only(service, body):
    raise ShoutdError("the shoutd driver serves networks without swarm; for swarm networks use the managed "
                      "plugin: shoutdctl plugin install, then docker network create -d darkkitchen/shoutd")


async def swarm_activate(service, body):
    return {"Implements": ["NetworkDriver"]}


async def swarm_capabilities(service, body):
    return {"Scope": "global", "ConnectivityScope": "global"}


async def allocate_network(service, body):
    req = api.parse(api.AllocateNetwork, body)
    return {"Options": await service.swarm.allocate(req.NetworkID, req.Options, req.IPv4Data, req.IPv6Data)}


async def free_network(service, body):
    await service.swarm.free(api.parse(api.DeleteNetwork, body).NetworkID)
    return {}


async def authz_request(service, body):
    # Fail open: shoutd authorizes only to protect its own networks, and a
    # request it cannot read is no request to remove one.
    method, uri = body.get("RequestMethod"), body.get("RequestUri")
    if not isinstance(method, str) or not isinstance(uri, str):
        return {"Allow": True}
    allow, message = service.authz.authorize(method, uri)
    return {"Allow": allow, "Msg": message}


async def authz_response(service, body):
    return {"Allow": True}


async def ipam_capabilities(service, body):
    return {"RequiresMACAddress": False}


async def address_spaces(service, body):
    return {"LocalDefaultAddressSpace": ADDRESS_SPACE, "GlobalDefaultAddressSpace": ADDRESS_SPACE}


async def request_pool(service, body):
    req = api.parse(api.RequestPool, body)
    pool_id, pool = await service.ipam.request_pool(req.Pool, req.SubPool, req.Options, req.V6)
    return {"PoolID": pool_id, "Pool": pool, "Data": {}}


async def release_pool(service, body):
    await service.ipam.release_pool(api.parse(api.ReleasePool, body).PoolID)
    return {}


async def request_address(service, body):
    req = api.parse(api.RequestAddress, body)
    address = await service.ipam.request_address(req.PoolID, req.Address, req.Options)
    return {"Address": address, "Data": {}}


async def release_address(service, body):
    req = api.parse(api.ReleaseAddress, body)
    await service.ipam.release_address(req.PoolID, req.Address)
    return {}


ROUTES = {
    "Plugin.Activate": activate,
    "NetworkDriver.GetCapabilities": capabilities,
    "NetworkDriver.GwAllocCheck": gateway_check,
    "NetworkDriver.CreateNetwork": create_network,
    "NetworkDriver.DeleteNetwork": delete_network,
    "NetworkDriver.CreateEndpoint": create_endpoint,
    "NetworkDriver.DeleteEndpoint": delete_endpoint,
    "NetworkDriver.EndpointOperInfo": endpoint_info,
    "NetworkDriver.Join": join,
    "NetworkDriver.Leave": leave,
    "NetworkDriver.DiscoverNew": nothing,
    "NetworkDriver.DiscoverDelete": nothing,
    # A shoutd network gives no gateway, so it has no external connectivity to program.  Docker 29
    # sends these only when an endpoint gains or loses the gateway role, Revoke before Leave; older
    # releases at every Join and Leave.  Either way they carry nothing to do, in any order.
    "NetworkDriver.ProgramExternalConnectivity": nothing,
    "NetworkDriver.RevokeExternalConnectivity": nothing,
    "NetworkDriver.AllocateNetwork": swarm_only,
    "NetworkDriver.FreeNetwork": swarm_only,
    "AuthZPlugin.AuthZReq": authz_request,
    "AuthZPlugin.AuthZRes": authz_response,
    "IpamDriver.GetCapabilities": ipam_capabilities,
    "IpamDriver.GetDefaultAddressSpaces": address_spaces,
    "IpamDriver.RequestPool": request_pool,
    "IpamDriver.ReleasePool": release_pool,
    "IpamDriver.RequestAddress": request_address,
    "IpamDriver.ReleaseAddress": release_address,
}


# The managed plugin's socket: swarm networks.  Endpoints and sandboxes are the same calls; no IPAM
# (swarm's allocates) and no AuthZ (swarm decides when its networks go).
SWARM_ROUTES = dict({name: fn for name, fn in ROUTES.items() if name.startswith("NetworkDriver.")}, **{
    "Plugin.Activate": swarm_activate,
    "NetworkDriver.GetCapabilities": swarm_capabilities,
    "NetworkDriver.CreateNetwork": swarm_create_network,
    "NetworkDriver.DeleteNetwork": swarm_delete_network,
    "NetworkDriver.AllocateNetwork": allocate_network,
    "NetworkDriver.FreeNetwork": free_network,
})


# Calls that decide from the cluster state wait until this host's copy is
# current.  Activation and capabilities must answer at once (Docker probes
# plugins with short timeouts), and AuthZ sees every Docker API call.
NEEDS_STATE = {name for name in ROUTES if name.startswith(("NetworkDriver.", "IpamDriver."))} - {
    "NetworkDriver.GetCapabilities", "NetworkDriver.GwAllocCheck", "NetworkDriver.DiscoverNew", "NetworkDriver.DiscoverDelete",
    "NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.RevokeExternalConnectivity",
    "NetworkDriver.AllocateNetwork", "NetworkDriver.FreeNetwork",
    "IpamDriver.GetCapabilities", "IpamDriver.GetDefaultAddressSpaces"}


async def _unknown(request):
    msg = "shoutd does not implement %s" % request.path.lstrip("/")
    return _reply({"Err": msg, "Error": msg}, 404)


def make_app(service, swarm=False):
    """The legacy plugin's API, or with `swarm` the managed plugin's."""
    app = web.Application(client_max_size=MAX_BODY)
    app[SERVICE] = service
    for name, fn in (SWARM_ROUTES if swarm else ROUTES).items():
        app.router.add_post("/" + name, _endpoint(fn, name in NEEDS_STATE))
    app.router.add_route("*", "/{tail:.*}", _unknown)
    return app
