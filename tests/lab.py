"""Several Docker hosts on one machine, each running its own dockerd and shoutd.

A host is a network namespace with one veth leg on a shared underlay bridge,
plus a private mount namespace in which its own dockerd runs (recipe:
docs/lab.md).  shoutd for host N runs in host N's network namespace but the
root mount namespace, serving $H/plugins/shoutd.sock, which that host's
dockerd sees as /run/docker/plugins/shoutd.sock.

Used by the end-to-end tests, the benchmark and the demo:
    python3 tests/lab.py demo      # three hosts, the iperf multicast demo
"""

import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from engines import DEBIAN_12, ENGINES, fetch
from slowdisk import set_delay
from support import iperf_listening, iperf_summary, sh, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "shoutd-lab"
IMAGE_CACHE = "/var/tmp/shoutd-lab-image-2.tar"     # bump when the image's contents change
TOOLS = ["iperf", "arping", "tcpdump"]
LOCK_WAIT = 1800         # seconds to wait for another lab of the same name (another test run) to finish
BIG_TAR = "/var/tmp/shoutd-big-400M.tar"    # an image whose import keeps a disk busy (issue 12)


def build_image(path):
    """A registry-free image: busybox plus iperf/arping/tcpdump with their libraries."""
    if os.path.exists(path):
        return path
    tree = tempfile.mkdtemp(prefix="shoutd-image-")
    os.makedirs(os.path.join(tree, "bin"))
    shutil.copy("/bin/busybox", os.path.join(tree, "bin/busybox"))
    applets = sh(["/bin/busybox", "--list"]).stdout.split()
    for applet in applets:
        dst = os.path.join(tree, "bin", applet)
        if not os.path.exists(dst):
            os.symlink("busybox", dst)
    for tool in TOOLS:
        binary = shutil.which(tool) or "/usr/sbin/" + tool
        files = [binary]
        for line in sh(["ldd", binary]).stdout.splitlines():
            for part in line.split():
                if part.startswith("/"):
                    files.append(part)
        for f in files:
            dst = os.path.join(tree, f.lstrip("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy(f, dst)
        link = os.path.join(tree, "bin", tool)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(binary, link)
    for d in ("tmp", "etc", "proc", "sys", "dev", "run"):
        os.makedirs(os.path.join(tree, d), exist_ok=True)
    # tcpdump looks its user up (-Z root) before capturing.
    with open(os.path.join(tree, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(tree, "etc/group"), "w") as f:
        f.write("root:x:0:\n")
    sh("tar -C %s -cf %s ." % (tree, path))
    shutil.rmtree(tree)
    return path


def big_image_tar(path=BIG_TAR, megabytes=400):
    """A tarball of incompressible data: every `docker import` of it really writes it all."""
    if not os.path.exists(path):
        tree = path + ".d"
        os.makedirs(tree, exist_ok=True)
        sh("head -c %dM /dev/urandom > %s/blob" % (megabytes, tree))
        sh("tar -C %s -cf %s.part . && mv %s.part %s" % (tree, path, path, path))
        shutil.rmtree(tree)
    return path


class ImageImports:
    """While in effect, `host`'s dockerd imports a big image again and again (as `docker pull` writes one)."""

    def __init__(self, host, tar=None):
        self.host, self.tar = host, tar or big_image_tar()
        self.codes = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        n = 0
        while not self._stop.is_set():
            self.codes.append(self.host.docker("import", self.tar, "big:%d" % n, check=False, timeout=600).returncode)
            self.host.docker("rmi", "big:%d" % n, check=False)
            n += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(600)


class Host:
    def __init__(self, lab, n):
        self.lab = lab
        self.n = n
        self.name = "%sh%d" % (lab.prefix, n)
        self.ip = "198.18.0.%d" % n
        self.dir = os.path.join(lab.base, "h%d" % n)
        self.sock = os.path.join(self.dir, "docker.sock")
        self.dockerd = None
        self.shoutd = None
        self.run_log_start = 0
        self.log = os.path.join(self.dir, "shoutd.log")
        self.replica = False          # joins by AddPeer after the voters formed (Lab(replicas=N))

    def netns(self, *cmd, check=True, timeout=120):
        return sh(["nsenter", "--net=/run/netns/" + self.name] + list(cmd), check=check, timeout=timeout)

    def docker_command(self, *args):
        """argv for this host's engine, through the CLI of its own release (with Lab.cli_env)."""
        return [self.lab.engine.docker, "-H", "unix://" + self.sock] + list(args)

    def docker(self, *args, check=True, timeout=120):
        return sh(self.docker_command(*args), check=check, timeout=timeout, env=self.lab.cli_env)

    def compose(self, directory, project, *args, check=True):
        """Compose on this host: v2 (`docker compose`) with an engine of our own, else Debian 12's v1."""
        if self.lab.engine.cli_config is not None:
            cmd = self.docker_command("compose", "-p", project, *args)
        else:
            cmd = ["docker-compose", "-H", "unix://" + self.sock, "-p", project] + list(args)
        return sh(cmd, check=check, timeout=300, env=self.lab.cli_env, cwd=directory)

    def up(self):
        h = self.name
        sh("ip netns add %s" % h)
        sh("ip link add %s-ul type veth peer name eth0 netns %s" % (h, h))
        sh("ip link set %s-ul master %s up" % (h, self.lab.underlay))
        sh("ip -n %s addr add %s/24 dev eth0" % (h, self.ip))
        sh("ip -n %s link set eth0 up" % h)
        sh("ip -n %s link set lo up" % h)
        for d in ("cg", "plugins", "data", "exec", "state"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)

    def start_dockerd(self):
        script = (
            "mount --rbind /sys/fs/cgroup {H}/cg && mount -t sysfs sysfs /sys && "
            "mount --rbind {H}/cg /sys/fs/cgroup && mount --bind {H}/plugins /run/docker/plugins && "
            "exec dockerd --data-root {H}/data --exec-root {H}/exec -H unix://{H}/docker.sock "
            "--pidfile {H}/docker.pid --bip 172.30.{n}.1/24 --userland-proxy=false {options}"
        ).format(H=self.dir, n=self.n, options=" ".join(self.lab.dockerd_options(self)))
        os.makedirs("/run/docker/plugins", exist_ok=True)
        out = open(os.path.join(self.dir, "dockerd.log"), "ab")
        self.dockerd = subprocess.Popen(
            ["nsenter", "--net=/run/netns/" + self.name, "unshare", "-m", "--propagation", "private",
             "sh", "-c", script], stdout=out, stderr=subprocess.STDOUT, env=self.lab.engine_env)
        def answers():
            if self.dockerd.poll() is not None:
                raise RuntimeError("dockerd on %s exited; see %s/dockerd.log" % (self.name, self.dir))
            return self.docker("version", check=False).returncode == 0
        wait_for(answers, timeout=60, interval=0.3, what="dockerd on %s; see %s/dockerd.log" % (self.name, self.dir))

    def stop_dockerd(self):
        pid = self.dockerd.pid if self.dockerd is not None else None
        pidfile = os.path.join(self.dir, "docker.pid")
        if pid is None and os.path.exists(pidfile):
            pid = int(open(pidfile).read().strip() or 0) or None
        if pid is None:
            return
        def gone():
            try:
                with open("/proc/%d/status" % pid) as f:
                    return "zombie" in f.read()
            except FileNotFoundError:
                return True
        try:
            os.kill(pid, signal.SIGTERM)
            try:
                wait_for(gone, timeout=30, what="dockerd to stop")
            except AssertionError:
                pass                        # then it is killed
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, FileNotFoundError):
            pass
        if self.dockerd is not None:
            self.dockerd.wait()
        self.dockerd = None

    def write_config(self, peers):
        conf = os.path.join(self.dir, "shoutd.conf")
        with open(conf, "w") as f:
            f.write("[shoutd]\nadvertise_address = %s\npeers = %s\nplugin_socket = %s\n"
                    "managed_socket = %s\nmanaged_plugin = %s\ndocker_socket = %s\nstate_dir = %s\nsecret_file = %s\n"
                    % (self.ip, ", ".join(peers), os.path.join(self.dir, "plugins/shoutd.sock"),
                       self.managed_socket, "yes" if self.lab.managed_plugin else "no", self.sock,
                       os.path.join(self.dir, "state"), self.lab.secret))
        return conf

    @property
    def managed_socket(self):
        return os.path.join(self.dir, "run", "managed.sock")

    def plugin(self, action):
        """`shoutdctl plugin install|remove` for this host's dockerd: the managed plugin darkkitchen/shoutd."""
        return sh([self.lab.python, "-m", "shoutd.ctl", "plugin", action, "--config",
                   os.path.join(self.dir, "shoutd.conf")], env=dict(os.environ, PYTHONPATH=ROOT), timeout=180)

    def start_shoutd(self):
        # A replica starts alone until AddPeer; then members.json, not the config, says whom it follows.
        peers = [] if self.replica else [h.ip for h in self.lab.hosts if h is not self and not h.replica]
        conf = self.write_config(peers)
        # What this run logs starts here: an earlier run may have been killed before it registered.
        self.run_log_start = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        if os.environ.get("SHOUTD_LAB_DEBUG"):
            with open(conf, "a") as f:
                f.write("log_level = debug\n")
        out = open(self.log, "ab")
        env = dict(os.environ, PYTHONPATH=ROOT, SHOUTD_TEST_FSYNC_DELAY=self.fsync_delay)
        if self.n == 1 and self.lab.bus is not None:
            env["DBUS_SYSTEM_BUS_ADDRESS"] = self.lab.bus.address     # AddPeer of the replicas goes there
        # A lab with slow disks runs the test build whose fsync a test can slow down (slowdisk.py).
        module = "tests.slowdisk" if self.lab.slow_disks else "shoutd"
        self.shoutd = subprocess.Popen(
            ["nsenter", "--net=/run/netns/" + self.name, self.lab.python, "-m", module,
             "--config", conf], stdout=out, stderr=subprocess.STDOUT, env=env)

    @property
    def fsync_delay(self):
        return os.path.join(self.dir, "fsync-delay")

    def slow_disk(self, low, high=None):
        """From now on each fsync of this host's shoutd takes low (to high) seconds longer; 0: well again."""
        assert self.lab.slow_disks, "only a Lab(slow_disks=True) runs the build whose disk can be slowed"
        set_delay(self.fsync_delay, low, high)

    def log_tail(self, chars=4000):
        with open(self.log) as f:
            return f.read()[-chars:]

    def raft_events(self):
        """(elections, leader changes) that this run of shoutd logged, each as its log text."""
        with open(self.log, "rb") as f:
            f.seek(self.run_log_start)
            text = f.read().decode(errors="replace")
        return re.findall(r"election for term \d+", text), re.findall(r"leader changed: \S+ in term \d+", text)

    def registered(self):
        """shoutd logs this once per start, when its member record has committed."""
        with open(self.log, "rb") as f:
            f.seek(self.run_log_start)
            return b" registered;" in f.read()

    def kill_shoutd(self, sig=signal.SIGKILL):
        if self.shoutd is not None and self.shoutd.poll() is None:
            self.shoutd.send_signal(sig)
            self.shoutd.wait(30)
        self.shoutd = None

    def run(self, name, network, *cmd, ip=None, extra=()):
        args = ["run", "-d", "--name", name, "--network", network, "--cap-add", "NET_ADMIN",
                "--cap-add", "NET_RAW"] + list(extra)
        if ip:
            args += ["--ip", ip]
        return self.docker(*(args + [IMAGE] + list(cmd or ["sleep", "3600"]))).stdout.strip()

    def multicast(self, tx, rx_host, rx, group, port, seconds=2):
        """(lost, total) of an iperf UDP stream to `group` from container `tx` here to container `rx` on rx_host."""
        rx_host.exec(rx, "sh", "-c", "iperf -u -s -B %s -p %d > /tmp/rx.log 2>&1 &" % (group, port))
        report = lambda: rx_host.exec(rx, "cat", "/tmp/rx.log").stdout  # noqa: E731
        wait_for(lambda: iperf_listening(report()), what="iperf receiver")
        self.exec(tx, "iperf", "-u", "-c", group, "-p", str(port), "-T", "2", "-t", str(seconds), timeout=60)
        return wait_for(lambda: iperf_summary(report(), seconds), what="iperf report")

    def capture(self, container, bpf, count=1, timeout=15):
        """Start tcpdump inside a container, once it listens; returns a function that waits for its output."""
        proc = subprocess.Popen(self.docker_command("exec", container, "timeout", str(timeout), "tcpdump", "-Z", "root",
                                                    "-n", "-e", "-v", "-l", "-i", "eth0", "-c", str(count), bpf),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.lab.cli_env)
        seen, deadline = b"", time.monotonic() + timeout
        while b"listening on" not in seen and proc.poll() is None and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 1.0)[0]:
                seen += os.read(proc.stdout.fileno(), 4096)
        assert b"listening on" in seen, "tcpdump did not start in %s: %s" % (container, seen.decode(errors="replace"))
        return lambda: (seen + proc.communicate(timeout=timeout + 10)[0]).decode(errors="replace")

    def exec(self, container, *cmd, check=True, timeout=120):
        return self.docker("exec", container, *cmd, check=check, timeout=timeout)

    def node_id(self):
        """This host's swarm node id (every lab host has the machine's hostname, so ids tell them apart)."""
        return self.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()

    def tasks(self, service):
        """The containers of `service`'s running tasks on this host."""
        return self.docker("ps", "-q", "--filter", "label=com.docker.swarm.service.name=" + service).stdout.split()

    def container_ip(self, container, network):
        out = self.docker("inspect", container).stdout
        return json.loads(out)[0]["NetworkSettings"]["Networks"][network]["IPAddress"]


class Lab:
    def __init__(self, hosts=3, base=None, prefix="sl", python=None, authz=(), slow_disks=False,
                 engine=None, iptables=False, containerd_store=None, managed_plugin=False, replicas=0):
        self.authz = set(authz)       # hosts whose dockerd asks shoutd to authorize requests
        self.slow_disks = slow_disks  # shoutd's fsyncs can be slowed down (Host.slow_disk)
        # The Docker release every host runs (engines.py); SHOUTD_LAB_ENGINE picks one for the demo.
        self.engine = engine or ENGINES[os.environ.get("SHOUTD_LAB_ENGINE", DEBIAN_12.name)]
        self.iptables = iptables      # dockerd writes its firewall rules (in each host's own namespace)
        self.managed_plugin = managed_plugin    # shoutd installs darkkitchen/shoutd in its dockerd as it starts
        # Images in containerd's store (Docker 29's default for new installs), or the graph driver's.
        self.containerd_store = self.engine.containerd_store if containerd_store is None else containerd_store
        self.base = base or tempfile.mkdtemp(prefix="shoutd-lab-")
        self.prefix = prefix
        self.python = python or "/usr/bin/python3"
        self.secret = os.path.join(self.base, "secret")
        self.underlay = prefix + "-ul0"
        self.hosts = [Host(self, n) for n in range(1, hosts + 1)]
        for h in self.hosts[hosts - replicas:]:
            h.replica = True          # the last `replicas` hosts (shoutd/roles.py)
        self.bus = None               # host 1's private system bus, for AddPeer, when there are replicas
        self._lock = None

    @property
    def engine_env(self):
        """dockerd finds its release's containerd, shim and proxy first in PATH (runc stays Debian 12's)."""
        if self.engine.bin_dir is None:
            return None
        return dict(os.environ, PATH=self.engine.bin_dir + ":" + os.environ.get("PATH", "/usr/sbin:/usr/bin"))

    @property
    def cli_env(self):
        return None if self.engine.cli_config is None else dict(os.environ, DOCKER_CONFIG=self.engine.cli_config)

    def dockerd_options(self, host):
        options = [] if self.iptables else ["--iptables=false", "--ip6tables=false"]
        if self.containerd_store:
            # The image store Docker 29 uses on new installs (and Docker CE offers from 24).
            options.append("--feature=containerd-snapshotter=true")
        if host.n in self.authz:
            options.append("--authorization-plugin=shoutd")
        return options

    def _take_name(self):
        """Namespaces and links are machine-wide: a second test run on this machine waits its turn."""
        os.makedirs("/run/lock", exist_ok=True)
        self._lock = open("/run/lock/shoutd-lab-%s.lock" % self.prefix, "w")
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError("another lab named %r stayed up for %ds (another test run on this "
                                       "machine?); stop it, or wait" % (self.prefix, LOCK_WAIT)) from None
                time.sleep(1)           # the other run holds the lock until its lab is down

    def up(self, image_cache=IMAGE_CACHE):
        if self._lock is None:
            self._take_name()
        self.down_network()
        os.makedirs(self.base, exist_ok=True)
        sh("ip link add %s type bridge" % self.underlay)
        sh("ip link set %s up" % self.underlay)
        # A dockerd elsewhere may have set FORWARD to DROP with br_netfilter on (docs/lab.md).
        sh("iptables -I FORWARD -i %s -o %s -j ACCEPT" % (self.underlay, self.underlay), check=False)
        with open(self.secret, "w") as f:
            f.write(os.urandom(24).hex())
        os.chmod(self.secret, 0o600)
        if any(h.replica for h in self.hosts) and self.bus is None:
            from tests.hostlab import Bus
            self.bus = Bus(self.base)
        for h in self.hosts:
            h.up()
        tar = build_image(image_cache)
        fetch(self.engine)
        # shoutd first: a dockerd with shoutd as authorization plugin answers nothing without it.
        for h in self.hosts:
            h.start_shoutd()
        for h in self.hosts:
            h.start_dockerd()
        for h in self.hosts:
            # The tests say which image store they ran on: make sure it is that one.
            status = h.docker("info", "--format", "{{json .DriverStatus}}").stdout
            if ("io.containerd.snapshotter" in status) != self.containerd_store:
                raise RuntimeError("dockerd %s on %s does not use the %s image store: %s" % (
                    self.engine, h.name, "containerd" if self.containerd_store else "graph driver's", status))
            h.docker("import", tar, IMAGE, timeout=300)
        return self

    def __enter__(self):
        """`with Lab(...) as lab:` the lab up, shoutd registered on every host; down again at the end."""
        try:
            self.up()
            self.start_shoutd()
            self.join_replicas()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()

    def start_shoutd(self):
        """Start shoutd where it is not running (up() starts it everywhere) and wait for all."""
        for h in self.hosts:
            if h.shoutd is None or h.shoutd.poll() is not None:
                h.start_shoutd()
        self.wait_ready()

    def join_replicas(self):
        """AddPeer, on host 1, of each replica host: it joins as a replica once the voters are recorded."""
        replicas = [h for h in self.hosts if h.replica]
        if not replicas:
            return
        voters = [h for h in self.hosts if not h.replica]
        wait_for(lambda: any("voters now " in h.log_tail(200000) for h in voters), timeout=60,
                 what="the voters recorded")
        for h in replicas:
            self.bus.busctl("call", "org.darkkitchen.Shoutd", "/org/darkkitchen/Shoutd", "org.darkkitchen.Shoutd",
                            "AddPeer", "s", h.ip)
            wait_for(lambda h=h: "replica follows voter" in h.log_tail(200000), timeout=60,
                     what="%s following a voter" % h.name)

    def wait_ready(self, timeout=60):
        """Until every host's shoutd has registered itself with the cluster leader."""
        for h in self.hosts:
            def registered(h=h):
                if h.shoutd is not None and h.shoutd.poll() is not None:
                    raise RuntimeError("shoutd on %s exited; log:\n%s" % (h.name, h.log_tail()))
                return h.registered()
            try:
                wait_for(registered, timeout=timeout, interval=0.3, what="shoutd on " + h.name)
            except AssertionError as e:
                raise RuntimeError("%s; log:\n%s" % (e, h.log_tail())) from None

    def create_network(self, name, *options):
        """A shoutd network made on host 1, once Docker on every host lists it."""
        self.hosts[0].docker("network", "create", "-d", "shoutd", "--ipam-driver", "shoutd", *options, name)
        for h in self.hosts:
            wait_for(lambda h=h: name in h.docker("network", "ls").stdout, what="network %s on %s" % (name, h.name))

    def swarm(self):
        """Host 1 a swarm manager, the others its workers (docs/lab.md, section 5)."""
        h1 = self.hosts[0]
        h1.docker("swarm", "init", "--advertise-addr", h1.ip, "--listen-addr", h1.ip + ":2377")
        token = h1.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        for h in self.hosts[1:]:
            h.docker("swarm", "join", "--advertise-addr", h.ip, "--token", token, h1.ip + ":2377", timeout=120)
        wait_for(lambda: h1.docker("node", "ls", "--format", "{{.Status}}").stdout.split().count("Ready")
                 == len(self.hosts), what="every host a Ready swarm node")

    def leader(self, timeout=30):
        """The host whose shoutd every host last logged as leader (lab hosts have no system bus)."""
        def agreed():
            last = {(h.raft_events()[1] or [None])[-1] for h in self.hosts if not h.replica}
            return last.pop().split()[2] if len(last) == 1 and None not in last else None
        member = wait_for(agreed, timeout=timeout, what="a leader that every host logged")
        return next(h for h in self.hosts if member.startswith(h.ip + ":"))

    def down_network(self):
        for n in range(1, 10):
            name = "%sh%d" % (self.prefix, n)
            # A process left in the namespace (an iperf daemon) would keep it alive.
            sh("ip netns pids %s | xargs -r kill -9" % name, check=False)
            sh("ip netns del %s" % name, check=False)
            # The root leg goes with the namespace, but only once the kernel's cleanup has run.
            sh("ip link del %s-ul" % name, check=False)
        sh("ip link del %s" % self.underlay, check=False)

    def remove_containers(self, keep_tasks=False):
        """Every container on every host, running or not (but swarm's tasks, with `keep_tasks`)."""
        for h in self.hosts:
            if os.path.exists(h.sock):
                cids = set(h.docker("ps", "-aq", check=False).stdout.split())
                if keep_tasks:       # swarm would only start them again: their services decide
                    cids -= set(h.docker("ps", "-aq", "--filter", "label=com.docker.swarm.task.id",
                                         check=False).stdout.split())
                if cids:
                    h.docker("rm", "-f", *sorted(cids), check=False)

    def remove_services(self):
        """Every swarm service and stack, if host 1 manages a swarm."""
        h1 = self.hosts[0]
        if os.path.exists(h1.sock):
            services = h1.docker("service", "ls", "-q", check=False).stdout.split()
            if services:
                h1.docker("service", "rm", *services, check=False)

    def down(self):
        # Containers go while shoutd still answers Docker's Leave/DeleteEndpoint:
        # without it Docker retries each call for half a minute.
        self.remove_services()
        self.remove_containers()
        for h in self.hosts:
            h.kill_shoutd(signal.SIGTERM)
        for h in self.hosts:
            h.stop_dockerd()
        logs = os.environ.get("SHOUTD_LAB_LOGS", "/tmp/shoutd-lab-logs")
        os.makedirs(logs, exist_ok=True)
        for h in self.hosts:
            for name in ("shoutd.log", "dockerd.log"):
                if os.path.exists(os.path.join(h.dir, name)):
                    shutil.copy(os.path.join(h.dir, name), os.path.join(logs, "h%d-%s" % (h.n, name)))
            sh("umount -R %s/cg" % h.dir, check=False)
        self.down_network()
        if self.bus is not None:
            self.bus.stop()
        sh("iptables -D FORWARD -i %s -o %s -j ACCEPT" % (self.underlay, self.underlay), check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()          # closing releases the flock
            self._lock = None


def demo():
    lab = Lab(3)
    try:
        print("starting three hosts (network namespaces, each with dockerd and shoutd) ...")
        lab.up()
        lab.start_shoutd()
        h1, h2, h3 = lab.hosts
        h1.docker("network", "create", "-d", "shoutd", "--ipam-driver", "shoutd", "demo")
        print("network 'demo' created on host 1; waiting for it on hosts 2 and 3 ...")
        for h in (h2, h3):
            wait_for(lambda h=h: "demo" in h.docker("network", "ls").stdout)
        receivers = ((h2, "rx2"), (h3, "rx3"))
        for h, name in receivers:
            h.run(name, "demo", "iperf", "-u", "-s", "-B", "224.1.1.1", "-p", "5000", "-i", "1")
        for h, name in receivers:
            wait_for(lambda h=h, name=name: iperf_listening(h.docker("logs", name).stdout), what="receiver " + name)
        h1.run("tx", "demo", "sleep", "3600")
        print(h1.exec("tx", "iperf", "-u", "-c", "224.1.1.1", "-p", "5000", "-T", "2", "-t", "8",
                      "-i", "1").stdout)
        for h, name in receivers:
            wait_for(lambda h=h, name=name: iperf_summary(h.docker("logs", name).stdout, 8), what="report " + name)
        for h, name in receivers:
            print("--- receiver %s on host %d ---" % (name, h.n))
            print(h.docker("logs", name).stdout)
    finally:
        lab.down()


if __name__ == "__main__":
    if sys.argv[1:] == ["demo"]:
        demo()
    else:
        sys.exit("usage: python3 tests/lab.py demo")
