"""The cluster secret, stretched once per process: Raft's key and the feed's both come from it.

Stretching (PBKDF2, 100,000 rounds of SHA-256) is what makes a recorded
conversation costly to guess the secret against, and so it is slow on
purpose: 30 to 50 ms of CPU, holding the GIL.  PySyncObj stretches the
password again for every SyncObj it builds and every TcpUtility it opens (a
voter adding dozens of hosts at once opens two per host), and a host builds
several SyncObjs in its life (its cluster of one, the cluster it joins,
again when promoted), and the replica feed needs a key as well.  Here the
secret is stretched once per process, and:
- Raft's Fernet is exactly PySyncObj's (its salt, rounds and encoding), so
  hosts of older releases still understand this one; `install()` has
  PySyncObj's SyncObj and TcpUtility take it from here.
- The feed's key is an HMAC of the same stretched secret under a label of its
  own: as costly to guess against as Raft's, and unrelated to it.
"""

import base64
import functools
import hashlib
import hmac

from cryptography.fernet import Fernet
from pysyncobj import encryptor as pysyncobj_encryptor
from pysyncobj import syncobj as pysyncobj_syncobj
from pysyncobj import utility as pysyncobj_utility

ROUNDS = 100_000                   # PySyncObj's (encryptor.getEncryptor)
_FEED_LABEL = b"shoutd replica feed"


@functools.lru_cache(maxsize=4)
def _stretched(secret) -> bytes:
    raw = secret if isinstance(secret, bytes) else secret.encode("utf-8")
    return hashlib.pbkdf2_hmac("sha256", raw, pysyncobj_encryptor.SALT, ROUNDS)


@functools.lru_cache(maxsize=4)
def raft_fernet(secret) -> Fernet:
    """The Fernet PySyncObj's getEncryptor(secret) makes; it keeps no state between messages, so one serves all."""
    return Fernet(base64.urlsafe_b64encode(_stretched(secret)))


@functools.lru_cache(maxsize=4)
def feed_key(secret) -> bytes:
    """The replica feed's master key (channel.py derives each session's key from it)."""
    return hmac.new(_stretched(secret), _FEED_LABEL, hashlib.sha256).digest()


def install():
    """Have every SyncObj and TcpUtility made from now on take its Fernet from raft_fernet."""
    pysyncobj_syncobj.getEncryptor = raft_fernet
    pysyncobj_utility.getEncryptor = raft_fernet
