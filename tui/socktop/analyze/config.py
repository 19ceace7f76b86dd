"""Finding thresholds: defaults, a TOML file under the XDG config directory, and KEY=VALUE overrides.

The file is ``$XDG_CONFIG_HOME/socktop/config.toml`` (``~/.config/socktop/
config.toml`` when XDG_CONFIG_HOME is unset), with a ``[thresholds]`` table:

    [thresholds]
    close_wait_warning = 50
    port_range_warning = 0.4

Python 3.11+ reads it with ``tomllib``; 3.10 has no TOML parser in the
standard library and socktop adds no dependency, so there only flat
``key = number`` lines (comments and the ``[thresholds]`` header allowed)
are read. A missing file is normal; a broken one, an unknown key or a bad
value is skipped and reported as a warning, never fatal.

The UI and CLI use `Thresholds`, `load_thresholds(path=None, overrides=())
-> (Thresholds, warnings)`, `config_path()` and `parse_override("key=value")`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a pattern becomes a finding. Counts are sockets; ratios are 0-1; rates per second."""

    close_wait_warning: int = 100  # CLOSE_WAIT held by one process
    close_wait_critical: int = 1000
    close_wait_rise_per_s: float = 0.1  # ...or rising at least this fast over the trend window
    close_wait_rise_min: int = 10  # a rise only counts once the process holds this many
    trend_min_seconds: float = 30.0  # history needed before a rate is trusted
    rate_window_seconds: float = 120.0  # rates and trends are taken over the most recent part of the history
    fd_warning: float = 0.8  # descriptors used / RLIMIT_NOFILE
    fd_critical: float = 0.95
    fd_exhaustion_minutes: float = 10.0  # critical when "Too many open files" is this close at the current rate
    time_wait_group: int = 1000  # TIME_WAIT toward one destination, or on one served port, worth a finding
    port_range_warning: float = 0.5  # share of ip_local_port_range one (source, destination, port) uses
    port_range_critical: float = 0.8
    tw_buckets_warning: float = 0.7  # TIME_WAIT / tcp_max_tw_buckets
    tw_buckets_critical: float = 0.9
    listen_queue_warning: float = 0.9  # accept queue (Recv-Q) / backlog (Send-Q) of a listener
    syn_recv_warning: int = 100  # SYN_RECV on one listening port
    closing_warning: int = 200  # FIN_WAIT1, FIN_WAIT2, LAST_ACK or CLOSING, host-wide per state
    orphans_warning: float = 0.5  # orphans / tcp_max_orphans
    orphans_critical: float = 0.8


DEFAULT_THRESHOLDS = Thresholds()
_TYPES: dict[str, type] = {f.name: (int if f.type in ("int", int) else float) for f in fields(Thresholds)}


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CONFIG_HOME/socktop/config.toml, or ~/.config/socktop/config.toml."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "socktop" / "config.toml"


def parse_override(text: str) -> tuple[str, int | float]:
    """``key=value`` as given to ``--threshold``; raises ValueError with a one-line reason."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key, _value(key, value.strip())


def load_thresholds(path: Path | None = None, overrides: Iterable[tuple[str, int | float]] = ()
                    ) -> tuple[Thresholds, tuple[str, ...]]:
    """Defaults, then the config file (``config_path()`` unless given), then ``overrides``.

    Returns the thresholds and the warnings about the file (never raises for it).
    """
    path = config_path() if path is None else path
    warnings: list[str] = []
    values: dict[str, int | float] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        text = ""
        warnings.append(f"{path}: cannot read ({exc.strerror}); using default thresholds")
    if text:
        table, problem = _parse(text)
        if problem:
            warnings.append(f"{path}: {problem}; using default thresholds")
        for key, raw in table.items():
            try:
                values[key] = _value(key, raw)
            except ValueError as exc:
                warnings.append(f"{path}: {exc}; ignored")
    values.update(overrides)
    return replace(DEFAULT_THRESHOLDS, **values), tuple(warnings)


def _value(key: str, raw: Any) -> int | float:
    kind = _TYPES.get(key)
    if kind is None:
        raise ValueError(f"unknown threshold {key!r} (known: {', '.join(_TYPES)})")
    try:
        value = kind(raw) if not isinstance(raw, bool) else None
    except (TypeError, ValueError):
        value = None
    if value is None or value < 0 or (kind is int and isinstance(raw, float) and not raw.is_integer()):
        raise ValueError(f"threshold {key} needs a non-negative {'whole ' if kind is int else ''}number, not {raw!r}")
    return value


def _parse(text: str) -> tuple[dict[str, Any], str]:
    """The ``[thresholds]`` table, and a problem description ('' when none)."""
    if tomllib is not None:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            return {}, f"not valid TOML ({exc})"
        table = document.get("thresholds", {})
        return (table, "") if isinstance(table, dict) else ({}, "[thresholds] is not a table")
    return _parse_flat(text)


def _parse_flat(text: str) -> tuple[dict[str, Any], str]:
    """Python 3.10: ``key = number`` lines of the ``[thresholds]`` table only."""
    table: dict[str, Any] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            section = line.strip("[] ")
            continue
        key, sep, value = line.partition("=")
        if not sep:
            return {}, f"line {number}: expected key = value (Python 3.10 reads only that subset of TOML)"
        if section == "thresholds":
            table[key.strip()] = value.strip()
    return table, ""
