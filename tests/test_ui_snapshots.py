"""Snapshot tests (pytest-textual-snapshot) of the main screen, the drawer, help and a finding, at 80x24, 120x40
and 200x50: one per size class (small, medium, wide); the demo's findings are on the first screen of each.

Regenerate the baselines after an intended change with ``pytest tests/test_ui_snapshots.py --snapshot-update``
and look at the report before committing them.
"""

from __future__ import annotations

import pytest
from frozen import make_app, press, settle

SIZES = {"80x24": (80, 24), "120x40": (120, 40), "200x50": (200, 50)}

#: scene → keys pressed once the first refresh is on screen
SCENES = {
    "main": (),
    "drawer": ("d",),  # the drawer on TIME_WAIT (the States cursor), with its sysctl advice
    "help": ("question_mark",),
    "finding": ("5", "d"),  # the most severe finding, in the drawer
}


@pytest.fixture(autouse=True)
def clean_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("NO_COLOR", raising=False)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scene", SCENES)
def test_screen(snap_compare, scene, size):
    async def run_before(pilot) -> None:
        await settle(pilot)
        await press(pilot, *SCENES[scene])

    assert snap_compare(make_app(), terminal_size=SIZES[size], run_before=run_before)
