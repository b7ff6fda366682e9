"""Starting again in place (shoutd/reexec.py): same PID, and the sockets systemd passed still at fd 3 on."""

import os
import socket
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = textwrap.dedent("""
    import os, socket, sys
    sys.path.insert(0, sys.argv[1])
    from shoutd import reexec
    if os.environ.get("ROUND") == "2":
        s = socket.socket(fileno=3)
        print("again", os.getpid(), os.environ["LISTEN_PID"] == str(os.getpid()), os.environ["LISTEN_FDS"],
              s.getsockname(), flush=True)
        sys.exit(0)
    print("first", os.getpid(), flush=True)
    reexec.keep_activation(int(os.environ["LISTEN_FDS"]))
    for var in ("LISTEN_PID", "LISTEN_FDS"):
        os.environ.pop(var, None)               # as daemon.activated_sockets does
    socket.socket(fileno=3).close()             # as aiohttp does with its copy on the way out
    os.environ["ROUND"] = "2"
    reexec.again()
""")


def test_the_daemon_starts_again_with_the_same_pid_and_the_passed_socket(tmp_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "plugin.sock"))
    listener.listen(1)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, LISTEN_FDS="1")
    # The child finds the socket at fd 3, as systemd passes it.
    res = subprocess.run([sys.executable, str(script), ROOT], env=env, capture_output=True, text=True, timeout=60,
                         pass_fds=[listener.fileno(), 3], preexec_fn=lambda: os.dup2(listener.fileno(), 3))
    assert res.returncode == 0, res.stderr
    first, again = res.stdout.split("\n")[:2]
    assert first.split()[1] == again.split()[1], "the same PID"
    assert again.split()[2:4] == ["True", "1"], again
    assert str(tmp_path / "plugin.sock") in again
