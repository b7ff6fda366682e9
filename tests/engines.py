"""The Docker engines the lab hosts run: Debian 12's own, and Debian unstable's.

Most shoutd users run Docker 27 to 29; Debian 12 ships 20.10.  Debian
unstable's docker.io 28.5.2 (with its containerd 2.1.9, docker-cli and
Compose v2) runs on Debian 12 unchanged: dockerd, docker-proxy and
containerd need glibc 2.34 only, and Debian 12's runc serves both engines
(unstable's runc needs glibc 2.38).  So the lab fetches those packages with
apt, through a configuration of its own under /var/tmp that names the
unstable suite on the mirror the machine's apt already uses (the machine's
sources stay as they are), checks each .deb against the checksum pinned
here, and unpacks them beside each other.  A host then runs that engine by
finding its directory first in PATH (docs/lab.md, section 5).

    python3 tests/engines.py fetch      # what .ci/setup runs
"""

import hashlib
import json
import os
import re
import shutil
import sys

from support import sh

CACHE = "/var/tmp/shoutd-engines"
SUITE = "unstable"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class Engine:
    """One Docker release the lab can run."""

    def __init__(self, name, packages=None, containerd_store=False):
        self.name = name
        self.packages = packages or {}          # package: (version, sha256 of the amd64 .deb)
        self.containerd_store = containerd_store    # the lab runs it with containerd's image store

    @property
    def root(self):
        return os.path.join(CACHE, self.name) if self.packages else "/"

    @property
    def bin_dir(self):
        """The directory to put first in PATH, or None for the machine's own engine."""
        return os.path.join(self.root, "bin") if self.packages else None

    @property
    def docker(self):
        return os.path.join(self.bin_dir, "docker") if self.packages else "/usr/bin/docker"

    @property
    def cli_config(self):
        """DOCKER_CONFIG for this engine's CLI, or None for the machine's own."""
        return os.path.join(self.root, "cli-config") if self.packages else None

    def __repr__(self):
        return self.name


DEBIAN_12 = Engine("20.10")
# Debian unstable's packages on 2026-12-01.  When unstable moves on, the pinned
# versions leave its pool and fetch() says so: update the versions and checksums.
DEBIAN_UNSTABLE = Engine("28.5.2", {
    "docker.io": ("28.5.2+dfsg4-5", "69a59cc77a1fb8ee9ad6859abc2e6de5d76b70887405595c2b1307818fecf682"),
    "docker-cli": ("28.5.2+dfsg4-5", "8ea2428acdda666f41263f5a0d3a85681a696491361574eb7bd721a1194939b9"),
    "containerd": ("2.1.9+ds1-5", "2dda86ce7033fd612fc50e136679d8174ccad680eb29cd4611e0d2a1b84cf591"),
    "docker-compose": ("2.40.3-3", "e7603d5e6df0f8404f7b03da478022b87d7b50644cffe68884b071e5cfc17fd3"),
}, containerd_store=True)
ENGINES = {e.name: e for e in (DEBIAN_12, DEBIAN_UNSTABLE)}
# What the unpacked tree must hold, and where PATH finds it.
BINARIES = {"usr/sbin/dockerd": "dockerd", "usr/sbin/docker-proxy": "docker-proxy",
            "usr/bin/containerd": "containerd", "usr/bin/containerd-shim-runc-v2": "containerd-shim-runc-v2",
            "usr/bin/docker": "docker"}


def debian_mirror():
    """The archive that the machine's apt installs its own release from (never a security mirror)."""
    codename = re.search(r"^VERSION_CODENAME=(\S+)", open("/etc/os-release").read(), re.M).group(1)
    lines = sh(["apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE)"]).stdout.split("\n")
    for uri, release in (line.split() for line in lines if line.strip()):
        if release == codename:
            return uri
    raise RuntimeError("apt has no source for Debian %s: the lab fetches Docker from the mirror apt uses" % codename)


def _apt(work):
    """An apt that sees only the unstable suite, with lists and cache of its own."""
    conf = os.path.join(work, "apt.conf")
    for d in ("lists/partial", "cache/archives/partial", "sources.list.d"):
        os.makedirs(os.path.join(work, d), exist_ok=True)
    with open(os.path.join(work, "sources.list"), "w") as f:
        f.write("deb [signed-by=%s] %s %s main\n" % (KEYRING, debian_mirror(), SUITE))
    with open(conf, "w") as f:
        f.write('Dir::Etc::SourceList "{w}/sources.list";\nDir::Etc::SourceParts "{w}/sources.list.d";\n'
                'Dir::State::Lists "{w}/lists";\nDir::Cache "{w}/cache";\nAPT::Architecture "amd64";\n'
                'APT::Sandbox::User "root";\n'.format(w=work))
    return dict(os.environ, APT_CONFIG=conf)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(engine):
    """Unpack `engine` under CACHE (once); return its bin directory."""
    if not engine.packages:
        return None
    done = os.path.join(engine.root, ".complete")
    if os.path.exists(done):
        return engine.bin_dir
    work = os.path.join(CACHE, "apt")
    env = _apt(work)
    debs = os.path.join(CACHE, "debs")
    os.makedirs(debs, exist_ok=True)
    missing = [(p, v, s) for p, (v, s) in engine.packages.items()
               if not os.path.exists(os.path.join(debs, "%s_%s_amd64.deb" % (p, v.replace(":", "%3a"))))]
    if missing:
        sh(["apt-get", "update", "-q"], env=env, timeout=600)
        res = sh(["apt-get", "download", "-q"] + ["%s=%s" % (p, v) for p, v, _ in missing],
                 env=env, cwd=debs, timeout=600, check=False)
        if res.returncode != 0:
            raise RuntimeError("cannot download Docker %s from Debian %s (%s); if %s has moved on, pin its "
                               "new versions and checksums in tests/engines.py"
                               % (engine.name, SUITE, res.stderr.strip()[-500:], SUITE))
    shutil.rmtree(engine.root, ignore_errors=True)
    tree = os.path.join(engine.root, "tree")
    os.makedirs(os.path.join(engine.root, "bin"))
    for package, (version, sha256) in engine.packages.items():
        deb = os.path.join(debs, "%s_%s_amd64.deb" % (package, version.replace(":", "%3a")))
        if _sha256(deb) != sha256:
            os.unlink(deb)
            raise RuntimeError("%s: checksum differs from the one pinned in tests/engines.py" % deb)
        sh(["dpkg-deb", "-x", deb, tree])
    for path, name in BINARIES.items():
        os.symlink(os.path.join(tree, path), os.path.join(engine.root, "bin", name))
    # This engine's CLI reads this configuration (DOCKER_CONFIG): it finds Compose v2 there.
    os.makedirs(engine.cli_config)
    with open(os.path.join(engine.cli_config, "config.json"), "w") as f:
        json.dump({"cliPluginsExtraDirs": [os.path.join(tree, "usr/libexec/docker/cli-plugins")]}, f)
    open(done, "w").close()
    return engine.bin_dir


if __name__ == "__main__":
    if sys.argv[1:] == ["fetch"]:
        for e in ENGINES.values():
            fetch(e)
            print("Docker %s: %s" % (e.name, e.bin_dir or "the machine's own"))
    else:
        sys.exit("usage: python3 tests/engines.py fetch")
