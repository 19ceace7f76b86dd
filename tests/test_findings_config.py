"""Thresholds from defaults, the XDG config file (TOML, or the flat subset on Python 3.10) and flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from socktop.analyze import config
from socktop.analyze.config import DEFAULT_THRESHOLDS, config_path, load_thresholds, parse_override


def test_config_path_follows_xdg() -> None:
    assert config_path({"XDG_CONFIG_HOME": "/etc/xdg-test"}) == Path("/etc/xdg-test/socktop/config.toml")
    assert config_path({}).parts[-3:] == (".config", "socktop", "config.toml")


def test_missing_default_file_means_defaults_and_no_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert load_thresholds() == (DEFAULT_THRESHOLDS, ())


def test_toml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("# socktop\n[thresholds]\nclose_wait_warning = 20\nport_range_warning = 0.4\n"
                    "fd_warning = 1\n[other]\nclose_wait_warning = 99\n")
    thresholds, warnings = load_thresholds(path, [("close_wait_critical", 300)])
    assert warnings == ()
    assert (thresholds.close_wait_warning, thresholds.port_range_warning, thresholds.fd_warning,
            thresholds.close_wait_critical) == (20, 0.4, 1.0, 300)
    assert isinstance(thresholds.fd_warning, float) and isinstance(thresholds.close_wait_warning, int)


@pytest.mark.parametrize(("text", "complaint"), [
    ("[thresholds]\nclose_wait_warnin = 3\n", "unknown threshold 'close_wait_warnin'"),
    ("[thresholds]\nclose_wait_warning = 2.5\n", "needs a non-negative whole number"),
    ("[thresholds]\nclose_wait_warning = -1\n", "needs a non-negative whole number"),
    ("[thresholds]\nfd_warning = true\n", "needs a non-negative number"),
    ("[thresholds\nx = 1\n", "not valid TOML"),
    ("thresholds = 3\n", "[thresholds] is not a table"),
])
def test_a_bad_file_warns_and_keeps_the_defaults(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    thresholds, warnings = load_thresholds(path)
    assert thresholds == DEFAULT_THRESHOLDS
    assert len(warnings) == 1 and complaint in warnings[0] and str(path) in warnings[0]


def test_flat_subset_without_tomllib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.10 has no tomllib: `key = number` lines of [thresholds] still work."""
    monkeypatch.setattr(config, "tomllib", None)
    path = tmp_path / "config.toml"
    path.write_text("[thresholds]  # ours\nclose_wait_warning = 20   # lower\n\n[ui]\ntheme = 'dark'\n")
    thresholds, warnings = load_thresholds(path)
    assert warnings == () and thresholds.close_wait_warning == 20
    path.write_text("[thresholds]\nclose_wait_warning: 20\n")
    thresholds, warnings = load_thresholds(path)
    assert thresholds == DEFAULT_THRESHOLDS and "Python 3.10 reads only that subset" in warnings[0]


def test_parse_override() -> None:
    assert parse_override("close_wait_warning=20") == ("close_wait_warning", 20)
    assert parse_override(" port_range_warning = 0.25 ") == ("port_range_warning", 0.25)
    for bad in ("close_wait_warning", "nope=1", "close_wait_warning=lots"):
        with pytest.raises(ValueError):
            parse_override(bad)


def socktop(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "socktop", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_cli_threshold_flag_and_config_reach_the_json(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[thresholds]\nsyn_recv_warning = 7\nbogus = 1\n")
    result = socktop("--json", "--config", str(path), "--threshold", "close_wait_warning=3")
    assert result.returncode == 0
    document = json.loads(result.stdout)
    assert document["thresholds"]["close_wait_warning"] == 3 and document["thresholds"]["syn_recv_warning"] == 7
    assert result.stderr.count("\n") == 1 and "unknown threshold 'bogus'" in result.stderr
    for field in ("findings", "sysctl", "thresholds"):
        assert field in document
    assert set(document["sysctl"]) == {"settings", "counter_rates", "suggestions", "note"}
    assert document["sysctl"]["settings"]["net.ipv4.tcp_tw_recycle"] is None


def test_cli_rejects_a_bad_threshold_in_one_line() -> None:
    result = socktop("--once", "--threshold", "close_wait_warning=many")
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "whole number" in result.stderr
