"""shoutd with a disk that a test can make slow: `python3 -m tests.slowdisk SHOUTD-ARGS...`.

A test build, for the slow-disk nemeses (tests/faults, tests/e2e): every
fsync first waits as many seconds as the file named by
SHOUTD_TEST_FSYNC_DELAY says, then really syncs.  The file holds one number
(that many seconds), or two (a time drawn anew between them for each
fsync); no file or 0: no wait.  That is what a host's disk did while dockerd
extracted an image onto it: 0.6 to 1.8 s per fsync (issue 12).  The wait
releases the GIL as a real fsync does.
"""

import os
import random
import runpy
import sys
import time

_real_fsync = os.fsync


def _delay():
    try:
        with open(os.environ["SHOUTD_TEST_FSYNC_DELAY"]) as f:
            bounds = [float(x) for x in f.read().split()] or [0.0]
    except (KeyError, OSError, ValueError):
        return 0.0
    return random.uniform(bounds[0], bounds[-1])


def set_delay(path, low, high=None):
    """Make every fsync of the shoutd whose SHOUTD_TEST_FSYNC_DELAY is `path` take low (to high) seconds longer."""
    with open(path, "w") as f:
        f.write("%s %s" % (low, low if high is None else high))


def slow_fsync(fd):
    delay = _delay()
    if delay > 0:
        time.sleep(delay)  # the busy disk
    _real_fsync(fd)


if __name__ == "__main__":
    os.fsync = slow_fsync
    sys.argv[0] = "shoutd"
    runpy.run_module("shoutd", run_name="__main__", alter_sys=True)
