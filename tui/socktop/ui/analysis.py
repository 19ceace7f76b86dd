"""The UI's side of the analysis layer: run it in the poller, and pick out what concerns a selection.

Glue only: findings, sysctl suggestions and every command line come from
`socktop.analyze`; this module reads the thresholds once, calls
`analyze` (in the poller thread) and matches findings to pane rows.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from ..analyze.config import DEFAULT_THRESHOLDS, Thresholds
from ..analyze.findings import Analysis, Finding, analyze
from ..analyze.sysctl import Suggestion
from ..collect.records import TcpState
from ..collect.tools import ss_has_bound_inactive
from ..model.snapshot import Snapshot

SEVERITIES = ("critical", "warning", "info")


class Analyzer:
    """`analyze` with the user's thresholds (the config file, then --threshold flags, read once at start;
    the app shows the config's warnings as notifications)."""

    def __init__(self, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
        self.thresholds = thresholds

    def analyze(self, snapshot: Snapshot) -> Analysis:
        ss_has_bound_inactive()  # a drawer's ss line may need it: asked here, in the poller, once a process
        return analyze(snapshot, self.thresholds)


def findings_of(analysis: Analysis | None) -> tuple[Finding, ...]:
    return analysis.findings if analysis is not None else ()


def severity_counts(analysis: Analysis | None) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITIES, 0)
    for finding in findings_of(analysis):
        counts[finding.severity.value] += 1
    return counts


def row_key(key: TcpState | str) -> str:
    """A finding subject's key as a pane row key (states are keyed by name)."""
    return key.name if isinstance(key, TcpState) else str(key)


def subject_of(finding: Finding) -> tuple[str, str]:
    """(kind, pane row key) of what a finding concerns: ("state", "TIME_WAIT"), ("port", "out:443"), ..."""
    return finding.subject.kind, row_key(finding.subject.key)


def levels_of(finding: Finding) -> tuple[tuple[str, str], ...]:
    """The drill-down a finding stands for, as (kind, row key) pairs: its subject, then its state when the
    sockets behind it are those of one state (its ``ss`` names a state; a descriptor finding's does not)."""
    kind, key = subject_of(finding)
    levels = [(kind, key)]
    if kind != "state" and "state" in shlex.split(finding.ss.line.partition("|")[0]):
        levels.append(("state", finding.state.name))
    return tuple(levels)


def finding_by_id(analysis: Analysis | None, finding_id: str | None) -> Finding | None:
    return next((finding for finding in findings_of(analysis) if finding.id == finding_id), None)


def related(analysis: Analysis | None, kind: str, key: str | None, state: TcpState | None = None,
            ) -> tuple[Finding, ...]:
    """The findings about one row; for a state, also those whose sockets are in that state."""
    if key is None:
        return ()
    return tuple(finding for finding in findings_of(analysis)
                 if subject_of(finding) == (kind, key) or (kind == "state" and finding.state is state))


def suggestions(findings: Sequence[Finding]) -> tuple[Suggestion, ...]:
    """Their sysctl suggestions, most severe finding first, one per key."""
    unique: dict[str, Suggestion] = {}
    for finding in findings:
        for suggestion in finding.suggestions:
            unique.setdefault(suggestion.key, suggestion)
    return tuple(unique.values())
