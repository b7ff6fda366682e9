"""Real systemd hosts for the package tests: Debian 12 and 13 booted in systemd-nspawn.

Recipe (docs/lab.md, sections 3 and 4): debootstrap a minimal release,
install Docker, Compose and *our packages* with apt inside a chroot (so apt
resolves their Debian dependencies), give each copy its own address through
systemd-networkd, then boot each copy with systemd as PID 1 on one bridge.
Commands run inside with `nsenter -t PID -a`, PID being the machine's systemd.
The base trees are cached between runs (the installed one keyed by the
packages' content).  debootstrap and apt use the mirrors they know.
"""

import hashlib
import os
import shutil
import subprocess

from ..support import sh as support_sh
from ..support import wait_for

CACHE = os.environ.get("SHOUTD_MACHINE_CACHE", "/var/tmp/shoutd-machines")
BASE_PACKAGES = "systemd,systemd-sysv,dbus,iproute2,ca-certificates"
# What a user of each release installs next to shoutd.  Debian 13 split the
# `docker` command into docker-cli (only Recommended by docker.io), and its
# docker-compose is Compose v2 (`docker compose`); Debian 12's is Compose v1.
DOCKER = {
    "bookworm": "docker.io docker-compose iptables busybox-static",
    "trixie": "docker.io docker-cli docker-compose iptables busybox-static",
}
COMPOSE = {"bookworm": "docker-compose", "trixie": "docker compose"}


def sh(cmd, check=True, timeout=900, **kw):
    """support.sh, with the patience that debootstrap and apt need."""
    return support_sh(cmd, check=check, timeout=timeout, **kw)


def debootstrap(release):
    base = os.path.join(CACHE, "debootstrap-" + release)
    if not os.path.exists(os.path.join(base, ".complete")):
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(CACHE, exist_ok=True)
        sh(["debootstrap", "--variant=minbase", "--include=" + BASE_PACKAGES, release, base], timeout=1800)
        open(os.path.join(base, ".complete"), "w").close()
    return base


def chroot(root, cmd, **kw):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    return sh(["chroot", root, "sh", "-c", cmd], env=env, **kw)


def installed_tree(release, debs, image_tar, label="installed"):
    """The bootstrapped tree plus Docker and shoutd (with its PySyncObj backport), installed by apt.

    Cached by the packages' content, one tree per `label` and release.
    """
    digest = hashlib.sha256(b"".join(open(d, "rb").read() for d in debs)).hexdigest()[:12]
    tree = os.path.join(CACHE, "%s-%s-%s" % (label, release, digest))
    if os.path.exists(os.path.join(tree, ".complete")):
        return tree, open(os.path.join(tree, ".apt-log")).read()
    base = debootstrap(release)
    for old in os.listdir(CACHE):
        if old.startswith("%s-%s-" % (label, release)):
            shutil.rmtree(os.path.join(CACHE, old), ignore_errors=True)
    sh(["cp", "-a", base, tree])
    shutil.copy("/etc/resolv.conf", os.path.join(tree, "etc/resolv.conf"))
    for deb in debs:
        shutil.copy(deb, os.path.join(tree, "root", os.path.basename(deb)))
    shutil.copy(image_tar, os.path.join(tree, "root/image.tar"))
    for d in ("proc", "sys", "dev"):
        sh(["mount", "--bind", "/" + d, os.path.join(tree, d)])
    try:
        chroot(tree, "apt-get update -q")
        chroot(tree, "apt-get install -y -q --no-install-recommends " + DOCKER[release], timeout=1800)
        log = chroot(tree, "apt-get install -y -q %s" % " ".join("./root/" + os.path.basename(d) for d in debs),
                     timeout=1800).stdout
    finally:
        for d in ("dev", "sys", "proc"):
            sh(["umount", "-l", os.path.join(tree, d)], check=False)
    chroot(tree, "systemctl enable systemd-networkd systemd-networkd-wait-online")
    with open(os.path.join(tree, ".apt-log"), "w") as f:
        f.write(log)
    open(os.path.join(tree, ".complete"), "w").close()
    return tree, log


class Machine:
    def __init__(self, tree, name, bridge, ip, gateway, workdir):
        self.name, self.ip, self.bridge = name, ip, bridge
        self.root = os.path.join(workdir, name)
        self.proc = None
        self.pid = None
        sh(["cp", "-a", tree, self.root])
        with open(os.path.join(self.root, "etc/hostname"), "w") as f:
            f.write(name + "\n")
        open(os.path.join(self.root, "etc/machine-id"), "w").close()
        with open(os.path.join(self.root, "etc/systemd/network/10-host0.network"), "w") as f:
            f.write("[Match]\nName=host0\n\n[Network]\nAddress=%s/24\nGateway=%s\n" % (ip, gateway))

    def write(self, path, text, mode=0o644):
        full = os.path.join(self.root, path.lstrip("/"))
        with open(full, "w") as f:
            f.write(text)
        os.chmod(full, mode)

    def boot(self):
        # A machine of this name that was killed rather than powered off can leave its host-side
        # veth behind, and nspawn refuses to start with "Failed to add new veth interfaces".
        sh(["ip", "link", "del", ("vb-" + self.name)[:15]], check=False)
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        self.log = open(self.root + ".console", "wb")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", self.root, "--boot", "--register=no", "--keep-unit", "-M", self.name,
             "--network-bridge=" + self.bridge, "--capability=all", "--system-call-filter=@keyring bpf"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def find_init(self):
        """The machine's systemd: the child of systemd-nspawn whose name is systemd."""
        for pid in sh(["pgrep", "-P", str(self.proc.pid)], check=False).stdout.split():
            try:
                with open("/proc/%s/comm" % pid) as f:
                    if f.read().strip() == "systemd":
                        return int(pid)
            except OSError:
                pass
        return None

    def wait_booted(self, timeout=180):
        state = ["not started"]

        def booted():
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited:\n%s" % (self.name, open(self.root + ".console").read()[-3000:]))
            self.pid = self.find_init()
            if self.pid is not None:
                state[0] = self.run("systemctl is-system-running", check=False).stdout.strip()
            return state[0] in ("running", "degraded")
        try:
            wait_for(booted, timeout=timeout, interval=0.5, what="%s to boot" % self.name)
        except AssertionError:
            detail = self.run("systemctl --failed --no-pager; systemctl list-jobs --no-pager",
                              check=False).stdout if self.pid else ""
            raise RuntimeError("%s stuck in %r:\n%s\n%s" % (self.name, state[0], detail,
                               open(self.root + ".console").read()[-2000:])) from None
        return state[0]

    def run(self, cmd, check=True, timeout=300, user=None):
        prefix = ["setpriv", "--reuid=%d" % user, "--regid=%d" % user, "--clear-groups"] if user else []
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        return sh(["nsenter", "-t", str(self.pid), "-a"] + prefix + ["sh", "-c", cmd], check=check,
                  timeout=timeout, env=env)

    def poweroff(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()          # systemd-nspawn asks the machine to power off
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
