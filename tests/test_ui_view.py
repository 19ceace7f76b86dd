"""The UI's pure layer, without an app: filter terms, drill-down selection, views, and which command each key copies."""

from __future__ import annotations

from dataclasses import replace

import pytest
from frozen import CRAWLED, HOSTILE_NAME, frozen_snapshot

from socktop.collect.records import TcpState
from socktop.ui import format as fmt
from socktop.ui.details import Selection, commands_for
from socktop.ui.view import CONNECTION, Level, Masks, Query, ViewSpec, build_view, select_records

SNAPSHOT = frozen_snapshot(hostile=True)


def test_owned_by_agrees_with_the_model_for_every_process():
    """The drill-down's selection must pick exactly what Snapshot.owners_of attributes (held and inferred)."""
    masks = Masks(SNAPSHOT)
    for pid in SNAPSHOT.ownership.processes:
        mine = [r for r, kept in zip(SNAPSHOT.sockets, masks.owned_by({pid})) if kept]
        model = [r for r in SNAPSHOT.sockets if pid in {p.pid for p in SNAPSHOT.owners_of(r).processes}]
        assert mine == model, pid


def test_levels_match_the_aggregates_they_come_from():
    aggregates = SNAPSHOT.aggregates
    for key, group in aggregates.by_port.items():
        assert len(select_records(SNAPSHOT, [Level("port", key)], Query())) == group.total, key
    for key in aggregates.by_process:
        kind, _, number = key.partition(":")
        kept = select_records(SNAPSHOT, [Level("process", key)], Query())
        if kind == "pid":  # held and inferred, as the model's own filter has it
            assert kept == SNAPSHOT.filtered(pid=int(number)).sockets, key
    for state, count in aggregates.by_state.items():
        assert len(select_records(SNAPSHOT, [Level("state", state.name)], Query())) == count


@pytest.mark.parametrize(("text", "expected"), [
    ("state:close-wait", 320),
    ("port:8080", 361),  # 320 CLOSE_WAIT + 40 ESTABLISHED + the listener
    ("pid:5151", 1520),  # the crawler: 20 held, 1,500 inferred TIME_WAIT
    ("proc:leaky", 391),
    ("user:redis", 12),  # another user's sockets, owner not visible
    (f"addr:{CRAWLED}", 1501),  # the crawler's 1,500 TIME_WAIT and one open connection
    ("close", 330),  # a free word: CLOSE_WAIT, and the half-closer's 10 (its name)
    ("9100", 6),  # digits: a port on either end (the listener and its 5 SYN_RECV)
    ("crawler 443", 1520),
    ("state:close-wait proc:nginx", 0),
])
def test_filter_terms(text, expected):
    query = Query.parse(text)
    assert not query.error
    assert len(select_records(SNAPSHOT, (), query)) == expected


def test_bad_terms_are_reported_not_fatal():
    query = Query.parse("state:nope port:http pid:x leaky")
    assert "unknown state" in query.error and "port: wants a number" in query.error
    assert query.terms == (("", "leaky"),)


def test_view_of_a_drill_down():
    spec = ViewSpec(levels=(Level("state", "CLOSE_WAIT"),), socket_sort="remote")
    view = build_view(SNAPSHOT, spec)
    assert [row.key for row in view.ports] == ["in:8080"]
    assert [row.key for row in view.processes] == ["pid:4242"]
    assert len(view.states) == len(SNAPSHOT.aggregates.by_state)  # not filtered by its own level
    assert list(map(CONNECTION, view.sockets)) == sorted(map(CONNECTION, view.sockets), key=lambda c: (c[2], c[3]))


def selection(**kwargs) -> Selection:
    return Selection(**{"focus": "states", **kwargs})


