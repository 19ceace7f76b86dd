"""End to end: a real `prometheus` scraping a real `socktop serve` every second, with the shipped rules,
while a loopback process leaks CLOSE_WAIT; and every Grafana panel's query run against it.

Everything is on 127.0.0.1 with ports the kernel picked; each process runs under `timeout`, so nothing
outlives the test even if pytest is killed. The CLOSE_WAIT alert runs from a test-only copy of the
shipped rules whose `for:` and range are seconds instead of minutes (the expression is the same).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "socktop-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "socktop.json"
POPULATION = str(Path(__file__).with_name("fleet_population.py"))
LIFETIME = 600  # seconds: every process of the stack stops by itself after this long (killed 5 s after a TERM)
LEAK_START, LEAK_RATE, LEAK_MAX = 14, 2, 30  # the leak alert wants 20 and rising: the rise starts at once

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="prometheus is not installed (Debian/Ubuntu: apt install prometheus; "
                                       ".ci/run installs it)")


@dataclass(slots=True)
class Stack:
    prometheus: str  # base URL
    leaker: subprocess.Popen[str]

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.prometheus}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as reply:
            document = json.loads(reply.read())
        assert document["status"] == "success", document
        return document["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]


def fast_rules(text: str) -> str:
    """The shipped rules with the CLOSE_WAIT leak alert's minutes made seconds (for: 15m → 2s, [10m] → [30s])."""
    head, sep, block = text.partition("      - alert: SocktopCloseWaitLeak")
    block, rest_sep, rest = block.partition("\n      - alert: ")
    block = block.replace("for: 15m", "for: 2s").replace("[10m]", "[30s]")
    assert "for: 2s" in block and "[30s]" in block
    return head + sep + block + rest_sep + rest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(what: str, probe, timeout: float = 90.0, step: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except OSError as exc:  # not up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")


def stop(process: subprocess.Popen) -> None:  # type: ignore[type-arg]
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("prometheus")
    processes: list[subprocess.Popen] = []  # type: ignore[type-arg]
    try:
        leaker = subprocess.Popen(
            [sys.executable, POPULATION, "leak", "socktop-leaky", str(LEAK_START), str(LEAK_RATE), str(LEAK_MAX),
             str(LIFETIME)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        processes.append(leaker)
        assert leaker.stdout.readline().startswith("ready")
        exporter = subprocess.Popen(
            ["timeout", "-k", "5", str(LIFETIME), sys.executable, "-m", "socktop", "serve", "--listen", "127.0.0.1:0",
             "--interval", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        processes.append(exporter)
        match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", exporter.stderr.readline())
        assert match, "socktop serve did not start"
        (home / "rules.yml").write_text(fast_rules(RULES.read_text()))
        (home / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [rules.yml]\n"
            f"scrape_configs:\n  - job_name: socktop\n    static_configs: [{{targets: ['127.0.0.1:{match[1]}']}}]\n")
        port = free_port()
        prometheus = subprocess.Popen(
            ["timeout", "-k", "5", str(LIFETIME), "prometheus", f"--config.file={home / 'prometheus.yml'}",
             f"--storage.tsdb.path={home / 'data'}", f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=home)
        processes.append(prometheus)
        base = f"http://127.0.0.1:{port}"
        wait_for("prometheus ready", lambda: urllib.request.urlopen(base + "/-/ready", timeout=2).status == 200)
        stack = Stack(base, leaker)
        wait_for("a first scrape of the leak", lambda: stack.query(
            f'socktop_process_sockets{{process="pid:{leaker.pid}", state="CLOSE_WAIT"}}'))
        leaker.send_signal(signal.SIGUSR1)  # the leak grows from now on, while Prometheus watches
        yield stack
    finally:
        for process in reversed(processes):
            if process.stdin:
                process.stdin.close()
            stop(process)


def ss_close_wait(pid: int) -> int:
    lines = subprocess.run(["ss", "-tanpH", "state", "close-wait"], capture_output=True, text=True,
                           check=True, timeout=60).stdout.splitlines()
    return sum(1 for line in lines if f"pid={pid}," in line)


def test_close_wait_alert_reaches_pending_or_firing(stack: Stack) -> None:
    process = f"pid:{stack.leaker.pid}"

    def alert() -> list[dict]:
        return [a for a in stack.api("alerts")["alerts"]
                if a["labels"].get("alertname") == "SocktopCloseWaitLeak" and a["labels"].get("process") == process]

    (found, *_) = wait_for("SocktopCloseWaitLeak for the leaking process", alert)
    assert found["state"] in ("pending", "firing")
    assert found["labels"]["name"] == "socktop-leaky"
    assert "never called close()" in found["annotations"]["description"]


def test_leaking_process_series_equals_ss(stack: Stack) -> None:
    pid = stack.leaker.pid
    wait_for("the leak to reach its plateau", lambda: ss_close_wait(pid) == LEAK_MAX, timeout=120)
    expr = f'socktop_process_sockets{{process="pid:{pid}", state="CLOSE_WAIT"}}'

    def series() -> float | None:
        result = stack.query(expr)
        return float(result[0]["value"][1]) if result else None

    wait_for("the series to catch up", lambda: series() == LEAK_MAX, timeout=60)
    assert series() == ss_close_wait(pid) == LEAK_MAX


def test_every_rule_evaluates_without_error(stack: Stack) -> None:
    wait_for("a rule evaluation", lambda: all(rule.get("lastEvaluation", "").startswith("2")
                                              for group in stack.api("rules")["groups"] for rule in group["rules"]))
    for group in stack.api("rules")["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(f"{panel['title']} {target['refId']}", target["expr"])
               for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(METRIC, LABEL): the query behind it is METRIC
            queries.append((f"${variable['name']}", re.sub(r"label_values\((.*), \w+\)", r"\1", variable["definition"])))
    return queries


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables as Grafana would fill them for 'All' hosts."""
    return expr.replace("$instance", ".*").replace("$__rate_interval", "1m")


@pytest.mark.parametrize("title, expr", dashboard_queries(), ids=[title for title, _ in dashboard_queries()])
def test_dashboard_query_runs(stack: Stack, title: str, expr: str) -> None:
    wait_for("two scrapes", lambda: stack.query("count_over_time(up[10s]) >= 2"))
    stack.query(grafana_to_promql(expr))  # raises on a PromQL error


def test_dashboard_shows_the_leak(stack: Stack) -> None:
    queries = dict(dashboard_queries())
    rows = wait_for("the CLOSE_WAIT panel", lambda: [
        row for row in stack.query(grafana_to_promql(queries["Top CLOSE_WAIT processes A"]))
        if row["metric"]["process"] == f"pid:{stack.leaker.pid}"])
    assert rows[0]["metric"]["name"] == "socktop-leaky"
    assert stack.query(grafana_to_promql(queries["Sockets by state, per host A"]))
    assert stack.query(grafana_to_promql(queries["$instance"]))


def test_fleet_view_and_host_detail_from_the_real_prometheus(stack: Stack) -> None:
    from socktop.analyze.fleet import FleetView, Prometheus, fleet_view, host_detail

    prometheus = Prometheus(stack.prometheus)
    wait_for("the leak at its plateau", lambda: ss_close_wait(stack.leaker.pid) == LEAK_MAX, timeout=120)

    def caught_up() -> FleetView | None:
        view = fleet_view(prometheus, window=60, step=1)
        return view if view.hosts and view.hosts[0].trends["CLOSE_WAIT"] and view.hosts[0].close_wait >= LEAK_MAX \
            else None

    view = wait_for("the fleet view to show the leak", caught_up)
    assert not view.error
    (host,) = view.hosts
    assert host.up and host.instance.startswith("127.0.0.1:") and host.close_wait >= LEAK_MAX
    key = f"pid:{stack.leaker.pid} socktop-leaky"
    rows = wait_for("the leaker in the host's processes", lambda: [
        row for row in host_detail(prometheus, host.instance).processes if row.key == key and
        row.counts.get("CLOSE_WAIT") == LEAK_MAX])
    assert rows[0].counts["CLOSE_WAIT"] == ss_close_wait(stack.leaker.pid)


async def test_fleet_screen_over_the_real_prometheus(stack: Stack) -> None:
    from frozen import make_app, settle

    from socktop.ui.fleet import FleetScreen, FleetWatch

    app = make_app()
    app.fleet = FleetWatch(stack.prometheus)
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, FleetScreen) and not app.fleet.error
        assert [host.instance for host in screen.hosts] and screen.hosts[0].up
        await pilot.press("enter")
        await settle(pilot)
        assert screen.drilled == screen.hosts[0].instance
        table = screen.query_one("#fleet-processes")
        cells = [str(cell) for row in table.ordered_rows for cell in table.get_row(row.key)]
        assert f"pid:{stack.leaker.pid} socktop-leaky" in cells
