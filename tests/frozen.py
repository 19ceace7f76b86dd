"""A frozen, deterministic snapshot of a machine in trouble, for the UI tests, screenshots and UI benchmark.

It mirrors the demo scenario: a leaking API server piling up CLOSE_WAIT on
8080, a crawler leaving client-side TIME_WAIT towards 443, nginx with
server-side TIME_WAIT on 80, a half-closer in FIN_WAIT2, a slow acceptor
with SYN_RECV and a full accept queue, and sockets of another user whose
process we may not see. Everything (addresses, ports, pids, times) is
fixed, so two builds are equal and a screenshot is stable.

`frozen_snapshot(scale=...)` multiplies the populations (scale 1 is about
3,000 sockets; `synthetic_snapshot(50_000)` picks the scale for a total).
`FrozenSource` serves snapshots to the app the way `Engine` does.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import replace

from socktop.collect.kernelstate import KernelState
from socktop.collect.records import ProcessInfo, SocketRecord, TcpState, TimerKind
from socktop.model.aggregate import Ownership, aggregate
from socktop.model.churn import Churn, ChurnGroup
from socktop.model.snapshot import HistoryPoint, Snapshot, SourceInfo

AF4 = socket.AF_INET
HOST = "10.0.0.5"
T0 = 1_760_000_000.0  # the wall clock of the first history point
HISTORY_POINTS = 40

HOSTILE_NAME = 'x[bold]$(id)"q\'\x1b[31mred'

PROCESSES: dict[str, ProcessInfo] = {
    "leaky-api": ProcessInfo(4242, 1001, "leaky-api", "python3 -m leaky_api --port 8080", 1000, "app", 812, 1024),
    "crawler": ProcessInfo(5151, 1002, "crawler", "/usr/bin/crawler --fetch https://example.org", 1001, "crawl", 64, 1024),
    "nginx": ProcessInfo(6161, 1003, "nginx", "nginx: worker process", 33, "www-data", 300, 65536),
    "postgres": ProcessInfo(7171, 1004, "postgres", "postgres: app appdb 10.0.0.5(51000) idle", 113, "postgres", 90, 4096),
    "half-closer": ProcessInfo(8181, 1005, "half-closer", "python3 half_closer.py", 1000, "app", 40, 1024),
    "slow-acceptor": ProcessInfo(9191, 1006, "slow-acceptor", "python3 slow_acceptor.py --backlog 8", 1000, "app", 20, 1024),
    "sshd": ProcessInfo(1234, 1007, "sshd", "sshd: admin@pts/0", 0, "root", 12, 1024),
}

#: population → count at scale 1
BASE = {
    "leaky_close_wait": 320,
    "leaky_established": 40,
    "leaky_to_postgres": 30,
    "nginx_established": 120,
    "nginx_time_wait": 900,
    "crawler_established": 20,
    "crawler_time_wait": 1500,
    "half_closed": 10,
    "syn_recv": 5,
    "accept_queue": 8,
    "other_user": 12,
}

_inode = 100_000


def _next_inode() -> int:
    global _inode
    _inode += 1
    return _inode


def _record(state: TcpState, local: tuple[str, int], remote: tuple[str, int], *, inode: int, uid: int,
            recv_q: int = 0, send_q: int = 0, timer: TimerKind = TimerKind.NONE, timer_ms: int = 0) -> SocketRecord:
    return SocketRecord(AF4, state, local[0], local[1], remote[0], remote[1], recv_q, send_q, timer, timer_ms,
                        0, uid, inode)


CRAWLED = "203.0.113.7"  # the crawler's one destination: its TIME_WAIT eat that 4-tuple's ephemeral ports


def _remote(i: int) -> str:
    return f"203.0.113.{1 + i % 200}"


def _client(i: int) -> str:
    return f"198.51.100.{1 + i % 250}"


def _ephemeral(i: int) -> int:
    return 32768 + i % 28000


def frozen_snapshot(scale: float = 1.0, *, seq: int = HISTORY_POINTS, hostile: bool = False,
                    drop: Sequence[str] = ()) -> Snapshot:
    """The machine in trouble at refresh ``seq``. ``drop`` leaves processes out (by name);
    ``hostile`` adds a process whose name is made of markup, shell and an ANSI escape."""
    global _inode
    _inode = 100_000
    processes = {name: info for name, info in PROCESSES.items() if name not in drop}
    if hostile:
        processes["hostile"] = ProcessInfo(6666, 1666, HOSTILE_NAME, HOSTILE_NAME + " --serve", 1000, "app", 5, 1024)
    n = {key: max(1, int(round(count * scale))) for key, count in BASE.items()}
    records: list[SocketRecord] = []
    owner: dict[int, tuple[int, ...]] = {}
    last_owners: dict[tuple[str, int, str, int], tuple[int, ...]] = {}

    def held(name: str, record: SocketRecord) -> None:
        records.append(record)
        if name in processes:
            owner[record.inode] = (processes[name].pid,)

    def listener(name: str, port: int, recv_q: int = 0, send_q: int = 128) -> None:
        if name in processes:
            info = processes[name]
            held(name, _record(TcpState.LISTEN, ("0.0.0.0", port), ("0.0.0.0", 0), inode=_next_inode(),
                               uid=info.uid, recv_q=recv_q, send_q=send_q))

    listener("leaky-api", 8080)
    listener("nginx", 80, send_q=511)
    listener("postgres", 5432)
    listener("slow-acceptor", 9100, recv_q=n["accept_queue"] + 1, send_q=n["accept_queue"])
    listener("sshd", 22)
    if hostile:
        listener("hostile", 6666)
        held("hostile", _record(TcpState.ESTABLISHED, (HOST, 6666), ("192.0.2.66", 40666), inode=_next_inode(), uid=1000))
    uid = {name: info.uid for name, info in PROCESSES.items()}
    for i in range(n["leaky_close_wait"]):
        held("leaky-api", _record(TcpState.CLOSE_WAIT, (HOST, 8080), (_client(i), _ephemeral(i)),
                                  inode=_next_inode(), uid=uid["leaky-api"], recv_q=1))
    for i in range(n["leaky_established"]):
        held("leaky-api", _record(TcpState.ESTABLISHED, (HOST, 8080), (_client(i + 7), _ephemeral(i + 9000)),
                                  inode=_next_inode(), uid=uid["leaky-api"], timer=TimerKind.KEEPALIVE, timer_ms=7_100_000))
    for i in range(n["leaky_to_postgres"]):
        port = _ephemeral(i + 15000)
        held("leaky-api", _record(TcpState.ESTABLISHED, (HOST, port), (HOST, 5432), inode=_next_inode(), uid=uid["leaky-api"]))
        held("postgres", _record(TcpState.ESTABLISHED, (HOST, 5432), (HOST, port), inode=_next_inode(), uid=uid["postgres"]))
    for i in range(n["nginx_established"]):
        held("nginx", _record(TcpState.ESTABLISHED, (HOST, 80), (_client(i + 3), _ephemeral(i + 3000)),
                              inode=_next_inode(), uid=uid["nginx"], send_q=(i % 5) * 100))
    for i in range(n["nginx_time_wait"]):
        records.append(_record(TcpState.TIME_WAIT, (HOST, 80), (_client(i + 11), _ephemeral(i + 5000)), inode=0, uid=0,
                               timer=TimerKind.TIME_WAIT, timer_ms=60_000 - (i * 37) % 60_000))
    for i in range(n["crawler_established"]):
        held("crawler", _record(TcpState.ESTABLISHED, (HOST, _ephemeral(i + 20000)), (_remote(i), 443),
                                inode=_next_inode(), uid=uid["crawler"]))
    for i in range(n["crawler_time_wait"]):
        connection = (HOST, 50000 + i % 3000, CRAWLED, 443)
        records.append(_record(TcpState.TIME_WAIT, connection[:2], connection[2:], inode=0, uid=0,
                               timer=TimerKind.TIME_WAIT, timer_ms=60_000 - (i * 53) % 60_000))
        if "crawler" in processes:
            last_owners[connection] = (processes["crawler"].pid,)
    for i in range(n["half_closed"]):
        held("half-closer", _record(TcpState.FIN_WAIT2, (HOST, _ephemeral(i + 26000)), ("192.0.2.10", 9000),
                                    inode=_next_inode(), uid=uid["half-closer"]))
    for i in range(n["syn_recv"]):
        records.append(_record(TcpState.SYN_RECV, (HOST, 9100), (_client(i + 99), _ephemeral(i + 27000)), inode=0, uid=0,
                               timer=TimerKind.RETRANSMIT, timer_ms=1000 + i * 200))
    for i in range(n["other_user"]):
        records.append(_record(TcpState.ESTABLISHED, (HOST, _ephemeral(i + 27500)), ("192.0.2.20", 6379),
                               inode=_next_inode(), uid=998))

    ownership = Ownership({inode: pids for inode, pids in owner.items()},
                          {info.pid: info for info in processes.values()})
    aggregates = aggregate(records, ownership, _user_of, last_owners)
    history = _history(aggregates, seq)
    last = history[-1]
    return Snapshot(
        seq=seq, taken_at=last.taken_at, monotonic=last.monotonic, collect_seconds=0.012 * max(scale, 0.05),
        source=SourceInfo(host="demo-host", kernel="Linux 6.18.0", backend="netlink", backend_note="",
                          is_root=False, owner_note="run as root for all"),
        sockets=records, ownership=ownership, aggregates=aggregates, history=history, user_of=_user_of,
        kernel=KERNEL, churn=_churn(scale),
    )


CHURN_WINDOW = 10.0  # seconds of refreshes the rates are over


def _churn(scale: float) -> Churn:
    """Closes over the last 10 s as the populations imply: each TIME_WAIT lives 60 s, so the
    crawler closes 1,500 / 60 a second toward 443 and nginx 900 / 60 on 80; the leak, 3 a second."""
    rates = {"out:443": BASE["crawler_time_wait"] / 60, "in:80": BASE["nginx_time_wait"] / 60, "in:8080": 3.0}
    owners = {"out:443": "pid:5151", "in:80": "pid:6161", "in:8080": "pid:4242"}

    def group(key: str, per_second: float, exact: float = 0.0) -> ChurnGroup:
        return ChurnGroup(key, round(per_second * scale * CHURN_WINDOW), per_second * scale,
                          round(exact * scale * CHURN_WINDOW))

    total = sum(rates.values()) * scale
    return Churn(
        closes=round(total), opens=round(total), unseen=round(BASE["crawler_time_wait"] / 60 * scale), seconds=CHURN_WINDOW,
        closes_per_second=total, opens_per_second=total,
        by_port={key: group(key, rate) for key, rate in rates.items()},
        by_remote={CRAWLED: group(CRAWLED, rates["out:443"])},
        by_process={owners[key]: group(owners[key], rate, rate / 2) for key, rate in rates.items()},
        by_destination={f"{CRAWLED}:443": group(f"{CRAWLED}:443", rates["out:443"])},
        overruns=0, lost=False, time_wait_owners={}, closed_by_port={}, closed_by_process={},
    )


KERNEL = KernelState(
    sysctls={
        "net.ipv4.tcp_tw_reuse": "2", "net.ipv4.tcp_tw_reuse_delay": "1000", "net.ipv4.tcp_timestamps": "1",
        "net.ipv4.tcp_max_tw_buckets": "3200", "net.ipv4.ip_local_port_range": "50000 52999",
        "net.ipv4.tcp_fin_timeout": "60", "net.ipv4.tcp_keepalive_time": "7200", "net.ipv4.tcp_keepalive_intvl": "75",
        "net.ipv4.tcp_keepalive_probes": "9", "net.ipv4.tcp_max_orphans": "8192", "net.ipv4.tcp_orphan_retries": "0",
        "net.ipv4.tcp_syncookies": "1", "net.ipv4.tcp_max_syn_backlog": "512", "net.core.somaxconn": "4096",
        "net.ipv4.tcp_tw_recycle": None,
    },
    counters={"TcpExtListenOverflows": 0, "TcpExtListenDrops": 0, "TcpExtTCPTimeWaitOverflow": 0,
              "TcpActiveOpens": 100_000, "TcpPassiveOpens": 50_000},
    sockstat={"inuse": 600, "orphan": 0, "tw": 2400, "alloc": 700, "mem": 40},
)


def _user_of(uid: int) -> str:
    return {998: "redis", 0: "root"}.get(uid, str(uid))


def _history(aggregates, seq: int) -> tuple[HistoryPoint, ...]:
    """HISTORY_POINTS refreshes one second apart, ending at ``seq``: CLOSE_WAIT grows
    steadily towards today's count (the leak), TIME_WAIT wobbles, ESTABLISHED is flat."""
    points = []
    for back in range(HISTORY_POINTS - 1, -1, -1):
        ratio = 1.0 - back / (HISTORY_POINTS * 1.2)
        by_state = {}
        for state, count in aggregates.by_state.items():
            if state is TcpState.CLOSE_WAIT:
                by_state[state] = int(count * ratio)
            elif state is TcpState.TIME_WAIT:
                by_state[state] = int(count * (0.8 + 0.2 * ((HISTORY_POINTS - back) % 7) / 6)) if back else count
            else:
                by_state[state] = count
        by_process = {}
        for key, group in aggregates.by_process.items():
            counts = dict(group.counts)
            if group.inferred_time_wait:
                counts[TcpState.TIME_WAIT] = counts.get(TcpState.TIME_WAIT, 0) + group.inferred_time_wait
            if TcpState.CLOSE_WAIT in counts:
                counts[TcpState.CLOSE_WAIT] = int(counts[TcpState.CLOSE_WAIT] * ratio)
            by_process[key] = counts
        point_seq = seq - back
        points.append(HistoryPoint(point_seq, T0 + point_seq, 1000.0 + point_seq, by_state, by_process, {}))
    return tuple(points)