def test_copy_commands_follow_the_selection():
    leaky = SNAPSHOT.aggregates.by_process["pid:4242"]
    drill = (Level("state", "CLOSE_WAIT"), Level("port", "in:8080"), Level("process", "pid:4242"))
    copies = commands_for(selection(focus="processes", levels=drill, process=leaky, state=TcpState.CLOSE_WAIT))
    guard = "if [ \"$(sed 's/.*) //' /proc/4242/stat 2>/dev/null | cut -d' ' -f20)\" = 1001 ]; then kill"
    tail = "4242; else echo 'pid 4242 is no longer the process socktop saw: not signalled' >&2; fi  # comm=leaky-api"
    assert copies["kill"].command.line == f"{guard} -TERM {tail}"  # only while pid 4242 is that process
    assert copies["kill"].extra[0].line == f"{guard} -KILL {tail}"
    assert copies["kill"].what == "kill for pid 4242 leaky-api (320 CLOSE-WAIT of 391 sockets)"
    assert copies["lsof"].command.line == "lsof -nP -a -p 4242 -iTCP -sTCP:CLOSE_WAIT"
    assert copies["ss"].command.line == "ss -tanp state close-wait '( sport = :8080 )' | grep -F pid=4242,"
    assert copies["sysctl"].command is None and "no setting ends CLOSE_WAIT" not in copies["sysctl"].why_not
    outbound = commands_for(selection(levels=(Level("port", "out:443"),), query=Query.parse("state:time-wait")))
    assert outbound["ss"].command.line == "ss -tanp state time-wait '( dport = :443 )'"
    loose = commands_for(selection(query=Query.parse("crawler"), in_view=1520))
    assert loose["ss"].command.line == "ss -tanp" and "cannot filter on crawler" in loose["ss"].command.note
    assert loose["ss"].what == "ss: lists more than the 1,520 in view: ss cannot filter on crawler"
    assert commands_for(selection())["kill"].why_not == "select a process first (pane 3)"
    hidden = SNAPSHOT.aggregates.by_process["uid:998"]
    assert "not visible" in commands_for(selection(focus="processes", process=hidden))["lsof"].why_not


@pytest.mark.parametrize(("text", "line"), [
    ("port:8080", "ss -tanp '( sport = :8080 or dport = :8080 )'"),
    (f"addr:{CRAWLED} state:time-wait", f"ss -tanp state time-wait '( src {CRAWLED} or dst {CRAWLED} )'"),
    ("port:443 addr:::ffff:203.0.113.7", "ss -tanp '( sport = :443 or dport = :443 ) and "
                                         "( src 203.0.113.7 or dst 203.0.113.7 )'"),
])
def test_ss_says_the_filter_terms_it_can(text, line):
    query = Query.parse(text)
    in_view = len(select_records(SNAPSHOT, (), query))
    copy = commands_for(selection(query=query, in_view=in_view))["ss"]
    assert copy.command.line == line and copy.what == f"ss for the {in_view:,} sockets in view"


def test_a_whole_address_matches_itself_only():
    exact = select_records(SNAPSHOT, (), Query.parse("addr:198.51.100.1"))
    assert exact and all("198.51.100.1" in (r.local_addr, r.remote_addr) for r in exact)
    assert len(select_records(SNAPSHOT, (), Query.parse("198.51.100.1"))) > len(exact)  # a word: .10, .100, ... too
    assert len(select_records(SNAPSHOT, (), Query.parse("addr:198.51.100"))) > len(exact)  # part of one: text


def test_ss_with_a_pid_says_it_drops_the_inferred_sockets():
    view = build_view(SNAPSHOT, ViewSpec(levels=(Level("process", "pid:5151"),)))
    assert (len(view.sockets), view.inferred) == (1520, 1500)  # the crawler: 20 held, 1,500 TIME_WAIT inferred
    crawler = SNAPSHOT.aggregates.by_process["pid:5151"]
    copy = commands_for(selection(focus="processes", levels=view.spec.levels, process=crawler,
                                  in_view=len(view.sockets), inferred_in_view=view.inferred))["ss"]
    assert copy.command.line == "ss -tanp | grep -F pid=5151,"
    assert copy.what == "ss: lists fewer than the 1,520 in view: grep -F pid=5151, drops the 1,500 inferred (no pid in ss)"
    both = commands_for(selection(levels=view.spec.levels, query=Query.parse("crawler"), in_view=1520,
                                  inferred_in_view=1500))["ss"]
    assert both.what.startswith("ss: not the 1,520 in view: ss cannot filter on crawler; grep -F pid=5151,")
    assert build_view(SNAPSHOT, ViewSpec()).inferred == 0  # not counted when no pid narrows the view


