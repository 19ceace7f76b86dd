"""`socktop serve` against real loopback sockets: what /metrics says, how it is served, how it stops."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from socktop.collect.records import DISPLAY_STATES, TcpState
from socktop.demo.builders import SocketFarm
from socktop.model.engine import Engine
from socktop.serve.metrics import OTHER, label_text, series_bound, top_per_state
from socktop.serve.server import Exporter, bind, parse_listen

POPULATION = str(Path(__file__).with_name("fleet_population.py"))
Sample = tuple[str, dict[str, str], float]


def scrape(base: str, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(base + "/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.headers["Content-Type"], reply.read().decode()


def samples(text: str) -> list[Sample]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: list[Sample], metric: str, **labels: str) -> float | None:
    matches = [v for n, l, v in found if n == metric and all(l.get(k) == w for k, w in labels.items())]
    assert len(matches) <= 1, matches
    return matches[0] if matches else None


@pytest.fixture
def served() -> Iterator[tuple[Exporter, str]]:
    """An exporter collecting every 0.5 s, served on a free loopback port from threads of this process."""
    exporter = Exporter(Engine("auto", 0.5), 0.5)
    server = bind("127.0.0.1", 0, exporter)
    stop = threading.Event()
    threads = [threading.Thread(target=exporter.run, args=(stop,), daemon=True),
               threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        yield exporter, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        for thread in threads:
            thread.join(10)


def fresh(exporter: Exporter) -> None:
    """Wait for a collection that started after this call (the one in flight may have started before)."""
    published = exporter.published
    collected_after(exporter, (published.snapshot.seq if published else 0) + 1)


def collected_after(exporter: Exporter, seq: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        published = exporter.published
        if published is not None and published.snapshot.seq > seq:
            return
        time.sleep(0.05)
    raise AssertionError(f"no collection after {seq}: {exporter.last_error}")


def ss_close_wait(pid: int) -> int:
    lines = subprocess.run(["ss", "-tanpH", "state", "close-wait"], capture_output=True, text=True,
                           check=True, timeout=60).stdout.splitlines()
    return sum(1 for line in lines if f"pid={pid}," in line)


def test_metrics_count_this_process_close_wait_as_ss_does(served: tuple[Exporter, str]) -> None:
    exporter, base = served
    with SocketFarm() as farm:
        built = farm.close_wait(7)
        fresh(exporter)
        content_type, text = scrape(base)
        found = samples(text)
        in_ss = ss_close_wait(os.getpid())
    assert content_type.startswith("text/plain")
    me = f"pid:{os.getpid()}"
    assert value(found, "socktop_process_sockets", process=me, state="CLOSE_WAIT") == in_ss == 7
    assert value(found, "socktop_port_sockets", port=str(built.port), direction="in", state="CLOSE_WAIT") == 7
    assert value(found, "socktop_sockets", state="CLOSE_WAIT") >= 7
    assert value(found, "socktop_process_fds", process=me) > 7
    assert value(found, "socktop_process_fd_limit", process=me) == float(soft_fd_limit())
    assert value(found, "socktop_backend_info", backend="netlink") == 1
    assert value(found, "socktop_build_info") == 1
    assert 0 < value(found, "socktop_owner_coverage_ratio") <= 1
    assert value(found, "socktop_kernel_tcp_total", counter="TcpExtListenOverflows") is not None
    assert value(found, "socktop_sockstat", field="tw") is not None


def soft_fd_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_scrapes_never_collect(served: tuple[Exporter, str]) -> None:
    """Concurrent scrapes read the last collection: the collection count follows the clock, not the scrapes."""
    exporter, base = served
    collected_after(exporter, 0)
    before, started = exporter.collections, time.monotonic()
    texts: list[str] = []
    threads = [threading.Thread(target=lambda: texts.append(scrape(base)[1])) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    ticks = (time.monotonic() - started) / exporter.interval  # a loaded machine serves 20 scrapes slowly
    assert len(texts) == 20
    assert exporter.collections - before <= ticks + 2  # the clock's ticks; one per scrape would add 20 more


def test_openmetrics_when_asked_health_and_snapshot(served: tuple[Exporter, str]) -> None:
    exporter, base = served
    collected_after(exporter, 0)
    content_type, text = scrape(base, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and text.endswith("# EOF\n")
    with urllib.request.urlopen(base + "/healthz", timeout=10) as reply:
        assert reply.status == 200 and reply.read().startswith(b"ok")
    with urllib.request.urlopen(base + "/snapshot.json", timeout=10) as reply:
        document = json.loads(reply.read())
    assert document["schema"] == "socktop/1" and "findings" in document and "sockets" not in document
    assert document["processes"] and all(process["cmdline"] is None for process in document["processes"])
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(base + "/nothing", timeout=10)
    assert missing.value.code == 404


def test_health_fails_when_collections_stall() -> None:
    exporter = Exporter(Engine("auto", 1.0), 1.0)
    assert exporter.health() == (False, "no collection yet")
    exporter.collect_once()
    assert exporter.health()[0]
    exporter.last_success -= 10  # as if the collector had been stuck for 10 s (3 intervals allowed)
    healthy, line = exporter.health()
    assert not healthy and "last good collection" in line


HOSTILE = 'ev"l\\n}{x="1'  # quote, backslash, braces: 15 bytes, as much as comm holds


def test_hostile_process_name_stays_literal(served: tuple[Exporter, str]) -> None:
    exporter, base = served
    child = subprocess.Popen([sys.executable, POPULATION, "leak", HOSTILE, "2", "0", "2", "300"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().startswith("ready")
        fresh(exporter)
        _, text = scrape(base)
    finally:
        child.stdin.close()
        child.wait(10)
    escaped = HOSTILE.replace("\\", "\\\\").replace('"', '\\"')
    assert f'name="{escaped}"' in text  # escaped by the client library, nothing else added or removed
    assert value(samples(text), "socktop_process_sockets", process=f"pid:{child.pid}", state="CLOSE_WAIT") == 2
    assert value(samples(text), "socktop_process_sockets", name=HOSTILE, state="CLOSE_WAIT") == 2


def test_label_text_keeps_valid_text_and_escapes_undecodable_bytes() -> None:
    assert label_text('a"b\\c\x1b') == 'a"b\\c\x1b'
    assert label_text(b"ab\xff".decode("utf-8", "surrogateescape")) == "ab\\xff"


def test_top_per_state_folds_the_rest_into_other() -> None:
    groups = [((f"p{i}",), {TcpState.CLOSE_WAIT: i, TcpState.LISTEN: 1}) for i in range(1, 6)]
    kept = top_per_state(groups, 2, (OTHER,))
    close_wait = [(labels, count) for labels, state, count in kept.series if state is TcpState.CLOSE_WAIT]
    assert close_wait == [(("p5",), 5), (("p4",), 4), ((OTHER,), 6)]
    listen = [(labels, count) for labels, state, count in kept.series if state is TcpState.LISTEN]
    assert listen == [(("p1",), 1), (("p2",), 1), ((OTHER,), 3)]  # ties: the smaller labels first
    assert kept.kept == {("p5",), ("p4",), ("p1",), ("p2",)}


def test_series_bound_grows_with_top_only() -> None:
    assert series_bound(10) < series_bound(20) < 1500
    assert series_bound(10) >= 3 * len(DISPLAY_STATES) * 11


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9877") == ("127.0.0.1", 9877)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("9877", ":9877", "localhost", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def socktop(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "socktop", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)  # type: ignore[call-overload]


def healthy(process: subprocess.Popen[str]) -> str:
    """The base URL a `socktop serve --listen 127.0.0.1:0` said it serves, once /healthz answers 200."""
    line = process.stderr.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
    assert match, line
    base = f"http://127.0.0.1:{match[1]}"
    deadline = time.monotonic() + 90
    while True:  # the first collection may take a moment on a busy machine
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=5):
                return base
        except urllib.error.HTTPError:
            assert time.monotonic() < deadline, "no good collection within 90 s"
            time.sleep(0.2)


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:99999", "256.1.1.1:9877"])
def test_bad_listen_is_one_line_and_status_2(listen: str) -> None:
    process = socktop("serve", "--listen", listen)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert len(stderr.strip().splitlines()) == 1 and "listen" in stderr and "Traceback" not in stderr


def test_busy_port_is_one_line_and_status_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        process = socktop("serve", "--listen", f"127.0.0.1:{busy.getsockname()[1]}")
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2 and len(stderr.strip().splitlines()) == 1 and "in use" in stderr


def test_serve_answers_then_stops_on_sigterm() -> None:
    process = socktop("serve", "--listen", "127.0.0.1:0", "--interval", "1")
    try:
        base = healthy(process)
        assert "socktop_sockets" in scrape(base)[1]
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in process.stderr.read()


def test_help_says_what_a_wider_bind_exposes() -> None:
    process = socktop("serve", "--help")
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    for words in ("127.0.0.1", "process", "TLS", "reverse proxy", "never runs a program"):
        assert words in stdout


def unshare_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=60).returncode == 0


@pytest.mark.skipif(not unshare_works(), reason="needs unshare -n (root or user namespaces) to build 50k "
                                                "sockets in a private network namespace")
def test_series_stay_under_the_bound_at_50k_sockets_5000_ports_300_processes() -> None:
    """Real sockets in a private netns: 300 forked processes, each 17 listeners (5,100 ports) and
    83 ESTABLISHED pairs plus 3 CLOSE_WAIT; one collection, every series counted as a scrape sees it."""
    script = ('ip link set lo up && sysctl -qw net.ipv4.ip_local_port_range="10000 65000" && '
              f'exec "{sys.executable}" "{POPULATION}" measure 300 17 83 3 10 0 0')
    result = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["sockets"] >= 50_000
    assert figures["listening_ports"] >= 5_000
    assert figures["processes"] == 300
    assert figures["close_wait"] == 900
    assert figures["series"] <= figures["bound"] == series_bound(10)


def test_top_comes_from_the_config_file_unless_given(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[serve]\ntop = 0\n")
    process = socktop("serve", "--config", str(config), "--listen", "127.0.0.1:0")
    try:
        warning = process.stderr.readline()
        assert "[serve] top must be 1-1000" in warning and "using 10" in warning
        assert "serving" in process.stderr.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    assert process.returncode == 0


def test_closes_are_counted_per_port_and_process(served: tuple[Exporter, str]) -> None:
    exporter, base = served
    fresh(exporter)
    if exporter.published.snapshot.churn is None:
        pytest.skip(f"no destroy feed here: {exporter.published.snapshot.source.churn_note}")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        port = server.getsockname()[1]
        fresh(exporter)
        for _ in range(25):  # connect, accept, then both ends reset: each socket is freed at once
            client = socket.create_connection(("127.0.0.1", port))
            accepted, _ = server.accept()
            for end in (accepted, client):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                end.close()
        fresh(exporter)
        fresh(exporter)
        found = samples(scrape(base)[1])
    assert value(found, "socktop_port_closed_total", port=str(port), direction="in") >= 25
    assert value(found, "socktop_process_closed_total", process=f"pid:{os.getpid()}") >= 25
    assert value(found, "socktop_connections_closed_total") >= 50


def test_tracked_close_counters_stay_bounded_and_monotonic() -> None:
    from socktop.serve.metrics import _Tracked

    tracked = _Tracked()
    always = lambda labels: True  # noqa: E731
    tracked.count([(("a",), 5), (("b",), 3), (("c",), 1)], top=2, idle=2, alive=always)
    assert dict(tracked.series((OTHER,))) == {("a",): 5, ("b",): 3, (OTHER,): 1}
    for _ in range(3):  # b stays quiet past idle: dropped; c takes its place; other never shrinks
        tracked.count([(("a",), 1), (("c",), 2)], top=2, idle=2, alive=always)
    assert dict(tracked.series((OTHER,))) == {("a",): 8, ("c",): 2, (OTHER,): 5}
    tracked.count([(("d",), 7)], top=2, idle=2, alive=lambda labels: labels != ("a",))
    assert dict(tracked.series((OTHER,))) == {("c",): 2, ("d",): 7, (OTHER,): 5}


def test_readme_states_the_bound() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"**{series_bound(10)} series at `--top 10`**" in readme


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    home = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=home, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=socktop test CA")
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        (home / f"{name}.ext").write_text(extra + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return home


def test_tls_with_client_certificates(certificates: Path) -> None:
    import ssl

    process = socktop("serve", "--listen", "127.0.0.1:0", "--interval", "1",
                      "--tls-cert", str(certificates / "server.pem"), "--tls-key", str(certificates / "server.key"),
                      "--tls-client-ca", str(certificates / "ca.pem"))
    try:
        match = re.search(r"https://127\.0\.0\.1:(\d+)/metrics", process.stderr.readline())
        assert match
        url = f"https://127.0.0.1:{match[1]}/healthz"
        trusting = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):  # no client certificate
            urllib.request.urlopen(url, context=trusting, timeout=10).read()
        trusting.load_cert_chain(str(certificates / "client.pem"), str(certificates / "client.key"))
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url, context=trusting, timeout=10) as reply:
                    assert reply.status == 200
                    break
            except urllib.error.HTTPError:  # 503 until the first collection
                assert time.monotonic() < deadline
                time.sleep(0.2)
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP is not answered as HTTP
            urllib.request.urlopen(url.replace("https", "http"), timeout=10).read()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    assert process.returncode == 0


@pytest.mark.parametrize("args", [["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"],
                                  ["--tls-cert", "/etc/hostname", "--tls-key", "/etc/hostname"],
                                  ["--tls-cert", "x.pem"]])
def test_bad_tls_files_are_one_line_and_status_2(args: list[str]) -> None:
    process = socktop("serve", "--listen", "127.0.0.1:0", *args)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2 and len(stderr.strip().splitlines()) == 1 and "tls" in stderr.lower()


def test_a_failing_collection_is_counted_and_the_next_one_still_runs() -> None:
    engine = Engine("auto", 1.0)
    exporter = Exporter(engine, 1.0)
    exporter.collect_once()
    real_refresh = engine.refresh
    engine.refresh = lambda: (_ for _ in ()).throw(ValueError("boom"))  # type: ignore[method-assign]
    exporter.collect_once()
    assert exporter.errors == 1 and "boom" in exporter.last_error and exporter.published is not None
    engine.refresh = real_refresh  # type: ignore[method-assign]
    exporter.collect_once()
    assert exporter.errors == 1 and exporter.last_error == "" and exporter.collections == 3


SIGNALLED = """
import os, signal
from socktop.serve.server import stop_on_signals
stop = stop_on_signals()
with stop._cond:  # where the main thread is inside stop.wait(), or inside a first signal's stop.set()
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
print(stop.wait(10), flush=True)
"""


def test_a_signal_that_comes_while_the_stop_event_is_busy_still_stops() -> None:
    """The handlers run in the main thread between two steps of whatever it does, maybe inside the stop
    event's own lock; timeout(1) sends TERM twice (to the command, then to its group). A handler that
    took that lock waited for itself: serve hung for good, orphaned once the test killed its timeout."""
    result = subprocess.run([sys.executable, "-c", SIGNALLED], capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == ["True"], result.stderr
