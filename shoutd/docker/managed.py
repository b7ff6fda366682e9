"""The managed (v2) plugin `darkkitchen/shoutd`, made from shoutd's own files and kept up to date.

Swarm networks accept only managed plugins (moby's cnmallocator,
`validatePluginDriver`).  This plugin is a relay (relay.py) and nothing else:
its root holds a copy of relay.py and empty mount points; the host's /usr is
bound read-only for Python, and the directory of the service's managed
socket is bound in (a mount setting, so that lab hosts can point it
elsewhere).  It is created with Docker's `POST /plugins/create` from a tar
made here: nothing is pulled from an image registry.

The plugin's description carries a digest of what went into it (the relay
and the config), so `install` can tell an up-to-date plugin from one to
replace, and running it twice changes nothing.  shoutd's release is not in
the digest: the relay only copies bytes, so upgrading shoutd leaves the
plugin, and the networks and tasks that use it, alone, unless the relay
itself changed.

The service installs it when it starts (`managed_plugin`, on by default), so
that after `apt install shoutd` nothing else is needed; `shoutdctl plugin
install` does the same by hand.
"""

import hashlib
import io
import json
import logging
import os
import tarfile

from .. import __version__
from ..errors import CONFLICT, ShoutdError

log = logging.getLogger(__name__)

NAME = "darkkitchen/shoutd"
REFERENCE = NAME + ":latest"           # how Docker lists it
SOCKET = "shoutd.sock"                 # the plugin's socket, under /run/docker/plugins in the plugin
SERVICE_DIR = "/run/shoutd"            # where the directory of the service's managed socket is, in the plugin
RUN_MOUNT = "run"                      # the mount whose source `--managed-socket` sets
RELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay.py")
# The plugin's root: mount points, and the links a merged-/usr Debian has, so the host's
# /usr/bin/python3 finds its loader and libraries.
DIRECTORIES = ("usr", "run/shoutd", "run/docker/plugins", "proc", "dev", "sys", "tmp", "etc")
LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


def config(managed_socket):
    """The plugin's config.json (Docker's plugin config, v1), relaying to the service at `managed_socket`."""
    service_dir, name = os.path.split(managed_socket)
    return {
        "description": "shoutd: multicast and broadcast across hosts, for swarm services",
        "documentation": "https://github.com/darkkitchen/shoutd",
        "entrypoint": ["/usr/bin/python3", "-I", "/shoutd-relay.py", "/run/docker/plugins/" + SOCKET,
                       SERVICE_DIR + "/" + name],
        "interface": {"types": ["docker.networkdriver/1.0"], "socket": SOCKET},
        "network": {"type": "host"},
        "mounts": [
            {"name": "usr", "description": "the host's Python", "source": "/usr", "destination": "/usr",
             "type": "bind", "options": ["rbind", "ro"]},
            {"name": RUN_MOUNT, "description": "the directory of shoutd's managed socket", "source": service_dir,
             "destination": SERVICE_DIR, "type": "bind", "options": ["rbind"], "settable": ["source"]},
        ],
        "linux": {"capabilities": []},
    }


def digest():
    """What a plugin made now would hold: the relay's bytes and the config's shape."""
    with open(RELAY, "rb") as f:
        relay = f.read()
    return hashlib.sha256(relay + b"\0" + json.dumps(config("/")).encode()).hexdigest()[:16]


def build(managed_socket):
    """The tar that `POST /plugins/create` takes: config.json and rootfs/."""
    conf = config(managed_socket)
    conf["description"] += " (made by shoutd %s, build %s)" % (__version__, digest())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name, data=None, kind=tarfile.REGTYPE, mode=0o644, target=""):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, target
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        add("config.json", json.dumps(conf, indent=1).encode())
        add("rootfs", kind=tarfile.DIRTYPE, mode=0o755)
        # Each directory once, parents first ("run" is the parent of two).
        for d in sorted({"/".join(d.split("/")[:i]) for d in DIRECTORIES for i in range(1, d.count("/") + 2)}):
            add("rootfs/" + d, kind=tarfile.DIRTYPE, mode=0o755)
        for link, target in LINKS.items():
            add("rootfs/" + link, kind=tarfile.SYMTYPE, mode=0o777, target=target)
        with open(RELAY, "rb") as f:
            add("rootfs/shoutd-relay.py", f.read())
    return buf.getvalue()


def _built_by_us(plugin):
    return "build %s)" % digest() in (plugin.get("Config") or {}).get("Description", "")


def _relays_to(plugin):
    """The managed socket a plugin relays to, as it was made (and maybe set since)."""
    conf = plugin.get("Config") or {}
    entry = (conf.get("Entrypoint") or [""])[-1]
    for mount in (plugin.get("Settings") or {}).get("Mounts") or []:
        if mount.get("Name") == RUN_MOUNT:
            return os.path.join(mount.get("Source") or "", os.path.basename(entry))
    return None


async def install(engine, managed_socket):
    """Create the plugin, or bring it up to date, and enable it; what was done, in words."""
    current = await engine.plugin(REFERENCE)
    if current is not None and _built_by_us(current) and _relays_to(current) == managed_socket:
        if not current.get("Enabled"):
            await engine.enable_plugin(REFERENCE)
            return "enabled %s (it was up to date)" % REFERENCE
        return "%s is up to date" % REFERENCE
    if current is not None:
        # Disabling a plugin that networks use needs force; they keep their driver's name and
        # find the new plugin under it.
        if current.get("Enabled"):
            await engine.disable_plugin(REFERENCE)
        await engine.remove_plugin(REFERENCE)
    await engine.create_plugin(REFERENCE, build(managed_socket))
    try:
        await engine.enable_plugin(REFERENCE)
    except ShoutdError as e:
        raise ShoutdError("%s; is shoutd running on this host (its managed socket is %s)?"
                          % (e, managed_socket), CONFLICT) from None
    done = "replaced" if current is not None else "created"
    log.info("plugin %s %s (shoutd %s)", REFERENCE, done, __version__)
    return "%s %s (shoutd %s)" % (done, REFERENCE, __version__)


async def remove(engine):
    current = await engine.plugin(REFERENCE)
    if current is None:
        return "%s is not installed" % REFERENCE
    if current.get("Enabled"):
        await engine.disable_plugin(REFERENCE)
    await engine.remove_plugin(REFERENCE)
    return "removed %s" % REFERENCE
