"""The Docker plugin calls shoutd reads, one typed request shape per call.

Docker's remote network driver and IPAM APIs (moby's drivers/remote/api and
ipams/remote/api) are JSON objects whose fields are named after Go structs.
Each shape below lists what one call carries and shoutd reads, with Docker's
field names, so the wire format is written down in one place; `parse` checks
each field's presence and JSON type and says which is wrong, in the words
Docker will show the user.  Values are checked further in the service
(checks.py): here only their shape.
"""

from dataclasses import MISSING, dataclass, field, fields

from ..errors import ShoutdError

_TYPE_NAMES = {str: "a string", list: "a list", dict: "an object", bool: "true or false"}


def _optional(kind):
    return field(default_factory=kind)


@dataclass
class CreateNetwork:
    NetworkID: str
    IPv4Data: list = _optional(list)
    Options: dict = _optional(dict)


@dataclass
class AllocateNetwork:
    """Swarm's leading manager, once per swarm network: IPv4Data is what swarm's IPAM chose."""
    NetworkID: str
    Options: dict = _optional(dict)
    IPv4Data: list = _optional(list)
    IPv6Data: list = _optional(list)


@dataclass
class GwAllocCheck:
    """Docker 28+, before it reserves a network's pools: the options CreateNetwork will carry."""
    Options: dict = _optional(dict)


@dataclass
class DeleteNetwork:
    NetworkID: str


@dataclass
class CreateEndpoint:
    NetworkID: str
    EndpointID: str
    Interface: dict = _optional(dict)
    Options: dict = _optional(dict)


@dataclass
class Endpoint:
    """DeleteEndpoint, EndpointOperInfo and Leave name an endpoint and nothing else."""
    NetworkID: str
    EndpointID: str


@dataclass
class Join:
    NetworkID: str
    EndpointID: str
    SandboxKey: str = ""


@dataclass
class RequestPool:
    Pool: str = ""
    SubPool: str = ""
    Options: dict = _optional(dict)
    V6: bool = False


@dataclass
class ReleasePool:
    PoolID: str


@dataclass
class RequestAddress:
    PoolID: str
    Address: str = ""
    Options: dict = _optional(dict)


@dataclass
class ReleaseAddress:
    PoolID: str
    Address: str


def parse(shape, body):
    """An instance of `shape` from a decoded JSON object, or a ShoutdError naming the bad field."""
    values = {}
    for f in fields(shape):
        value = body.get(f.name)
        required = f.default is MISSING and f.default_factory is MISSING
        if value is None or value == "":
            if required:
                raise ShoutdError("request is missing %s" % f.name)
            continue
        if not isinstance(value, f.type) or (f.type is not bool and isinstance(value, bool)):
            raise ShoutdError("%s must be %s" % (f.name, _TYPE_NAMES[f.type]))
        values[f.name] = value
    return shape(**values)
