"""Hosts that run the real shoutd in network namespaces, without Docker and without a boot.

Used by tests/daemon (D-Bus, systemd pieces) and tests/faults (nemeses).
Each host is a network namespace with a veth leg on an underlay bridge; its
shoutd runs in that namespace with its own state directory and plugin
socket.  Each bus is a private dbus-daemon built like the system bus (deny by
default, our policy file from dbus/ included), so D-Bus behaves as it does
for users.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid

from .support import busctl_json, docker_id, sh, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICY_DIR = os.path.join(ROOT, "dbus")
BUS_CALL = ["call", "org.darkkitchen.Shoutd", "/org/darkkitchen/Shoutd", "org.darkkitchen.Shoutd"]

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


def as_user(uid, cmd):
    """`cmd` run as `uid` (no groups), or as is when uid is None."""
    return ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups"] + cmd if uid else cmd


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
        wait_for(lambda: os.path.exists(self.path), timeout=10, interval=0.05, what="dbus-daemon's socket")
        os.chmod(self.path, 0o777)
        self.address = "unix:path=" + self.path

    def env(self):
        return dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.address, PYTHONPATH=ROOT)

    def busctl(self, *args, user=None, check=True):
        return sh(as_user(user, ["busctl", "--address=" + self.address] + list(args)), check=check)

    def ctl(self, *args, user=None):
        return sh(as_user(user, [sys.executable, "-m", "shoutd.ctl"] + list(args)), check=False, env=self.env(),
                  cwd=ROOT)

    def status(self):
        """Status() as a dict, through busctl's JSON output."""
        return busctl_json(self.busctl("--json=short", *BUS_CALL, "Status").stdout)

    def network(self, name):
        return busctl_json(self.busctl("--json=short", *BUS_CALL, "Network", "s", name).stdout)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


# The release before this one, for upgrade tests: shoutd 0.2.0.
PREVIOUS = "09c8a760aeb1200d61f1a3d937631beb1dacc63b"


