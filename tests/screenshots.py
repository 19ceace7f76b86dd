"""`make screenshots`: the README's SVGs of the TUI, drawn from the frozen snapshot (tests/frozen.py).

Writes screenshots/main.svg (200x50), drill-down-close-wait.svg, drawer-time-wait.svg,
medium-120x40.svg, small-80x24.svg and containers.svg (the Containers view, from the same snapshot on a
container host: tests/frozen_places.py). The frozen snapshot is deterministic, so the files
only change when the UI does.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from frozen import make_app, press, settle  # noqa: E402
from frozen_places import containers_snapshot  # noqa: E402

from socktop.model.snapshot import Snapshot  # noqa: E402

OUT = HERE.parent / "screenshots"

#: file name → (terminal size, keys pressed after the first refresh, title)
SHOTS: dict[str, tuple[tuple[int, int], tuple[str, ...], str]] = {
    "main.svg": ((200, 50), (), "socktop: a leaking API server, a crawler and a full accept queue"),
    "drill-down-close-wait.svg": ((200, 50), ("down",), "socktop: drill-down into CLOSE_WAIT"),
    "drawer-time-wait.svg": ((200, 50), ("d",), "socktop: the drawer on TIME_WAIT, with sysctl advice"),
    "medium-120x40.svg": ((120, 40), (), "socktop at 120x40: the findings strip, States, Processes, Sockets"),
    "small-80x24.svg": ((80, 24), (), "socktop at 80x24: the findings strip, States above Processes"),
}


async def shoot(name: str, size: tuple[int, int], keys: tuple[str, ...], title: str,
                snapshot: Snapshot | None = None) -> Path:
    app = make_app(snapshot)
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        await press(pilot, *keys)
        svg = app.export_screenshot(title=title)
    path = OUT / name
    path.write_text(svg, encoding="utf-8")
    return path


def main() -> int:
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="socktop-shots-")  # default thresholds and keys
    os.environ.pop("NO_COLOR", None)
    OUT.mkdir(exist_ok=True)
    for name, (size, keys, title) in SHOTS.items():
        path = asyncio.run(shoot(name, size, keys, title))
        print(f"wrote {path.relative_to(HERE.parent)} ({size[0]}x{size[1]})")
    path = asyncio.run(shoot("containers.svg", (200, 50), ("N",), "socktop: the Containers view (N) on a container host",
                             containers_snapshot()))
    print(f"wrote {path.relative_to(HERE.parent)} (200x50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
