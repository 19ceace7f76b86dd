"""The shipped deployment files: the systemd unit verifies and stays hardened, the DaemonSet keeps its
promises, the dashboard is well formed (its queries run against a real Prometheus in test_prometheus_e2e)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "socktop.service"
DAEMONSET = ROOT / "deploy" / "kubernetes" / "daemonset.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "socktop.json"


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_is_hardened_and_local() -> None:
    unit = directives(UNIT.read_text())
    assert unit["DynamicUser"] == ["yes"] and unit["NoNewPrivileges"] == ["yes"]
    assert unit["AmbientCapabilities"] == unit["CapabilityBoundingSet"] == ["CAP_SYS_PTRACE CAP_DAC_READ_SEARCH"]
    assert "--listen 127.0.0.1:9877" in unit["ExecStart"][0]
    assert unit["ProtectSystem"] == ["strict"] and unit["IPAddressAllow"] == ["localhost"]
    assert "ProtectProc" not in unit and "ProcSubset" not in unit and "PrivateNetwork" not in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_verifies(tmp_path: Path) -> None:
    socktop = Path(sys.executable).with_name("socktop")
    copy = tmp_path / "socktop.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/socktop", str(socktop)))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_daemonset_keeps_its_promises() -> None:
    text = DAEMONSET.read_text()
    for promise in ("hostNetwork: true", "hostPID: true", "readOnlyRootFilesystem: true", 'drop: ["ALL"]',
                    'add: ["SYS_PTRACE", "DAC_READ_SEARCH"]', "limits:", "kind: ServiceMonitor",
                    '"--listen", "127.0.0.1:9876"', "--upstream=http://127.0.0.1:9876/"):
        assert promise in text, promise
    assert "privileged: true" not in text and not re.search(r"add: .*SYS_ADMIN", text)


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert len(set(titles)) == len(titles)
    for panel in dashboard["panels"]:
        assert panel["targets"] and panel["description"], panel["title"]
        for target in panel["targets"]:
            assert re.search(r"socktop_|up\{", target["expr"]), target["expr"]
    for needed in ("Sockets by state, per host", "Top CLOSE_WAIT processes", "TIME_WAIT by destination address",
                   "Churn: connections opened and closed per second", "Closes per second by port", "Findings (active now)"):
        assert needed in titles
