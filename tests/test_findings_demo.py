"""The findings on real sockets: the demo scenario's leak and crawler, seen through Engine and analyze().

The demo runs faster than its defaults (10 leaks/s, 150 connections/s), so
that the test ends within about 15 s; the leak is found once the short
trend window (8 s) has seen it rise steadily. Other tests and
other demos may share the loopback: every check is tied to this demo's
pids and ports.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from socktop.analyze.config import load_thresholds
from socktop.analyze.sysctl import recent
from socktop.analyze.findings import Analysis, Finding, Severity, Subject, analyze
from socktop.collect.records import TcpState
from socktop.demo import DemoScenario
from socktop.model.engine import Engine
from socktop.model.history import HistoryPoint

WITHIN_SECONDS = 60.0  # found in about 10 s; a loaded machine's refreshes come late
LEAK_RATE = 10.0  # CLOSE_WAIT a second at leaky-api (its client, api-client, is paced at this rate)


def await_names(demo: DemoScenario, timeout: float = 30.0) -> None:
    """Workers rename themselves just after they start; the owner cache keeps the name it saw first."""
    deadline = time.monotonic() + timeout
    for role, pid in demo.pids.items():
        while Path(f"/proc/{pid}/comm").read_text().strip() != role[:15]:
            assert time.monotonic() < deadline, f"{role} did not rename itself"
            time.sleep(0.02)


def leak_rate_bound(points: Sequence[HistoryPoint], lateness: dict[float, float]) -> float:
    """The highest least-squares slope (`rate_per_second`) the demo's schedule allows over ``points``.

    api-client is paced (demo.worker.paced): one connection in flight, and after a stall it catches up one
    second at most, so from one read to a later one the count rises by at most LEAK_RATE a second plus
    LEAK_RATE + 2. A refresh late under load read its count up to ``lateness`` (refresh start to stamp)
    before its point's stamp, which shortens the early part of the window. The slope is a weighted sum of
    the counts, weights (t - mean) / spread: the worst case puts the catch-up on the later points and the
    lateness on the earlier ones.
    """
    times = [point.monotonic for point in points]
    mean = sum(times) / len(times)
    spread = sum((t - mean) ** 2 for t in times)
    weights = [(t - mean) / spread for t in times]
    catch_up = (LEAK_RATE + 2) * sum(w for w in weights if w > 0)
    late = LEAK_RATE * sum(-w * lateness[t] for w, t in zip(weights, times) if w < 0)
    return LEAK_RATE + catch_up + late


def wanted(analysis: Analysis, demo: DemoScenario) -> tuple[Finding | None, Finding | None]:
    leak_key = f"pid:{demo.pids['leaky-api']}"
    leak = next((f for f in analysis.findings if f.kind == "close-wait-leak" and f.subject.key == leak_key
                 and " CLOSE_WAIT leak +" in f.title), None)
    crawl = next((f for f in analysis.findings if f.kind == "time-wait-ports"
                  and f.subject == Subject("port", f"out:{demo.ports['cache-srv']}")), None)
    return leak, crawl


def test_demo_triggers_the_close_wait_leak_and_time_wait_findings(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[thresholds]\ntime_wait_group = 1000\n")  # the short trend window finds the leak
    thresholds, warnings = load_thresholds(config)
    assert warnings == ()
    lifetime = WITHIN_SECONDS + 15  # the leak rises for as long as the test may look
    with DemoScenario(duration=lifetime, leak_rate=LEAK_RATE, leak_limit=int(LEAK_RATE * lifetime),
                      crawl_rate=150.0) as demo:
        await_names(demo)
        engine = Engine(interval=1.0)
        started = time.monotonic()
        leak = crawl = None
        lateness: dict[float, float] = {}  # by point stamp: how long before it the refresh began
        while (leak is None or crawl is None) and time.monotonic() - started < WITHIN_SECONDS:
            demo.check()
            began = time.monotonic()
            snapshot = engine.refresh()
            lateness[snapshot.monotonic] = snapshot.monotonic - began
            analysis = analyze(snapshot, thresholds)
            leak, crawl = wanted(analysis, demo)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - snapshot.monotonic)))
        assert leak is not None, "no rising CLOSE_WAIT leak found for leaky-api"
        assert crawl is not None, "no TIME_WAIT finding toward cache-srv"

        assert f"/s in pid {demo.pids['leaky-api']} leaky-api" in leak.title
        assert leak.severity in (Severity.WARNING, Severity.CRITICAL)
        rate = float(leak.metrics["rate_per_s"])  # type: ignore[arg-type]
        assert 5 < rate <= leak_rate_bound(recent(snapshot.history, thresholds.trend_min_seconds), lateness)
        assert "peers that closed: 127.0.0.1" in " ".join(leak.evidence)
        listed = subprocess.run(leak.ss.line, shell=True, capture_output=True, text=True, timeout=20).stdout
        later = time.monotonic() - snapshot.monotonic
        held = snapshot.aggregates.by_process[f"pid:{demo.pids['leaky-api']}"].counts[TcpState.CLOSE_WAIT]
        # ss ran a moment later, and the leak goes on at LEAK_RATE (up to leak_limit)
        assert held - 5 <= len(listed.splitlines()) <= held + LEAK_RATE * (later + 1) + 5

        assert "this host closes first (client side)" in crawl.evidence[0]
        assert "opened by" in " ".join(crawl.evidence)  # the crawler, when a refresh caught one of its connections
        assert crawl.actions[0].line == f"ss -tanp '( dst 127.0.0.1 and dport = :{demo.ports['cache-srv']} )'"
        if snapshot.kernel and snapshot.kernel.sysctls.get("net.ipv4.tcp_tw_reuse") == "2":
            assert crawl.severity is Severity.INFO and crawl.suggestions == ()  # loopback: ports are reused
        queue = [f for f in analysis.findings if f.subject == Subject("port", f"in:{demo.ports['slow-acceptor']}")]
        assert [f.kind for f in queue] == ["accept-queue"]
