"""UI benchmark: what the TUI costs beside the engine (`make bench` runs it after tests/perf/bench.py).

    python tests/perf/ui_bench.py [--cpu-seconds 30] [--presses 120] [--no-real] [--cpu-cases incident:20000,...]

Prints, with the issue's targets:
- start-up to first frame (a real terminal, tmux, when there is one; else headless);
- applying one refresh of 50,000 sockets, from the message being posted to the
  screen being painted, against the collector's own time at that size;
- keypress latency (p50, p95) while refreshes of 50,000 real sockets run (the incident mix);
- socktop's CPU use over 30 s at a 1 s refresh: the incident mix (demo.builders.build_incident)
  at 20,000 and 50,000 sockets, then 20,000 idle ESTABLISHED pairs.
It asserts nothing: figures on a shared machine are for reading, not gating. Run it in a private
network namespace: `unshare -n sh -c 'ip link set lo up; make bench'`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import await_time_wait_gone  # noqa: E402  (this folder is the script's: on sys.path)
from frozen import FrozenSource, settle, synthetic_snapshot  # noqa: E402

from textual import events  # noqa: E402

from socktop.demo.builders import build_incident, build_population  # noqa: E402
from socktop.model.engine import Engine  # noqa: E402
from socktop.ui.app import Refreshed, SocktopApp  # noqa: E402

SIZE = (200, 50)
TARGETS = {
    "startup": "start-up to first frame <= 1.5 s",
    "apply": "apply one 50k refresh <= 0.5x the collector's time at 50k",
    "keys": "keypress answered within 50 ms (p95) during refresh, 50k incident",
    "cpu": "1 s refresh, 30 s: incident <= 10% of one core at 20k, <= 20% at 50k",
}
BUILDERS = {"incident": build_incident, "idle": build_population}
CPU_CASES = "incident:20000,incident:50000,idle:20000"
#: the population lives in the benchmark's own network namespace: as root socktop would read every
#: namespace on the machine by default, other people's sockets included (`--netns all`)
SOCKTOP = "-m socktop --netns self"
#: a tmux server of the benchmark's own, started from it: a server someone started elsewhere (the default
#: socket) would run socktop in that server's network namespace, not beside the population
TMUX = ["tmux", "-L", f"socktop-bench-{os.getpid()}"]


class TimedApp(SocktopApp):
    """Records the time from `Refreshed` posted to the screen painted after it, and from a key's
    arrival to the screen painted after its handler ran (and whether a refresh was running)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.apply_times: list[float] = []
        self.key_times: list[tuple[float, bool, str]] = []
        self.pending_keys: deque[tuple[float, bool, str]] = deque()

    def on_refreshed(self, message: Refreshed) -> None:
        # Textual then calls SocktopApp.on_refreshed itself (handlers run down the MRO): no super() here
        self.call_after_refresh(lambda: self.apply_times.append(time.perf_counter() - message.posted))

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key) and not event.is_forwarded:
            self.pending_keys.append((time.perf_counter(), self._refreshing, event.key))
        await super().on_event(event)

    def key_handled(self) -> None:
        """Called by the key handlers (wrapped below): the response is the next paint."""
        if self.pending_keys:
            started, refreshing, key = self.pending_keys.popleft()
            self.call_after_refresh(lambda: self.key_times.append((time.perf_counter() - started, refreshing, key)))


def _timed(cls: type, name: str) -> None:
    handler = getattr(cls, name)

    @functools.wraps(handler)
    def wrapper(self, *args, **kwargs):
        result = handler(self, *args, **kwargs)
        self.app.key_handled()
        return result

    setattr(cls, name, wrapper)


def time_key_handlers() -> None:
    """Wrap the handlers of the keys the benchmark presses, so their answers can be timed."""
    from socktop.ui.table import LineTable

    _timed(LineTable, "action_move")  # every pane, the sockets list too
    _timed(LineTable, "action_page")
    _timed(TimedApp, "action_focus_pane")


class AlternatingSource(FrozenSource):
    """Two different 50k snapshots in turn, so every refresh changes counts, rows and the socket list."""

    def refresh(self):
        self.calls += 1
        snapshot = self.snapshots[self.calls % len(self.snapshots)]
        from dataclasses import replace

        return replace(snapshot, seq=snapshot.seq + self.calls)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