def synthetic_snapshot(total: int, seq: int = HISTORY_POINTS) -> Snapshot:
    """About ``total`` sockets with the same populations (for the UI benchmark)."""
    return frozen_snapshot(scale=total / sum(BASE.values()), seq=seq)


class FrozenSource:
    """Serves snapshots like `Engine.refresh`: the next of ``snapshots`` each call, then the last again.

    With a single snapshot, each refresh returns it with ``seq`` counting up,
    so the app sees a live but unchanging machine.
    """

    def __init__(self, snapshots: Sequence[Snapshot] | Snapshot | None = None,
                 fail: Callable[[int], Exception | None] | None = None) -> None:
        if snapshots is None:
            snapshots = frozen_snapshot()
        self.snapshots = [snapshots] if isinstance(snapshots, Snapshot) else list(snapshots)
        self.calls = 0
        self.interval: float | None = None
        self.fail = fail
        self.backend_name = "frozen"

    def refresh(self) -> Snapshot:
        self.calls += 1
        error = self.fail(self.calls) if self.fail else None
        if error is not None:
            raise error
        snapshot = self.snapshots[min(self.calls, len(self.snapshots)) - 1]
        if self.calls > len(self.snapshots):
            snapshot = replace(snapshot, seq=snapshot.seq + self.calls - len(self.snapshots))
        return snapshot

    def set_interval(self, interval: float) -> None:
        self.interval = interval


# --- the app over a frozen source, for pilot tests, snapshot tests and screenshots ---------------------

def make_app(snapshots: Sequence[Snapshot] | Snapshot | None = None, *, interval: float = 10.0,
             clipboard: str = "osc52", keymap: dict[str, str] | None = None,
             fail: Callable[[int], Exception | None] | None = None):
    """A SocktopApp over a `FrozenSource` (long interval: one refresh unless a test asks for more)."""
    from socktop.ui.app import SocktopApp

    return SocktopApp(FrozenSource(snapshots, fail=fail), interval=interval, clipboard_mode=clipboard,
                      keymap=keymap)


async def settle(pilot) -> None:
    """Let the poller and view threads finish and their messages be handled."""
    for _ in range(3):
        await pilot.pause()
        for _ in range(1000):  # the app's background threads (poller, view builder, clipboard), bounded
            if not getattr(pilot.app, "background_jobs", 0):
                break
            await pilot.pause(0.01)
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def press(pilot, *keys: str) -> None:
    """Press each key and let what it starts (a view rebuild, a copy) finish before the next."""
    for key in keys:
        await pilot.press(key)
        await settle(pilot)
