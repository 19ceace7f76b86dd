"""The Fleet view: Prometheus querying below the UI (errors become one line, never a crash), the commands
it hands out, and the Fleet screen (pilot and snapshot over a constructed fleet: the real-Prometheus
half is in test_prometheus_e2e)."""

from __future__ import annotations

import socket

import pytest
from frozen import make_app, settle

from socktop.analyze.findings import Severity
from socktop.analyze.fleet import (
    FleetFinding, FleetView, GroupRow, HostDetail, HostRow, Prometheus, check_url, fleet_view, host_detail, host_of,
    kubectl_command, promql_string, ssh_command,
)
from socktop.ui.fleet import FleetScreen, FleetWatch, sparkline


def dead_url() -> str:
    """A loopback port nothing listens on (bound and closed: refused, at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_ssh_command_quotes_the_host_and_ends_options() -> None:
    assert ssh_command("web1:9877").line == "ssh -t -- web1 socktop"
    assert ssh_command("[2001:db8::1]:9877").line == "ssh -t -- 2001:db8::1 socktop"
    assert ssh_command("-oProxyCommand=touch /tmp/x:9877").line == "ssh -t -- '-oProxyCommand=touch /tmp/x' socktop"
    assert ssh_command("a;reboot").line == "ssh -t -- 'a;reboot' socktop"


def test_kubectl_command_finds_the_nodes_pod() -> None:
    assert kubectl_command("node-a").line == (
        'kubectl exec -it -n socktop "$(kubectl get pod -n socktop -l app.kubernetes.io/name=socktop '
        '--field-selector=spec.nodeName=node-a -o name)" -c socktop -- socktop')
    assert "spec.nodeName='x;reboot'" in kubectl_command("x;reboot:9877").line


def test_host_of() -> None:
    assert host_of("web1:9877") == "web1"
    assert host_of("web1") == "web1"
    assert host_of("[::1]:9877") == "::1"
    assert host_of("::1") == "::1"


def test_promql_string_keeps_label_values_data() -> None:
    assert promql_string('a"} or vector(1) or {x="') == '"a\\"} or vector(1) or {x=\\""'
    assert promql_string("back\\slash\n") == '"back\\\\slash\\n"'


def test_check_url() -> None:
    assert check_url("http://prom:9090/") == "http://prom:9090"
    for bad in ("prom:9090", "ftp://prom", "http://", "file:///etc/passwd"):
        with pytest.raises(ValueError):
            check_url(bad)


def test_a_prometheus_that_does_not_answer_is_one_line_not_an_exception() -> None:
    url = dead_url()
    view = fleet_view(Prometheus(url, timeout=2))
    assert view.hosts == () and "does not answer" in view.error and url in view.error
    assert "does not answer" in host_detail(Prometheus(url, timeout=2), "web1:9877").error


def test_something_else_answering_is_an_error_too() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        import threading

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>not prometheus</html>")

        thread = threading.Thread(target=answer)
        thread.start()
        view = fleet_view(Prometheus(url, timeout=5))
        thread.join(5)
    assert "did not answer as Prometheus" in view.error


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 0, 0]) == "▁▁▁"
    assert sparkline([5, 5]) == "██"
    assert sparkline([0, 4, 8]) == "▁▅█"
    assert len(sparkline(range(100), width=12)) == 12
    assert sparkline([0] * 50 + [9] + [0] * 49, width=10) == "▁▁▁▁▁█▁▁▁▁"  # a spike survives


def finding(instance: str, severity: Severity, kind: str, subject: str, name: str, value: float) -> FleetFinding:
    return FleetFinding(instance, f"{kind}:{subject}", kind, severity, subject, name, "count", value)


def constructed_fleet() -> FleetView:
    """Four hosts: a critical leak, a warning, a quiet one, one Prometheus cannot scrape; a hostile process name."""
    leak = finding("api-1:9877", Severity.CRITICAL, "close-wait-leak", "pid:4242", "leaky-api", 1500)
    tw = finding("batch-2:9877", Severity.WARNING, "time-wait-ports", "out:443", "", 0.62)
    hostile = finding("api-1:9877", Severity.WARNING, "close-wait-leak", "pid:7", "\x1b[31mred[/]", 120)
    trend = tuple(float(v) for v in range(0, 1500, 50))
    return FleetView("http://prometheus:9090", hosts=(
        HostRow("api-1:9877", True, leak, 2, 1620, 300, 9000, {"CLOSE_WAIT": trend, "TIME_WAIT": (300.0,) * 30}),
        HostRow("batch-2:9877", True, tw, 1, 4, 21000, 26000, {"CLOSE_WAIT": (4.0,) * 30,
                                                               "TIME_WAIT": tuple(range(0, 30000, 1000))}),
        HostRow("gone-3:9877", False, None, 0, 0, 0, 0, {"CLOSE_WAIT": (), "TIME_WAIT": ()}),
        HostRow("web-4:9877", True, None, 0, 2, 40, 800, {"CLOSE_WAIT": (2.0,) * 30, "TIME_WAIT": (40.0,) * 30}),
    ), findings=(leak, hostile, tw), taken_at=1e12)


def constructed_detail(instance: str) -> HostDetail:
    return HostDetail(instance, ports=(
        GroupRow("in:8080", {"ESTABLISHED": 700, "CLOSE_WAIT": 1500}, 2200),
        GroupRow("out:5432", {"ESTABLISHED": 40, "TIME_WAIT": 300}, 340),
    ), processes=(
        GroupRow("pid:4242 leaky-api", {"ESTABLISHED": 690, "CLOSE_WAIT": 1500}, 2190),
        GroupRow("pid:7 \x1b[31mred[/]", {"CLOSE_WAIT": 120}, 120),
    ))


def fleet_app(view: FleetView | None = None):  # type: ignore[no-untyped-def]
    app = make_app()
    app.fleet = FleetWatch("http://prometheus:9090", poll=lambda: view or constructed_fleet(),
                           detail=constructed_detail)
    return app


async def test_fleet_opens_first_ranks_hosts_and_drills() -> None:
    app = fleet_app()
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        assert [host.instance for host in screen.hosts] == ["api-1:9877", "batch-2:9877", "gone-3:9877", "web-4:9877"]
        await pilot.press("down", "enter")
        await settle(pilot)
        assert screen.drilled == "batch-2:9877" and screen.has_class("-drilled")
        await pilot.press("escape")
        assert screen.drilled is None
        await pilot.press("escape")
        assert not isinstance(app.screen, FleetScreen)


async def test_copy_key_gives_ssh_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    app = fleet_app()
    copied: list[str] = []
    monkeypatch.setattr(app, "copy_command", lambda text, what: copied.append(text))
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        await pilot.press("c", "k")
    assert copied == ["ssh -t -- api-1 socktop", kubectl_command("api-1:9877").line]


async def test_a_dead_prometheus_is_an_error_in_the_top_bar() -> None:
    app = make_app()
    app.fleet = FleetWatch(dead_url())
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, FleetScreen)
        assert "does not answer" in str(app.screen.query_one("#fleet-top").render())
        await pilot.press("escape")
        await settle(pilot)
        assert "does not answer" in app.fleet.error
        assert "does not answer" in str(app.query_one("#topbar").render())


async def test_a_hostile_instance_or_error_is_a_title_of_text_not_markup() -> None:
    """Border titles take markup: an instance label or error text with a stray closing tag must not
    crash the screen, and bracketed words must be shown as they are."""
    instance, error = "[/b]evil[bold]:9877", "[/x] scrape failed"
    view = FleetView("http://prometheus:9090", hosts=(
        HostRow(instance, True, None, 0, 1, 2, 3, {"CLOSE_WAIT": (1.0,), "TIME_WAIT": (2.0,)}),), taken_at=1e12)
    app = make_app()
    app.fleet = FleetWatch("http://prometheus:9090", poll=lambda: view,
                           detail=lambda name: HostDetail(name, error=error))
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        await pilot.press("enter")
        await settle(pilot)
        assert screen.drilled == instance
        title = screen.query_one("#fleet-ports")._border_title
        assert title is not None and title.plain == f"{instance}: ports · {error}"


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The top line's "polled at" in UTC, whatever the machine's zone."""
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_fleet_screen_snapshot(snap_compare, utc) -> None:  # type: ignore[no-untyped-def]
    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        await settle(pilot)

    assert snap_compare(fleet_app(), terminal_size=(120, 30), run_before=run_before)


def test_fleet_screen_drilled_snapshot(snap_compare, utc) -> None:  # type: ignore[no-untyped-def]
    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)

    assert snap_compare(fleet_app(), terminal_size=(120, 30), run_before=run_before)


@pytest.mark.parametrize("args, words", [
    (["--prometheus", "prom:9090"], "invalid Prometheus URL"),
    (["--prometheus", "http://prom:9090", "--json"], "not --once or --json"),
])
def test_bad_prometheus_flag_is_one_line_and_status_2(args: list[str], words: str) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "socktop", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1