def test_a_process_row_adds_up_with_its_inferred_sockets():
    """The slow acceptor's queued connections are ESTABLISHED without a descriptor: its row counts them in
    EST (marked inferred) as in its total, and as the drill-down into it finds them."""

    from frozen import _record

    from socktop.model.aggregate import aggregate
    from socktop.ui.panes import _held_inferred

    queued = [_record(TcpState.ESTABLISHED, ("10.0.0.5", 9100), ("198.51.100.9", 40000 + i), inode=0, uid=0)
              for i in range(9)]
    records = [*SNAPSHOT.sockets, *queued]
    snapshot = replace(SNAPSHOT, sockets=records, aggregates=aggregate(
        records, SNAPSHOT.ownership, SNAPSHOT.user_of, SNAPSHOT.aggregates.last_owners))
    row = next(row for row in build_view(snapshot, ViewSpec()).processes if row.key == "pid:9191")
    assert (row.total, row.established, row.inferred(TcpState.ESTABLISHED)) == (15, 9, 9)  # listener, 5 SYN-RECV, 9
    drill = select_records(snapshot, [Level("process", "pid:9191"), Level("state", "ESTABLISHED")], Query())
    assert len(drill) == row.established
    assert _held_inferred(9, 9).plain == " 9*" and _held_inferred(49, 9).plain == " 40+9*"
    assert _held_inferred(3, 0).plain == " 3" and _held_inferred(1500, 1500).sort == (1500,)


def test_a_hostile_name_stays_in_the_comment():
    group = SNAPSHOT.aggregates.by_process["pid:6666"]
    line = commands_for(selection(focus="processes", process=group))["kill"].command.line
    assert "then kill -TERM 6666; else" in line and "fi  # 'comm=" in line
    assert "\x1b" not in line and HOSTILE_NAME not in line


@pytest.mark.parametrize(("value", "text"), [(0, "0"), (99_999, "99,999"), (123_456, "123k"), (12_345_678, "12.3M")])
def test_counts(value, text):
    assert fmt.count(value) == text


def test_coverage_never_rounds_up_to_everything():
    from socktop.model.snapshot import coverage_text

    assert [coverage_text(x) for x in (1.0, 0.9997, 0.995, 0.29, 0.004, 0.0)] == ["100%", "99%", "99%", "29%", "<1%", "0%"]


def test_formatters():
    assert fmt.sparkline([0, 5, 10], 3) == "▁▅█" and fmt.sparkline([3, 3], 5) == "██" and fmt.sparkline([], 4) == ""
    assert fmt.timer(850) == "850ms" and fmt.timer(42_000) == "42s" and fmt.timer(185_000) == "3m05s"
    assert fmt.endpoint("::1", 80) == "[::1]:80" and fmt.endpoint("0.0.0.0", 0) == "*:*"
    assert fmt.endpoint("10.0.0.5", 22) == "10.0.0.5:22" and fmt.share(0.0004) == "<0.1%"


def test_a_port_drill_down_lists_what_the_row_counted() -> None:
    """Every Ports row, drilled into, lists exactly its total: the view uses the model's grouping rule."""
    snapshot = frozen_snapshot()
    for key, group in snapshot.aggregates.by_port.items():
        kept = select_records(snapshot, [Level("port", key)], Query())
        assert len(kept) == group.total and {snapshot.aggregates.port_key(record) for record in kept} == {key}, key


# --- trends -------------------------------------------------------------------------------------------

def _history(values, interval=0.5, state=TcpState.ESTABLISHED, first_seq=1):
    from socktop.model.snapshot import HistoryPoint

    return tuple(HistoryPoint(seq, 1e9 + seq * interval, 1000.0 + seq * interval, {state: value},
                              {"pid:1": {state: value}, "pid:2": {state: 1}})
                 for seq, value in enumerate(values, first_seq))


