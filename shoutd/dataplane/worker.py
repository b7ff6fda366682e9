"""The one thread that talks netlink.

pyroute2 must not run on the asyncio loop (the sync IPRoute blocks it, and
0.9's refuses to run inside a loop), and its 0.7 NetNS forks, which deadlocks
in a process that has PySyncObj's thread.  So every kernel operation is a
plain function run here, one at a time, on a thread that owns one netlink
socket; the loop awaits the result.  Tests point the thread at a throwaway
network namespace with `netns=`.
"""

import asyncio
import concurrent.futures
import ctypes
import os

from .netlink import Netlink

CLONE_NEWNET = 0x40000000


def _enter_netns(path):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "setns(%s): %s" % (path, os.strerror(err)))
    finally:
        os.close(fd)


class Worker:
    def __init__(self, netns=None):
        self._nl = None
        self._netns = netns
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink",
                                                           initializer=self._start)

    def _start(self):
        if self._netns:
            _enter_netns(self._netns)   # setns moves only this thread
        self._nl = Netlink()

    def call(self, fn, *args):
        """Run fn(netlink, *args) on the worker thread and wait (for sync callers)."""
        return self._pool.submit(lambda: fn(self._nl, *args)).result()

    async def run(self, fn, *args):
        return await asyncio.wrap_future(self._pool.submit(lambda: fn(self._nl, *args)))

    def close(self):
        def stop():
            if self._nl is not None:
                self._nl.close()
        self._pool.submit(stop).result()
        self._pool.shutdown(wait=True)
