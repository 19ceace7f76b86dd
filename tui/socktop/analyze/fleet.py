"""The fleet as Prometheus has it: hosts running `socktop serve`, ranked by what is wrong with them.

Below the UI and without a new dependency (urllib): the TUI's Fleet view
calls `fleet_view(prometheus)` and `host_detail(prometheus, instance)` from a
worker thread and shows what comes back. A Prometheus that does not answer,
or answers with an error, gives a `FleetView` whose ``error`` says so in one
line; nothing here raises for it.

Hosts are ranked by their worst active finding (critical, then warning,
then info; a host whose scrape fails counts as a warning: it is blind), then
by CLOSE_WAIT, then by TIME_WAIT. Trends come from range queries over the
last ``window`` seconds. Label values (instances, process names) are only
ever data: quoted as PromQL strings in queries, shlex-quoted in commands.
"""

from __future__ import annotations

import json
import shlex
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .commands import Command
from .findings import Severity

TREND_STATES = ("CLOSE_WAIT", "TIME_WAIT")
DOWN_RANK = Severity.WARNING.rank  # a host Prometheus cannot scrape: as bad as a warning
Opener = Callable[..., Any]


class FleetError(Exception):
    """Prometheus did not answer, or answered with an error: one line saying which."""


@dataclass(frozen=True, slots=True)
class FleetFinding:
    """One active finding on one host, as `socktop serve` exported it (socktop_finding)."""

    instance: str
    id: str
    kind: str
    severity: Severity
    subject: str
    name: str  # the process name for a process subject, else ""
    metric: str  # what ``value`` is: count, share, ratio, ...
    value: float


@dataclass(frozen=True, slots=True)
class HostRow:
    """One host of the fleet, with its numbers now and its trends."""

    instance: str
    up: bool
    worst: FleetFinding | None  # its most severe finding, None when it has none
    findings: int
    close_wait: int
    time_wait: int
    total: int
    trends: Mapping[str, tuple[float, ...]]  # state → values over the window, oldest first

    @property
    def rank(self) -> int:
        """Higher is worse: the worst finding's severity rank, DOWN_RANK if not scraped, -1 if neither."""
        ranks = [self.worst.severity.rank] if self.worst else []
        if not self.up:
            ranks.append(DOWN_RANK)
        return max(ranks, default=-1)


@dataclass(frozen=True, slots=True)
class FleetView:
    """Everything the Fleet view shows at one poll; ``error`` set when Prometheus failed."""

    url: str
    hosts: tuple[HostRow, ...] = ()
    findings: tuple[FleetFinding, ...] = ()  # most severe first
    taken_at: float = 0.0
    error: str = ""


@dataclass(frozen=True, slots=True)
class GroupRow:
    """A port or process row of one host: its label and sockets by state."""

    key: str  # "in:8080", "out:443", "pid:4242 java", ...
    counts: Mapping[str, int]  # kernel state name → sockets
    total: int


@dataclass(frozen=True, slots=True)
class HostDetail:
    """One host's ports and processes as Prometheus has them (top-N per state, as exported)."""

    instance: str
    ports: tuple[GroupRow, ...] = ()
    processes: tuple[GroupRow, ...] = ()
    error: str = ""


def check_url(text: str) -> str:
    """A Prometheus base URL (http or https, with a host), without a trailing slash; ValueError otherwise."""
    parsed = urllib.parse.urlsplit(text.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"invalid Prometheus URL {text!r}: expected http://HOST:9090 or https://...")
    return text.strip().rstrip("/")


def promql_string(value: str) -> str:
    """``value`` as a PromQL string literal: a label value from Prometheus never becomes query syntax."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class Prometheus:
    """The two HTTP API calls the Fleet view needs, with a timeout; errors become FleetError."""

    def __init__(self, url: str, timeout: float = 5.0, opener: Opener = urllib.request.urlopen) -> None:
        self.url = check_url(url)
        self.timeout = timeout
        self._open = opener

    def _get(self, path: str, params: dict[str, str]) -> Any:
        address = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with self._open(address, timeout=self.timeout) as reply:
                document = json.loads(reply.read(8 << 20))
        except urllib.error.HTTPError as exc:
            raise FleetError(f"Prometheus at {self.url} answered HTTP {exc.code}: {_api_error(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FleetError(f"Prometheus at {self.url} does not answer: {reason}") from None
        except ValueError:
            raise FleetError(f"{self.url} did not answer as Prometheus' HTTP API does") from None
        if not isinstance(document, dict) or document.get("status") != "success":
            raise FleetError(f"Prometheus at {self.url}: {document.get('error', 'query failed')}"
                             if isinstance(document, dict) else f"{self.url}: not a Prometheus answer")
        return document["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant vector: (labels, value) per series."""
        return [(row["metric"], float(row["value"][1])) for row in self._get("query", {"query": expr})["result"]]

    def query_range(self, expr: str, seconds: float, step: float) -> list[tuple[dict[str, str], tuple[float, ...]]]:
        """A range: (labels, values oldest first) per series, over the last ``seconds``."""
        end = time.time()
        data = self._get("query_range", {"query": expr, "start": f"{end - seconds:.3f}", "end": f"{end:.3f}",
                                         "step": f"{step:g}"})
        return [(row["metric"], tuple(float(v) for _, v in row["values"])) for row in data["result"]]


