"""shoutdctl without a daemon: the seed's `start` convenience and usage errors."""

import configparser

from shoutd import ctl


def test_start_writes_the_config_keeping_other_settings(tmp_path, capsys):
    conf = tmp_path / "shoutd.conf"
    conf.write_text("[shoutd]\nvxlan_port = 4790\npeers = 10.0.0.9\n")
    code = ctl.main(["start", "192.0.2.11", "--peer-addresses=192.0.2.12,192.0.2.13:7000",
                     "--config", str(conf), "--no-start"])
    assert code == 0
    cp = configparser.ConfigParser()
    cp.read(conf)
    assert cp.get("shoutd", "advertise_address") == "192.0.2.11"
    assert cp.get("shoutd", "peers") == "192.0.2.12, 192.0.2.13:7000"
    assert cp.get("shoutd", "vxlan_port") == "4790"
    assert "wrote" in capsys.readouterr().out


def test_start_refuses_bad_addresses_with_the_usage_code(tmp_path, capsys):
    code = ctl.main(["start", "not-an-ip", "--config", str(tmp_path / "c"), "--no-start"])
    assert code == ctl.USAGE and "bad address" in capsys.readouterr().err
    code = ctl.main(["start", "192.0.2.1", "--peer-addresses=x.y", "--config", str(tmp_path / "c"), "--no-start"])
    assert code == ctl.USAGE


def test_error_names_map_to_exit_codes():
    assert ctl._code_for("org.freedesktop.DBus.Error.ServiceUnknown") == ctl.NOT_RUNNING
    assert ctl._code_for("org.freedesktop.DBus.Error.AccessDenied") == ctl.DENIED
    assert ctl._code_for("org.darkkitchen.Shoutd.Error.AccessDenied") == ctl.DENIED
    assert ctl._code_for("org.darkkitchen.Shoutd.Error.NoQuorum") == ctl.NO_QUORUM
    assert ctl._code_for("org.darkkitchen.Shoutd.Error.AlreadyMember") == ctl.REFUSED


def status_with(kernel_prunes, mode):
    return {"Self": "198.18.0.1:7380", "Leader": "198.18.0.1:7380", "Term": 2, "Quorum": True, "Ready": True,
            "Members": [["198.18.0.1:7380", "198.18.0.1", "h1", "self"]],
            "Networks": [["feeds", "10.9.0.0/24", 4242, 2]],
            "Multicast": [["feeds", mode, [["239.1.1.1", ["h2 (198.18.0.2)", "h3 (198.18.0.3)"]]]]],
            "KernelPrunes": kernel_prunes}


def test_status_shows_each_network_s_mode_its_listeners_and_a_kernel_that_cannot_prune(capsys):
    ctl.show_status(status_with(True, "pruned"))
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()]
    assert ["feeds", "10.9.0.0/24", "4242", "2", "pruned"] in rows, out
    assert ["feeds", "239.1.1.1", "h2", "(198.18.0.2),", "h3", "(198.18.0.3)"] in rows, out
    assert "note:" not in out
    ctl.show_status(status_with(False, "pruned"))
    assert "kernel has no VXLAN multicast database" in capsys.readouterr().out
    ctl.show_status(status_with(False, "flood"))            # nothing to prune there anyway
    assert "note:" not in capsys.readouterr().out


def test_status_shows_the_last_leader_change_the_slowest_flush_and_whom_it_cannot_reach(capsys):
    st = dict(status_with(True, "flood"), LeaderChanged=1_000_000.0, SlowestFlush=1.234,
              Unreachable=["198.18.0.3:7380"])
    ctl.show_status(st)
    out = capsys.readouterr().out
    assert "slowest journal flush (10 min) 1.234 s" in out and "cannot reach 198.18.0.3:7380" in out, out
    assert "leader changed 1970-01-12" in out or "leader changed 1970-01-11" in out, out
    assert ctl.leader_change(100.0, now=100.0 + 3725).endswith("(1h02m ago)")
    assert ctl.leader_change(0.0) == "no leader change seen since shoutd started"


def test_status_leads_with_what_in_the_firewall_blocks_shoutd_traffic(capsys):
    problem = ("nftables chain inet filter forward drops forwarded traffic by policy, ... Accept it there: "
               'nft insert rule inet filter forward iifname "shb*" oifname "shb*" accept')
    ctl.show_status(dict(status_with(True, "flood"), Firewall=[problem]))
    out = capsys.readouterr().out
    assert "FIREWALL " + problem in out.splitlines(), out
    ctl.show_status(dict(status_with(True, "flood"), Firewall=[]))
    assert "FIREWALL" not in capsys.readouterr().out
