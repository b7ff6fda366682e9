"""An authenticated, encrypted channel for JSON messages between hosts, on asyncio streams.

The replica feed (feed.py) carries the cluster state to hosts outside Raft,
and their writes back.  PySyncObj's transport pickles what it receives, so it
is no place for a new protocol; this channel never unpickles, and opens
nothing that does not prove the cluster secret:
- each side first sends a magic string and a random nonce in the clear;
- both derive the session key from the cluster secret and both nonces
  (HMAC-SHA256 under the feed's key, stretched once per process: keys.py), so
  a frame recorded in one session means nothing in another;
- every frame after that is sealed with AES-GCM under a counter of its
  direction: a frame replayed, dropped, reordered or sent back to its sender
  fails to open, and the channel closes.
Frames are length-prefixed.  A frame that announces more than MAX_FRAME, or
any frame before the other side's nonce, ends the channel before anything is
buffered or parsed.
"""

import asyncio
import hashlib
import hmac
import json
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import keys

MAGIC = b"shoutd-feed/1\n"
NONCE = 16
MAX_FRAME = 64 << 20          # a snapshot of a big state is a few MiB
HANDSHAKE_TIMEOUT = 5.0       # seconds for the other side's nonce and first sealed frame
_HEADER = struct.Struct("!I")


class ChannelError(Exception):
    """The other side is not a member, broke the protocol, or went away."""


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


class Channel:
    """One end of an open channel: `send` and `receive` JSON objects."""

    def __init__(self, reader, writer, key, initiator):
        self._reader, self._writer = reader, writer
        self._aead = AESGCM(key)
        self._out_tag, self._in_tag = (b"c", b"s") if initiator else (b"s", b"c")
        self._sent = self._received = 0
        self.peer = writer.get_extra_info("peername")
        self._heard = 0.0           # loop time of the last frame, or of the first wait for one
        self._watch = None          # the one timer that finds a silent peer (see receive)
        self._timeout = None
        self._silent = None         # why the watch closed the channel

    @classmethod
    async def open(cls, reader, writer, secret, initiator, timeout=HANDSHAKE_TIMEOUT):
        """Exchange nonces and derive the session key; the first `receive` then proves the other side."""
        mine = os.urandom(NONCE)
        writer.write(MAGIC + mine)
        try:
            await asyncio.wait_for(writer.drain(), timeout)
            hello = await asyncio.wait_for(reader.readexactly(len(MAGIC) + NONCE), timeout)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, OSError) as e:
            raise ChannelError("no handshake: %s" % (type(e).__name__,)) from None
        if not hello.startswith(MAGIC):
            raise ChannelError("not a shoutd replica feed (wrong port, or an older shoutd there)")
        theirs = hello[len(MAGIC):]
        client, server = (mine, theirs) if initiator else (theirs, mine)
        key = hmac.new(keys.feed_key(secret), b"session" + client + server, hashlib.sha256).digest()
        return cls(reader, writer, key, initiator)

    @staticmethod
    def _nonce(tag, counter):
        return tag + counter.to_bytes(11, "big")

    def send(self, message: dict) -> None:
        """Queue one message; the caller drains (see `backlog`)."""
        self.send_encoded(encode(message))

    def send_encoded(self, *datas: bytes) -> None:
        """Queue messages already encoded (`encode`: one encoding for many channels), in one write."""
        frames: list = []
        for data in datas:
            sealed = self._aead.encrypt(self._nonce(self._out_tag, self._sent), data, None)
            self._sent += 1
            frames += (_HEADER.pack(len(sealed)), sealed)
        self._writer.write(b"".join(frames))

    async def drain(self):
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as e:
            raise ChannelError("connection lost: %s" % e) from None

    def backlog(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self._writer.transport.get_write_buffer_size()

    async def receive(self, timeout=None) -> dict:
        """The next message; ChannelError if none comes within `timeout` seconds of the last one.

        Every replica receives every op, so this is the hottest await a
        replica has: rather than a timer per frame (wait_for even makes a
        task), one timer per channel looks at when a frame last came.
        """
        loop = asyncio.get_running_loop()
        self._timeout = timeout
        if timeout is not None and self._watch is None:
            self._heard = loop.time()
            self._watch = loop.call_later(timeout, self._look)
        try:
            header = await self._reader.readexactly(_HEADER.size)
            (size,) = _HEADER.unpack(header)
            if size > MAX_FRAME:
                raise ChannelError("a frame of %d bytes announced (at most %d)" % (size, MAX_FRAME))
            sealed = await self._reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            raise ChannelError(self._silent or "connection closed") from None
        self._heard = loop.time()
        try:
            data = self._aead.decrypt(self._nonce(self._in_tag, self._received), sealed, None)
        except InvalidTag:
            raise ChannelError("a frame that does not open with the cluster secret "
                               "(a different secret there, or not a member)") from None
        self._received += 1
        try:
            message = json.loads(data)
        except ValueError:
            raise ChannelError("a sealed frame that is not JSON") from None
        if not isinstance(message, dict):
            raise ChannelError("a message that is not an object")
        return message

    def _look(self):
        self._watch = None
        timeout = self._timeout                 # the latest receive's
        if timeout is None:
            return
        quiet = asyncio.get_running_loop().time() - self._heard
        if quiet < timeout:
            self._watch = asyncio.get_running_loop().call_later(timeout - quiet, self._look)
            return
        self._silent = "silent for %gs" % timeout
        self._writer.transport.abort()        # the pending read ends, and receive says why

    def close(self):
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._writer.close()
