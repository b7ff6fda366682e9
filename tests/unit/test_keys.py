"""The cluster secret is stretched once per process, and Raft's key stays PySyncObj's own (raft/keys.py)."""

import hashlib

from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.encryptor import getEncryptor
from pysyncobj.utility import TcpUtility

from shoutd.raft import keys

from ..support import free_ports

SECRET = "a-cluster-secret-of-enough-length"


def test_raft_key_is_pysyncobjs_so_older_releases_still_understand_it():
    ours, theirs = keys.raft_fernet(SECRET), getEncryptor(SECRET)
    assert theirs.decrypt(ours.encrypt(b"append_entries")) == b"append_entries"
    assert ours.decrypt(theirs.encrypt(b"request_vote")) == b"request_vote"
    assert keys.raft_fernet(SECRET.encode()).decrypt(theirs.encrypt(b"x")) == b"x", "bytes and str alike"


def test_the_secret_is_stretched_once_for_raft_and_the_feed(monkeypatch):
    calls = []
    real = hashlib.pbkdf2_hmac
    monkeypatch.setattr(hashlib, "pbkdf2_hmac", lambda *a, **k: calls.append(a) or real(*a, **k))
    secret = "another-secret-only-this-test-uses"
    raft, feed = keys.raft_fernet(secret), keys.feed_key(secret)
    assert keys.raft_fernet(secret) is raft and keys.feed_key(secret) == feed
    assert len(calls) == 1 and calls[0][3] == keys.ROUNDS
    assert len(feed) == 32 and feed != keys.feed_key(SECRET), "each secret its own feed key"
    assert feed not in (keys._stretched(secret), keys._stretched(SECRET)), "the feed's key is not Raft's"


def test_syncobj_and_the_join_utility_take_their_key_from_here():
    """shoutd.raft installs the cache as it is imported."""
    assert TcpUtility(password=SECRET)._TcpUtility__connection.encryptor is keys.raft_fernet(SECRET)
    addr = "127.0.0.1:%d" % free_ports(1)[0]
    sync = SyncObj(addr, [], conf=SyncObjConf(password=SECRET, autoTick=False))
    try:
        assert sync.encryptor is keys.raft_fernet(SECRET)
    finally:
        sync.destroy()
