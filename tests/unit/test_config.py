"""Config file and flags: every bad value is named, with its source, and never a traceback."""

import os
import subprocess
import sys

import pytest

from shoutd import config
from shoutd.errors import ShoutdError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write(tmp_path, text):
    path = tmp_path / "shoutd.conf"
    path.write_text(text)
    return str(path)


def test_file_values_and_flag_overrides(tmp_path):
    path = write(tmp_path, "[shoutd]\nadvertise_address = 198.18.0.1\npeers = 198.18.0.2, 198.18.0.3:7000\n"
                           "raft_port = 7400\nvxlan_port = 4790\n")
    cfg = config.load(["--config", path, "--vxlan-port", "4800"])
    assert cfg.advertise_address == "198.18.0.1" and cfg.vxlan_port == 4800 and cfg.raft_port == 7400
    assert cfg.peer_addresses() == ["198.18.0.2:7400", "198.18.0.3:7000"]
    assert cfg.raft_address == "198.18.0.1:7400"
    assert cfg.driver_name == "shoutd"


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_CONFIG", str(tmp_path / "absent.conf"))
    cfg = config.load(["--config", str(tmp_path / "absent.conf")])
    assert cfg.plugin_socket == "/run/docker/plugins/shoutd.sock" and cfg.peers == []
    assert cfg.default_pool == "10.213.0.0/16" and cfg.default_subnet_size == 24


@pytest.mark.parametrize("text,words", [
    ("[shoutd]\nraft_port = 70000\n", ["raft_port", "70000"]),
    ("[shoutd]\nadvertise_address = banana\n", ["advertise_address", "banana"]),
    ("[shoutd]\ncolour = blue\n", ["unknown setting", "colour"]),
    ("[other]\nx = 1\n", ["no [shoutd] section"]),
    ("no section at all\n", ["cannot read"]),
    ("[shoutd]\ndefault_subnet_size = 31\n", ["default_subnet_size"]),
    ("[shoutd]\nlog_level = loud\n", ["log_level"]),
])
def test_bad_files_are_named(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ShoutdError) as err:
        config.load(["--config", path])
    for w in words:
        assert w in str(err.value)


def test_bad_peer_is_named(tmp_path):
    cfg = config.load(["--config", write(tmp_path, "[shoutd]\npeers = 10.0.0.1:notaport\n")])
    with pytest.raises(ShoutdError) as err:
        cfg.peer_addresses()
    assert "10.0.0.1:notaport" in str(err.value)


def test_secret_rules(tmp_path):
    cfg = config.load(["--config", write(tmp_path, "[shoutd]\n"), "--secret-file", str(tmp_path / "secret")])
    with pytest.raises(ShoutdError) as err:
        config.read_secret(cfg, multi_host=True)
    assert "needs a shared secret" in str(err.value) and "head -c 32 /dev/urandom" in str(err.value)
    secret, from_file = config.read_secret(cfg, multi_host=False)
    assert len(secret) >= 32 and not from_file
    (tmp_path / "secret").write_text("short\n")
    os.chmod(tmp_path / "secret", 0o600)
    with pytest.raises(ShoutdError, match="too short"):
        config.read_secret(cfg, multi_host=True)
    (tmp_path / "secret").write_text("x" * 40 + "\n")
    os.chmod(tmp_path / "secret", 0o644)
    with pytest.raises(ShoutdError, match="chmod 600"):
        config.read_secret(cfg, multi_host=True)
    os.chmod(tmp_path / "secret", 0o600)
    assert config.read_secret(cfg, multi_host=True) == (b"x" * 40, True)


def test_the_daemon_reports_config_errors_without_a_traceback(tmp_path):
    path = write(tmp_path, "[shoutd]\nvxlan_port = -1\n")
    res = subprocess.run([sys.executable, "-m", "shoutd", "--config", path], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert res.returncode == 2
    assert "vxlan_port" in res.stderr and "Traceback" not in res.stderr