def previous_tree(tmp):
    """The previous release's shoutd package, exported from this repository's history (for Host.start's tree)."""
    out = os.path.join(tmp, "previous")
    os.makedirs(out, exist_ok=True)
    archive = subprocess.run(["git", "-C", ROOT, "archive", PREVIOUS, "shoutd"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", out], input=archive.stdout, check=True)
    return out


class PluginError(Exception):
    def __init__(self, status, message):
        super().__init__("%s %s" % (status, message))
        self.status = status
        self.message = message


class NotSent(OSError):
    """The plugin socket did not accept the connection: the request never reached shoutd."""


def plugin_call(path, method, body=b"", timeout=30):
    """One HTTP POST over the unix socket, as Docker's plugin client sends it: (status, reply).

    Raises NotSent if the request never got out, any other OSError (or a
    ValueError for a reply that is not HTTP) if it did and no answer came.
    """
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except OSError as e:
            raise NotSent(e.errno, "not sent: %s" % e) from None
        s.sendall(b"POST /%s HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (method.encode(), len(body), body))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    try:
        return int(head.split()[1]), json.loads(payload)
    except (IndexError, ValueError):
        raise ValueError("no plugin reply in %r" % data[:200]) from None


class Host:
    """One netns host running shoutd.  `n` picks its underlay address."""

    def __init__(self, underlay, n, tmp, subnet="198.20.0"):
        self.name = "%s-%d" % (underlay, n)
        self.n = n
        self.ip = "%s.%d" % (subnet, n)
        self.member = "%s:7380" % self.ip
        self.dir = os.path.join(tmp, self.name)
        os.makedirs(self.dir)
        self.proc = None
        self.run_log_start = 0
        self.bus = None
        self.log = os.path.join(self.dir, "shoutd.log")
        self.socket = os.path.join(self.dir, "plugins/shoutd.sock")
        sh("ip netns add " + self.name)
        sh("ip link add %s type veth peer name eth0 netns %s" % (self.name, self.name))
        sh("ip link set %s master %s up" % (self.name, underlay))
        sh("ip -n %s addr add %s/24 dev eth0" % (self.name, self.ip))
        sh("ip -n %s link set eth0 up" % self.name)
        sh("ip -n %s link set lo up" % self.name)

    def netns(self, cmd, check=True):
        return sh("ip netns exec %s %s" % (self.name, cmd), check=check)

    def start(self, secret_file, bus=None, peers=(), env=None, wrap=(), wait=True, extra=(), module="shoutd",
              tree=None):
        """Start shoutd from this repository, or from `tree` (a directory holding another release's shoutd/)."""
        self.bus = bus or self.bus
        cmd = ["nsenter", "--net=/run/netns/" + self.name] + list(wrap) + [
            sys.executable, "-m", module, "--config", os.path.join(self.dir, "none.conf"),
            "--advertise-address", self.ip, "--peers", ",".join(peers),
            "--plugin-socket", self.socket,
            "--docker-socket", os.path.join(self.dir, "no-docker.sock"),
            "--state-dir", os.path.join(self.dir, "state"), "--secret-file", secret_file] + list(extra)
        if tree is None:        # a socket of its own (older releases, run from `tree`, have no such flag)
            cmd += ["--managed-socket", os.path.join(self.dir, "managed.sock")]
        with open(os.path.join(self.dir, "none.conf"), "w") as f:
            # SHOUTD_TEST_LOG_LEVEL=debug shows each pre-vote, for example, when a nemesis test fails.
            f.write("[shoutd]\nlog_level = %s\n" % os.environ.get("SHOUTD_TEST_LOG_LEVEL", "info"))
        full_env = self.bus.env() if self.bus else dict(os.environ, PYTHONPATH=ROOT)
        full_env.update(env or {})
        if tree is not None:
            full_env["PYTHONPATH"] = tree     # and run there: `python -m` looks in the working directory first
        # What this run logs starts here: an earlier run may have been killed before it registered.
        self.run_log_start = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=full_env,
                                     cwd=tree)
        if wait:
            self.wait_registered()
            if self.bus:
                self.wait_log("D-Bus: ", this_run=True)
        return self

    def wait_registered(self, timeout=30):
        return self.wait_log("registered;", timeout=timeout, this_run=True)

    def wait_log(self, text, timeout=30, times=1, this_run=False):
        """Until `text` appears `times` times in the log (only in what the current run wrote, if `this_run`)."""
        def seen():
            if self.proc.poll() is not None:
                raise AssertionError("shoutd on %s exited before %r:\n%s" % (self.name, text, self.read_log()[-3000:]))
            return self.read_log(since=self.run_log_start if this_run else 0).count(text) >= times
        try:
            wait_for(seen, timeout=timeout, interval=0.1)
        except AssertionError as e:
            if "exited" in str(e):
                raise
            raise AssertionError("no %r in the log of %s:\n%s" % (text, self.name, self.read_log()[-3000:])) from None
        return self.read_log()

    def read_log(self, since=0):
        """The log from byte `since` on."""
        with open(self.log, "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.running():
            self.proc.send_signal(sig)

    def kill(self):
        """kill -9: no goodbye, the kernel data plane stays."""
        if self.running():
            self.proc.kill()
            self.proc.wait(30)

    def stop(self):
        if self.running():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def plugin(self, method, body=None, timeout=30):
        """A plugin call; returns the reply or raises PluginError."""
        status, reply = plugin_call(self.socket, method, body if body is not None else b"", timeout)
        if status != 200:
            raise PluginError(status, reply.get("Err") or reply.get("Error"))
        return reply

    def pid(self):
        return self.proc.pid

    def links(self):
        """Names of the links in this host's namespace."""
        return {link["ifname"] for link in json.loads(self.netns("ip -j link show").stdout)}

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def container(world, host, pool_id, network_id, name):
    """A 'container': an endpoint made through the plugin API, its veth moved into a namespace of its own.

    Returns (namespace, address); the namespace goes with the world.
    """
    ep = docker_id(name)
    addr = host.plugin("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": {}})["Address"]
    host.plugin("NetworkDriver.CreateEndpoint", {"NetworkID": network_id, "EndpointID": ep,
                                                 "Interface": {"Address": addr}})
    src = host.plugin("NetworkDriver.Join", {"NetworkID": network_id, "EndpointID": ep,
                                             "SandboxKey": "/var/run/docker/netns/x"})["InterfaceName"]["SrcName"]
    ns = "%s-%s" % (host.name, name)
    world.extra_netns.append(ns)
    sh("ip netns add " + ns)
    sh("ip -n %s link set %s netns %s name eth0" % (host.name, src, ns))
    sh("ip -n %s addr add %s dev eth0" % (ns, addr))
    sh("ip -n %s link set eth0 up" % ns)
    return ns, addr.split("/")[0]


def attach_logs(report, hosts, keep=None):
    """Add each host's shoutd log to a failed test's report (a rare race leaves nothing else to go on)."""
    for h in hosts:
        report.sections.append(("shoutd log of " + h.name, h.read_log()[-8000:]))
        if keep:
            os.makedirs(keep, exist_ok=True)
            shutil.copy(h.log, os.path.join(keep, "%s-%s.log" % (report.nodeid.split("::")[-1], h.name)))


class World:
    """Builds hosts and buses on demand; `close` tears everything down."""

    def __init__(self, tmp, subnet="198.20.0"):
        self.tmp = tmp
        self.subnet = subnet
        self.underlay = "dt" + uuid.uuid4().hex[:5]
        sh("ip link add %s type bridge" % self.underlay)
        sh("ip link set %s up" % self.underlay)
        self.hosts = []
        self.buses = []
        self.extra_netns = []        # namespaces a test made (its "containers"), removed with the rest

    def host(self):
        h = Host(self.underlay, len(self.hosts) + 1, self.tmp, self.subnet)
        self.hosts.append(h)
        return h

    def bus(self, permissive=False):
        b = Bus(self.tmp, permissive)
        self.buses.append(b)
        return b

    def secret(self, name="secret"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(secrets.token_hex(24))
        os.chmod(path, 0o600)
        return path

    def close(self):
        for ns in self.extra_netns:
            sh("ip netns del " + ns, check=False)
        for h in self.hosts:
            h.stop()
            sh("ip netns pids %s | xargs -r kill -9" % h.name, check=False)
            sh("ip netns del " + h.name, check=False)
        for b in self.buses:
            b.stop()
        sh("ip link del " + self.underlay, check=False)
