"""A minimal client for the local Docker engine API: networks, and shoutd's managed plugin.

shoutd needs five calls of Docker's API to mirror cluster networks into the
local engine, and five more to install its managed plugin (managed.py); a
full SDK would be a heavy dependency for that, and aiohttp already speaks
HTTP over unix sockets.
"""

import json
import logging

import aiohttp

from ..errors import CONFLICT, NOT_FOUND, UNAVAILABLE, ShoutdError

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, socket_path, timeout=60.0):
        self.socket_path = socket_path
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = None

    async def _request(self, method, path, body=None, params=None, tar=None):
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.socket_path),
                                                  timeout=self._timeout)
        extra = {"json": body} if tar is None else {"data": tar, "headers": {"Content-Type": "application/x-tar"}}
        try:
            async with self._session.request(method, "http://docker" + path, params=params, **extra) as resp:
                text = await resp.text()
                data = json.loads(text) if text.strip() else None
                if resp.status >= 400:
                    message = data.get("message", text) if isinstance(data, dict) else text
                    raise ShoutdError("Docker refused %s %s: %s" % (method, path, message.strip()),
                                      NOT_FOUND if resp.status == 404 else CONFLICT)
                return data
        except (aiohttp.ClientError, OSError, ValueError) as e:
            raise ShoutdError("cannot reach Docker at %s: %s; is dockerd running?"
                              % (self.socket_path, e), UNAVAILABLE) from None

    async def networks(self, driver):
        filters = json.dumps({"driver": [driver]})
        return await self._request("GET", "/networks", params={"filters": filters}) or []

    async def inspect_network(self, network_id):
        return await self._request("GET", "/networks/" + network_id) or {}

    async def create_network(self, name, driver, subnet, gateway, identity):
        """Create `name` as the creating host's engine holds it (`identity`: see checks.identity)."""
        body = {"Name": name, "Driver": driver, "CheckDuplicate": True,
                "Options": identity.get("options", {}), "Labels": identity.get("labels", {}),
                "Internal": identity.get("internal", False), "Attachable": identity.get("attachable", False),
                "IPAM": {"Driver": driver, "Options": identity.get("ipam_options", {}),
                         "Config": [{"Subnet": subnet, "Gateway": gateway}]}}
        return await self._request("POST", "/networks/create", body)

    async def remove_network(self, network_id):
        await self._request("DELETE", "/networks/" + network_id)

    async def plugin(self, name):
        """The managed plugin `name` as Docker shows it, or None."""
        try:
            return await self._request("GET", "/plugins/%s/json" % name)
        except ShoutdError as e:
            if e.kind == NOT_FOUND:
                return None
            raise

    async def create_plugin(self, name, tar):
        await self._request("POST", "/plugins/create", params={"name": name}, tar=tar)

    async def enable_plugin(self, name):
        await self._request("POST", "/plugins/%s/enable" % name, params={"timeout": "30"})

    async def disable_plugin(self, name):
        # Networks that use the plugin would refuse a plain disable; they find it again by name.
        await self._request("POST", "/plugins/%s/disable" % name, params={"force": "1"})

    async def remove_plugin(self, name):
        await self._request("DELETE", "/plugins/%s" % name, params={"force": "1"})

    async def close(self):
        if self._session is not None:
            await self._session.close()
