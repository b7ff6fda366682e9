"""The daemon as a process, without a machine boot: netns hosts, a private bus, real shoutd.

Each host is a network namespace on a veth underlay; each bus is a private
dbus-daemon built like the system bus (deny by default, our policy file from
dbus/ included), so D-Bus behaves as it does for users.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POLICY_DIR = os.path.join(ROOT, "dbus")

if os.geteuid() != 0:
    pytest.skip("daemon tests need root (network namespaces)", allow_module_level=True)

SYSTEM_LIKE = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    {extra}
  </policy>
  <policy user="root"><allow own="*"/></policy>
  {include}
</busconfig>
"""


def sh(cmd, check=True, **kw):
    res = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, timeout=120, **kw)
    if check and res.returncode:
        raise AssertionError("%s: %s%s" % (cmd, res.stdout, res.stderr))
    return res


class Bus:
    def __init__(self, tmp, permissive=False):
        # Outside pytest's 0700 tmp dir, so an unprivileged caller can connect.
        self.dir = tempfile.mkdtemp(prefix="shoutd-bus-", dir="/run")
        os.chmod(self.dir, 0o755)
        self.path = os.path.join(self.dir, "bus")
        conf = os.path.join(tmp, "bus-%s.conf" % uuid.uuid4().hex[:6])
        extra = '<allow send_type="method_call"/>' if permissive else ""
        include = "" if permissive else "<includedir>%s</includedir>" % POLICY_DIR
        with open(conf, "w") as f:
            f.write(SYSTEM_LIKE.format(path=self.path, extra=extra, include=include))
        self.proc = subprocess.Popen(["dbus-daemon", "--config-file", conf, "--nofork", "--nopidfile"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while not os.path.exists(self.path):
            assert time.time() < deadline, "dbus-daemon did not start"
            time.sleep(0.05)
        os.chmod(self.path, 0o777)
        self.address = "unix:path=" + self.path

    def env(self):
        return dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.address, PYTHONPATH=ROOT)

    def busctl(self, *args, user=None, check=True):
        cmd = ["busctl", "--address=" + self.address] + list(args)
        if user:
            cmd = ["setpriv", "--reuid", str(user), "--regid", str(user), "--clear-groups"] + cmd
        return sh(cmd, check=check)

    def ctl(self, *args, user=None):
        cmd = [sys.executable, "-m", "shoutd.ctl"] + list(args)
        if user:
            cmd = ["setpriv", "--reuid", str(user), "--regid", str(user), "--clear-groups"] + cmd
        return sh(cmd, check=False, env=self.env(), cwd=ROOT)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Host:
    def __init__(self, underlay, n, tmp):
        self.name = "%s-%d" % (underlay, n)
        self.ip = "198.20.0.%d" % n
        self.dir = os.path.join(tmp, self.name)
        os.makedirs(self.dir)
        self.proc = None
        self.starts = 0
        self.log = os.path.join(self.dir, "shoutd.log")
        sh("ip netns add " + self.name)
        sh("ip link add %s type veth peer name eth0 netns %s" % (self.name, self.name))
        sh("ip link set %s master %s up" % (self.name, underlay))
        sh("ip -n %s addr add %s/24 dev eth0" % (self.name, self.ip))
        sh("ip -n %s link set eth0 up" % self.name)
        sh("ip -n %s link set lo up" % self.name)

    def start(self, secret_file, bus=None, peers=(), env=None, wrap=(), wait=True):
        cmd = ["nsenter", "--net=/run/netns/" + self.name] + list(wrap) + [
            sys.executable, "-m", "shoutd", "--config", os.path.join(self.dir, "none.conf"),
            "--advertise-address", self.ip, "--peers", ",".join(peers),
            "--plugin-socket", os.path.join(self.dir, "plugins/shoutd.sock"),
            "--docker-socket", os.path.join(self.dir, "no-docker.sock"),
            "--state-dir", os.path.join(self.dir, "state"), "--secret-file", secret_file]
        open(os.path.join(self.dir, "none.conf"), "w").close()
        full_env = bus.env() if bus else dict(os.environ, PYTHONPATH=ROOT)
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=full_env)
        self.starts += 1
        if wait:
            self.wait_log("registered;", times=self.starts)
            self.wait_log("D-Bus: " if bus else "registered;", times=self.starts)
        return self

    def wait_log(self, text, timeout=30, times=1):
        deadline = time.time() + timeout
        while True:
            with open(self.log) as f:
                content = f.read()
            if content.count(text) >= times:
                return content
            if self.proc.poll() is not None or time.time() > deadline:
                raise AssertionError("no %r in the log of %s:\n%s" % (text, self.name, content[-3000:]))
            time.sleep(0.1)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    world = getattr(item, "funcargs", {}).get("world")
    if report.when == "call" and report.failed and world is not None:
        for h in world.hosts:
            with open(h.log, errors="replace") as f:
                report.sections.append(("shoutd log of " + h.name, f.read()[-6000:]))


@pytest.fixture
def world(tmp_path):
    """Builds hosts and buses on demand and tears everything down.

    When the test fails, each host's shoutd log is attached to the report
    (see the hook above): a rare race leaves nothing else to go on.
    """
    underlay = "dt" + uuid.uuid4().hex[:5]
    sh("ip link add %s type bridge" % underlay)
    sh("ip link set %s up" % underlay)
    made = {"hosts": [], "buses": []}

    class World:
        tmp = str(tmp_path)
        hosts = made["hosts"]

        def host(self):
            h = Host(underlay, len(made["hosts"]) + 1, str(tmp_path))
            made["hosts"].append(h)
            return h

        def bus(self, permissive=False):
            b = Bus(str(tmp_path), permissive)
            made["buses"].append(b)
            return b

        def secret(self, name="secret"):
            path = os.path.join(str(tmp_path), name)
            with open(path, "w") as f:
                f.write(secrets.token_hex(24))
            os.chmod(path, 0o600)
            return path
    try:
        yield World()
    finally:
        for h in made["hosts"]:
            h.stop()
            sh("ip netns del " + h.name, check=False)
        for b in made["buses"]:
            b.stop()
        sh("ip link del " + underlay, check=False)


def status(bus):
    """Status() as a dict, through busctl's JSON output."""
    out = bus.busctl("--json=short", "call", "org.darkkitchen.Shoutd", "/org/darkkitchen/Shoutd",
                     "org.darkkitchen.Shoutd", "Status").stdout
    data = json.loads(out)["data"][0]
    return {k: v["data"] for k, v in data.items()}