# --- start-up -------------------------------------------------------------------------------------

def new_session(name: str, *arguments: str) -> None:
    """tmux new-session, retried: the server of a session just killed may still be exiting."""
    for attempt in range(5):
        result = subprocess.run([*TMUX, "new-session", "-d", "-s", name, "-x", str(SIZE[0]), "-y", str(SIZE[1]),
                                 *arguments], capture_output=True, text=True)
        if result.returncode == 0:
            return
        time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"tmux new-session failed: {result.stderr.strip()}")


def startup_in_tmux(runs: int = 3) -> tuple[list[float], list[float]]:
    """Seconds from spawning `socktop` to its first frame, and to its first data, seen by capture-pane."""
    frames, data = [], []
    for run in range(runs):
        name = f"socktop-bench-{os.getpid()}-{run}"
        new_session(name, "sleep 30")
        try:
            time.sleep(0.3)
            command = f"exec {shlex.quote(sys.executable)} {SOCKTOP}"
            started = time.perf_counter()
            subprocess.run([*TMUX, "respawn-pane", "-k", "-t", name, command], check=True)
            frame = None
            deadline = started + 15
            while time.perf_counter() < deadline:
                screen = subprocess.run([*TMUX, "capture-pane", "-p", "-t", name], capture_output=True,
                                        text=True).stdout
                now = time.perf_counter() - started
                if frame is None and screen.startswith("socktop"):
                    frame = now
                if " sockets" in screen.splitlines()[0] if screen else False:
                    frames.append(frame if frame is not None else now)
                    data.append(now)
                    break
                time.sleep(0.01)
        finally:
            subprocess.run([*TMUX, "kill-session", "-t", name], capture_output=True)
    return frames, data


async def startup_headless() -> float:
    started = time.perf_counter()
    app = SocktopApp(Engine(), interval=1.0)
    async with app.run_test(size=SIZE) as pilot:
        while app.first_frame_at is None:
            await pilot.pause(0.01)
        return app.first_frame_at - started


# --- applying a 50k refresh --------------------------------------------------------------------------