def test_a_trend_covers_the_whole_history_window_from_a_zero_baseline():
    """Ten minutes at 0.5 s (1,200 refreshes): every point is in a cell, the label says the span, a ±1%
    wobble draws flat, and a one-refresh burst (the max of its cell) is not averaged or skipped away."""
    from socktop.ui.view import bucket_max, trend_groups, trend_span

    values = [406 + i % 4 for i in range(1200)]
    points = _history(values)
    groups = trend_groups(points, 40)
    assert len(groups) <= 40 and sum(map(len, groups)) == 1200
    assert [p.seq for group in groups for p in group] == [p.seq for p in points]
    assert fmt.duration(trend_span(groups)) == "9m59s" and fmt.duration(40) == "40s"
    wobble = bucket_max(groups, lambda p: p.by_state[TcpState.ESTABLISHED])
    assert set(fmt.sparkline(wobble, len(wobble))) == {"█"}
    assert fmt.sparkline([406, 407, 409, 408], 4) == "████"  # was ▁▃█▆ between its own min and max
    assert fmt.sparkline([52, 52, 52], 3) == "███" and fmt.sparkline([0, 0], 2) == "▁▁"
    assert fmt.sparkline([0, 5, 10], 3) == "▁▅█" and fmt.sparkline([1, 100], 2) == "▂█"  # 1 is not 0

    values[700] = 4000
    burst = bucket_max(trend_groups(_history(values), 40), lambda p: p.by_state[TcpState.ESTABLISHED])
    line = fmt.sparkline(burst, len(burst))
    assert line.count("█") == 1 and len(set(line)) == 2  # the burst, and the steady count at a tenth of it


def test_trend_groups_stay_put_as_refreshes_arrive():
    """Groups are aligned on the refresh number: a finished group keeps its points from one refresh to
    the next, so the cached per-process maxima of the Processes pane stay right."""
    from socktop.ui.view import _GroupMaxima, trend_groups

    before = _history(range(100), first_seq=1)
    after = before[1:] + _history([500], first_seq=101)
    old, new = trend_groups(before, 8), trend_groups(after, 8)
    assert [[p.seq for p in g] for g in old[1:-1]] == [[p.seq for p in g] for g in new[1:-1]]
    maxima = _GroupMaxima()
    assert maxima.trends(old, ["pid:1", "pid:9"])["pid:1"] == tuple(max(p.seq - 1 for p in g) for g in old)
    assert maxima.trends(new, ["pid:1", "pid:9"]) == {
        "pid:1": tuple(max(p.by_process["pid:1"][TcpState.ESTABLISHED] for p in g) for g in new),
        "pid:9": (0,) * len(new)}
    assert maxima.trends(new, ["pid:1"])["pid:1"][-1] == 500


def test_the_panes_trends_span_the_history():
    """The States and Processes panes' mini trends are the same cells as the trend strip's: one per group
    of refreshes over the whole history, the max of each."""
    from socktop.ui.view import TREND_CELLS

    view = build_view(SNAPSHOT, ViewSpec())
    lengths = {len(row.trend) for row in (*view.states, *view.processes)}
    assert len(lengths) == 1 and 1 < lengths.pop() <= TREND_CELLS
    close_wait = next(row for row in view.states if row.state is TcpState.CLOSE_WAIT)
    assert close_wait.trend[-1] == SNAPSHOT.aggregates.by_state[TcpState.CLOSE_WAIT]
    assert close_wait.trend[0] < close_wait.trend[-1]  # the leak, from the oldest point on
    for row in view.processes:
        assert row.trend and row.trend[-1] >= sum(SNAPSHOT.history[-1].by_process.get(row.key, {}).values())


