"""A loop that acts on the replicated state: one step per kick, and one per interval.

The kernel reconciler and the Docker network mirror act on the state the same
way: kicks coalesce (ten changes during one step cause one more step, not
ten), a periodic step repairs what changed behind our back, the loop survives
any one step's failure, and no step runs before the control plane says this
host's copy of the state is current (its `caught_up` event, see raft/node.py):
an empty, not-yet-replayed state must never read as "delete everything".
"""

import asyncio
import logging

log = logging.getLogger(__name__)


class KickLoop:
    def __init__(self, interval, caught_up):
        self.interval = interval
        self.caught_up = caught_up       # an asyncio.Event
        self._kick = asyncio.Event()
        self._task = None

    async def step(self, periodic):
        """One step; `periodic` is true when no kick came within the interval."""
        raise NotImplementedError

    def start(self):
        self._task = asyncio.create_task(self._loop())

    def kick(self, delay=0.0):
        """Ask for a step; call on the event loop."""
        if delay:
            asyncio.get_running_loop().call_later(delay, self._kick.set)
        else:
            self._kick.set()

    async def stop(self):
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _loop(self):
        while True:
            periodic = False
            try:
                await asyncio.wait_for(self._kick.wait(), self.interval)
            except asyncio.TimeoutError:
                periodic = True
            self._kick.clear()
            await self.caught_up.wait()
            try:
                await self.step(periodic)
            except Exception:  # noqa: BLE001 - one bad step must not end the loop
                log.exception("bug: %s step failed", type(self).__name__)