def _api_error(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read(65536)).get("error", exc.reason))
    except (ValueError, OSError, AttributeError):
        return str(exc.reason)


def fleet_view(prometheus: Prometheus, window: float = 1800.0, step: float = 60.0) -> FleetView:
    """Every host exporting socktop metrics (or scraped as job="socktop"), ranked; never raises FleetError."""
    try:
        up = {labels.get("instance", ""): value >= 1 for labels, value in
              prometheus.query('max by (instance) (up{job="socktop"})')}
        for labels, _ in prometheus.query("max by (instance) (socktop_build_info)"):
            up.setdefault(labels.get("instance", ""), True)
        counts: dict[tuple[str, str], int] = {}
        for labels, value in prometheus.query("sum by (instance, state) (socktop_sockets)"):
            counts[(labels.get("instance", ""), labels.get("state", ""))] = int(value)
        findings = sorted((_finding(labels, value) for labels, value in prometheus.query("socktop_finding")),
                          key=lambda f: (-f.severity.rank, -f.value, f.instance, f.id))
        trends: dict[tuple[str, str], tuple[float, ...]] = {}
        states = "|".join(TREND_STATES)
        for labels, values in prometheus.query_range(
                f'sum by (instance, state) (socktop_sockets{{state=~"{states}"}})', window, step):
            trends[(labels.get("instance", ""), labels.get("state", ""))] = values
    except FleetError as exc:
        return FleetView(prometheus.url, taken_at=time.time(), error=str(exc))
    hosts = []
    for instance, is_up in up.items():
        own = [f for f in findings if f.instance == instance]
        hosts.append(HostRow(
            instance=instance, up=is_up, worst=own[0] if own else None, findings=len(own),
            close_wait=counts.get((instance, "CLOSE_WAIT"), 0), time_wait=counts.get((instance, "TIME_WAIT"), 0),
            total=sum(count for (host, _), count in counts.items() if host == instance),
            trends={state: trends.get((instance, state), ()) for state in TREND_STATES},
        ))
    hosts.sort(key=lambda h: (-h.rank, -h.close_wait, -h.time_wait, h.instance))
    return FleetView(prometheus.url, tuple(hosts), tuple(findings), time.time())


def _finding(labels: dict[str, str], value: float) -> FleetFinding:
    try:
        severity = Severity(labels.get("severity", "info"))
    except ValueError:
        severity = Severity.INFO
    return FleetFinding(labels.get("instance", ""), labels.get("id", ""), labels.get("kind", ""), severity,
                        labels.get("subject", ""), labels.get("name", ""), labels.get("metric", ""), value)


def host_detail(prometheus: Prometheus, instance: str) -> HostDetail:
    """The host's exported ports and processes, most sockets first; never raises FleetError."""
    selector = f"instance={promql_string(instance)}"
    try:
        ports = _groups(prometheus.query(f"socktop_port_sockets{{{selector}}}"),
                        lambda labels: f"{labels.get('direction', '')}:{labels.get('port', '')}".lstrip(":"))
        processes = _groups(prometheus.query(f"socktop_process_sockets{{{selector}}}"),
                            lambda labels: f"{labels.get('process', '')} {labels.get('name', '')}".strip())
    except FleetError as exc:
        return HostDetail(instance, error=str(exc))
    return HostDetail(instance, ports, processes)


def _groups(series: list[tuple[dict[str, str], float]], key: Callable[[dict[str, str]], str]) -> tuple[GroupRow, ...]:
    merged: dict[str, dict[str, int]] = {}
    for labels, value in series:
        counts = merged.setdefault(key(labels), {})
        state = labels.get("state", "")
        counts[state] = counts.get(state, 0) + int(value)
    rows = [GroupRow(name, counts, sum(counts.values())) for name, counts in merged.items()]
    return tuple(sorted(rows, key=lambda row: (-row.total, row.key)))


def host_of(instance: str) -> str:
    """The host part of an instance label: ``web1:9877`` → ``web1``, ``[::1]:9877`` → ``::1``."""
    if instance.startswith("["):
        return instance[1:].partition("]")[0]
    host, sep, port = instance.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else instance


def ssh_command(instance: str) -> Command:
    """``ssh -t -- HOST socktop``: the TUI on that host (``--`` so a host named like an option stays a host)."""
    return Command(f"ssh -t -- {shlex.quote(host_of(instance))} socktop",
                   "open socktop on that host over SSH (-t: it needs a terminal)")