async def apply_times(refreshes: int) -> tuple[list[float], int]:
    snapshots = [synthetic_snapshot(50_000, seq=100), synthetic_snapshot(51_000, seq=100)]
    app = TimedApp(AlternatingSource(snapshots), interval=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        while len(app.apply_times) < refreshes + 1:
            await pilot.pause(0.1)
        await pilot.press("4")  # the sockets list is on screen in any case; focus it too
        return app.apply_times[1:], len(app.snapshot.sockets)


def collector_time(engine: Engine, runs: int = 7) -> float:
    engine.refresh()
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        engine.refresh()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


# --- keys during refreshes ---------------------------------------------------------------------------

async def key_latencies(engine: Engine, presses: int) -> tuple[list[float], list[float]]:
    """Latency of cursor keys, drill-downs and pane switches while the real engine refreshes every 0.5 s.

    Keys are sent as a terminal would, without waiting for the app (as `Pilot.press` does, which adds
    its own idle waits), about every 90 ms, so that many land while a refresh is running."""
    time_key_handlers()
    app = TimedApp(engine, interval=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        keys = [("down", None), ("down", None), ("up", None), ("4", "4"), ("down", None), ("pagedown", None),
                ("3", "3"), ("down", None), ("1", "1"), ("up", None)]
        for index in range(presses):
            key, char = keys[index % len(keys)]
            event = events.Key(key, char)
            event.set_sender(app)
            app._driver.send_message(event)
            await asyncio.sleep(0.09)
        await pilot.pause(1.0)
    return [entry[0] for entry in app.key_times], [entry[0] for entry in app.key_times if entry[1]]


# --- CPU -------------------------------------------------------------------------------------------

def cpu_in_tmux(seconds: float) -> float:
    """socktop's CPU (user + system) over ``seconds`` as a share of one core, in a real terminal."""
    name = f"socktop-cpu-{os.getpid()}"
    config = tempfile.mkdtemp(prefix="socktop-bench-")
    new_session(name, f"-eXDG_CONFIG_HOME={config}", "sleep 600")
    try:
        time.sleep(0.3)
        subprocess.run([*TMUX, "respawn-pane", "-k", "-t", name,
                        f"exec {shlex.quote(sys.executable)} {SOCKTOP} --interval 1"], check=True)
        pid = int(subprocess.run([*TMUX, "display-message", "-p", "-t", name, "#{pane_pid}"],
                                 capture_output=True, text=True, check=True).stdout)
        time.sleep(5)  # start-up and the first full owner scan are not the steady state
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        before, started = cpu(), time.monotonic()
        time.sleep(seconds)
        return (cpu() - before) / (time.monotonic() - started)
    finally:
        subprocess.run([*TMUX, "kill-session", "-t", name], capture_output=True)


async def cpu_headless(engine: Engine, seconds: float) -> float:
    app = SocktopApp(engine, interval=1.0)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(3)
        before, started = time.process_time(), time.monotonic()
        await pilot.pause(seconds)
        return (time.process_time() - before) / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-seconds", type=float, default=30.0)
    parser.add_argument("--presses", type=int, default=120)
    parser.add_argument("--refreshes", type=int, default=10)
    parser.add_argument("--no-real", action="store_true", help="skip what needs real socket populations")
    parser.add_argument("--cpu-cases", default=CPU_CASES, help="population:size pairs whose CPU use is measured")
    options = parser.parse_args()
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="socktop-bench-")
    tmux = shutil.which("tmux") is not None

    print("== socktop UI benchmark ==")
    if tmux:
        frames, data = startup_in_tmux()
        if frames:
            print(f"  start-up to first frame (tmux)       {statistics.median(frames) * 1000:8.0f} ms median "
                  f"(max {max(frames) * 1000:.0f}); first data {statistics.median(data) * 1000:.0f} ms   "
                  f"[{TARGETS['startup']}]")
        else:
            print("  start-up to first frame (tmux)       no data on screen within 15 s in any of the runs")
    else:
        print(f"  start-up to first frame (headless)   {asyncio.run(startup_headless()) * 1000:8.0f} ms   "
              f"[{TARGETS['startup']}]")

    applies, sockets = asyncio.run(apply_times(options.refreshes))
    apply_median = statistics.median(applies)
    print(f"  apply one refresh, {sockets:,} sockets  {apply_median * 1000:8.1f} ms median "
          f"(max {max(applies) * 1000:.1f}, {len(applies)} refreshes)")
    if options.no_real:
        return 0

    await_time_wait_gone()
    with build_incident(50_000):
        engine = Engine(interval=0.5)
        collect = collector_time(engine)
        print(f"  collector refresh at 50k incident    {collect * 1000:8.1f} ms median")
        print(f"  apply / collector                    {apply_median / collect:8.2f}    [{TARGETS['apply']}]")
        all_times, during = asyncio.run(key_latencies(engine, options.presses))
        print(f"  (table during the key test: {len(engine.refresh().sockets):,} sockets; "
              f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")
        print(f"  keypress latency, 50k, 0.5 s refresh {percentile(all_times, 0.5) * 1000:8.1f} ms p50, "
              f"{percentile(all_times, 0.95) * 1000:.1f} ms p95, max {max(all_times) * 1000:.1f} "
              f"({len(all_times)} presses)")
        if during:
            print(f"  ... of those during a refresh        {percentile(during, 0.5) * 1000:8.1f} ms p50, "
                  f"{percentile(during, 0.95) * 1000:.1f} ms p95 ({len(during)} presses)   [{TARGETS['keys']}]")

    for case in options.cpu_cases.split(","):
        population, _, size = case.partition(":")
        await_time_wait_gone()
        with BUILDERS[population](int(size)):
            before = len(Engine().refresh().sockets)
            if tmux:
                share = cpu_in_tmux(options.cpu_seconds)
                where = "tmux"
            else:
                share = asyncio.run(cpu_headless(Engine(interval=1.0), options.cpu_seconds))
                where = "headless"
            after = len(Engine().refresh().sockets)
            print(f"  CPU, {population} {int(size):,}, 1 s refresh ({where}) {share * 100:6.1f} % of one core over "
                  f"{options.cpu_seconds:g} s (table: {before:,} sockets before, {after:,} after; "
                  f"load {os.getloadavg()[0]:.2f})   [{TARGETS['cpu']}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
