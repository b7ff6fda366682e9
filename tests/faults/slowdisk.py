"""shoutd with a disk that a test can make slow: `python3 -m tests.faults.slowdisk SHOUTD-ARGS...`.

A test build, for the slow-disk nemesis: every fsync first waits as many
seconds as the file named by SHOUTD_TEST_FSYNC_DELAY says (0 or no file: no
wait), then really syncs.  That is what a host's disk does while dockerd
extracts an image onto it: 0.6 to 1.8 s per fsync (issue 12).  The wait
releases the GIL as a real fsync does.
"""

import os
import runpy
import sys
import time

_real_fsync = os.fsync


def _delay():
    try:
        with open(os.environ["SHOUTD_TEST_FSYNC_DELAY"]) as f:
            return float(f.read() or 0)
    except (KeyError, OSError, ValueError):
        return 0.0


def slow_fsync(fd):
    delay = _delay()
    if delay > 0:
        time.sleep(delay)  # the busy disk
    _real_fsync(fd)


if __name__ == "__main__":
    os.fsync = slow_fsync
    sys.argv[0] = "shoutd"
    runpy.run_module("shoutd", run_name="__main__", alter_sys=True)