def test_the_drawer_words_the_owner_by_how_sure_it_is():
    """Never "Owner -: nobody", which reads like the Unix user: each OwnerKind has its own wording."""
    from socktop.model.aggregate import OwnerKind
    from socktop.ui.details import owner_text

    seen = {}
    for record in SNAPSHOT.sockets:
        seen.setdefault(SNAPSHOT.owners_of(record).kind, record)
    assert {OwnerKind.DIRECT, OwnerKind.INFERRED} <= set(seen)
    for kind, record in seen.items():
        text = owner_text(record, SNAPSHOT)
        assert "nobody" not in text and not text.startswith("-"), text
        processes = SNAPSHOT.owners_of(record).processes
        if kind is OwnerKind.DIRECT:
            assert text.startswith(f"{processes[0].name} (pid {processes[0].pid})") and "descriptor" in text
        elif kind is OwnerKind.INFERRED:
            assert text.startswith(f"~{processes[0].name} (pid {processes[0].pid}), inferred: ") and (
                "listens on" in text or "held this connection" in text)
        elif kind is OwnerKind.UNKNOWN:
            assert f"uid {record.uid}" in text and "run as root" in text
        else:
            assert text.startswith("no process")
    # the two kinds the frozen machine may not have, on a socket made to have them
    orphan = seen[OwnerKind.INFERRED]._replace(inode=0, local_port=1, remote_port=2)
    assert SNAPSHOT.owners_of(orphan).kind is OwnerKind.NONE
    assert owner_text(orphan, SNAPSHOT) == "no process (a TIME_WAIT or orphaned socket has none)"
    hidden = seen[OwnerKind.DIRECT]._replace(inode=987_654_321, uid=998)
    assert owner_text(hidden, SNAPSHOT) == ("a process socktop may not see (uid 998, user redis): run as root to "
                                            "name it")


def test_long_titles_are_cut_at_a_word_with_an_ellipsis():
    title = "port 43959 accept queue full: 9 waiting, backlog 8 (pid 25682 slow-acceptor)"
    assert fmt.ellipsize_words(title, 80) == title
    assert fmt.ellipsize_words(title, 62) == "port 43959 accept queue full: 9 waiting, backlog 8 (pid 25682…"
    assert fmt.ellipsize_words(title, 60) == "port 43959 accept queue full: 9 waiting, backlog 8 (pid…"
    assert fmt.ellipsize_words(title, 55) == "port 43959 accept queue full: 9 waiting, backlog 8…"
    assert fmt.ellipsize_words("averyveryverylongword and", 10) == "averyvery…"  # mid-word only when it must
    assert fmt.ellipsize_words(title, 1) == "…" and fmt.ellipsize_words(title, 0) == ""
    assert fmt.ellipsize_words("one two three", 8) == "one two…"  # "two" ends right at the cut: kept


def test_new_sockets_are_those_whose_4_tuple_the_refresh_before_did_not_have():
    """`with_new` over a whole view: a socket that differs from an old one in a single field of its 4-tuple
    (a port, an address) is new; the same 4-tuple in another state is not."""
    from socktop.collect.columns import ConnectionSet, SocketColumns
    from socktop.ui.view import with_new

    before = list(SNAPSHOT.sockets[:200])
    old = before[7]
    now = [old._replace(state=TcpState.TIME_WAIT), old._replace(remote_port=old.remote_port + 1),
           old._replace(local_addr="192.0.2.99"), old._replace(remote_addr="2001:db8::9"), *before[100:150]]
    fresh = build_view(replace(SNAPSHOT, sockets=now), ViewSpec())
    view = with_new(fresh, ConnectionSet.of(SocketColumns.from_records(before)))
    marked = {CONNECTION(record) for record, new in zip(view.sockets, view.new) if new}
    assert marked == {CONNECTION(record) for record in now[1:4]}
    assert with_new(fresh, ConnectionSet.of(SocketColumns.from_records([]))).new is None  # the first refresh
    empty = build_view(replace(SNAPSHOT, sockets=[]), ViewSpec())  # a view of no socket (an empty namespace)
    assert len(with_new(empty, ConnectionSet.of(SocketColumns.from_records(before))).new) == 0
