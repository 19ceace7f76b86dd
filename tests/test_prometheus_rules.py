"""The shipped Prometheus rules: valid (promtool check rules) and every alert unit-tested, firing and not
firing (promtool test rules tests/prometheus/socktop-rules.test.yml)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "socktop-rules.yml"
UNIT_TESTS = ROOT / "tests" / "prometheus" / "socktop-rules.test.yml"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool is not installed (Debian/Ubuntu: apt install prometheus; "
                                           ".ci/run installs it)")


@needs_promtool
def test_rules_are_valid() -> None:
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    result = subprocess.run(["promtool", "test", "rules", str(UNIT_TESTS)], capture_output=True, text=True,
                            timeout=120, cwd=UNIT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.M))
    cases = re.findall(r"alertname: (\w+)\n\s*exp_alerts:( \[\])?", UNIT_TESTS.read_text())
    firing = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    assert len(alerts) >= 6
    assert alerts == firing == quiet


def test_every_alert_says_what_it_means_and_the_first_command() -> None:
    blocks = re.split(r"^\s*- alert: ", RULES.read_text(), flags=re.M)[1:]
    for block in blocks:
        assert "summary:" in block and "description:" in block, block[:60]
        assert "First: " in block, block[:60]
