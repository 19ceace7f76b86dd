"""The config file, read once below the UI: finding thresholds, and the key table the TUI validates.

The file is ``$XDG_CONFIG_HOME/socktop/config.toml`` (``~/.config/socktop/
config.toml`` when XDG_CONFIG_HOME is unset), or ``--config PATH``::

    [thresholds]
    close_wait_warning = 50
    port_range_warning = 0.4

    [keys]
    copy_kill = "K"

    [serve]
    top = 10

Python 3.11+ reads it with ``tomllib``; 3.10 has no TOML parser in the
standard library and socktop adds no dependency, so there only flat
``key = number`` lines of ``[thresholds]`` are read.

Reading it can fail in two ways. A file that cannot be read as text (a
``--config`` that does not exist, not a regular file, larger than
`MAX_CONFIG_BYTES`, unreadable, not UTF-8) raises `ConfigError`: the
command says so in one line and exits 2, because the user's settings
cannot even be seen. A missing default file is normal, and a default file
that cannot be read is a warning (``sudo -u nobody`` keeps a HOME it may
not read). Text that is not
valid TOML, an unknown key or a bad value is a warning: the defaults stay
for what it concerns and the rest applies.

`load_config(path=None, overrides=()) -> Config` is the one entry point;
``parse_override("key=value")`` checks a ``--threshold`` flag.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
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
MAX_THRESHOLD = 2 ** 53  # beyond it a count is no longer exact as a float, and means "never" anyway
MAX_CONFIG_BYTES = 256 * 1024  # a settings file is a few hundred bytes; /dev/zero is endless


class ConfigError(Exception):
    """The config file cannot be read as text: one line saying why (the command exits 2)."""


@dataclass(frozen=True, slots=True)
class Config:
    """The file's parts, each for its reader: thresholds for the analysis, keys for the TUI."""

    thresholds: Thresholds = DEFAULT_THRESHOLDS
    keys: Mapping[str, object] = field(default_factory=dict)  # the [keys] table as written; ui.keys validates it
    warnings: tuple[str, ...] = ()  # what was wrong in the text, one line each
    path: Path | None = None  # the file read, None when there was none
    serve: Mapping[str, object] = field(default_factory=dict)  # the [serve] table as written; `socktop serve` checks it


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
    return key, _value(key, _number(value.strip()))


def load_config(path: Path | None = None, overrides: Iterable[tuple[str, int | float]] = ()) -> Config:
    """Defaults, then the config file (``config_path()`` unless given; a missing default is no error),
    then ``overrides``. Raises ConfigError when the file cannot be read as text."""
    explicit = path is not None
    path = config_path() if path is None else path
    warnings: list[str] = []
    try:
        text = read_config_text(path, must_exist=explicit)
    except ConfigError as exc:
        if explicit:
            raise
        # a file the user did not name (HOME may even be another user's): a warning, not a refusal to run
        warnings.append(f"{exc}; using the defaults")
        text = None
    values: dict[str, int | float] = {}
    keys: Mapping[str, object] = {}
    serve: Mapping[str, object] = {}
    if text:
        document, problem = _parse(text)
        if problem:
            warnings.append(f"{path}: {problem}; using the defaults")
        thresholds_table = document.get("thresholds", {})
        if not isinstance(thresholds_table, dict):
            warnings.append(f"{path}: [thresholds] is not a table; using default thresholds")
            thresholds_table = {}
        for key, raw in thresholds_table.items():
            try:
                values[key] = _value(key, raw)
            except ValueError as exc:
                warnings.append(f"{path}: {exc}; ignored")
        keys = document.get("keys", {})
        if not isinstance(keys, dict):
            warnings.append(f"{path}: [keys] must be a table of binding id = \"key\"; using the default keys")
            keys = {}
        serve = document.get("serve", {})
        if not isinstance(serve, dict):
            warnings.append(f"{path}: [serve] is not a table; using the defaults")
            serve = {}
    values.update(overrides)
    return Config(replace(DEFAULT_THRESHOLDS, **values), keys, tuple(warnings), path if text is not None else None,
                  serve=serve)


def load_thresholds(path: Path | None = None, overrides: Iterable[tuple[str, int | float]] = ()
                    ) -> tuple[Thresholds, tuple[str, ...]]:
    """`load_config`'s thresholds and warnings, for callers that need no keys."""
    config = load_config(path, overrides)
    return config.thresholds, config.warnings


def read_config_text(path: Path, must_exist: bool) -> str | None:
    """The file as text, or None when it is absent and need not exist.

    Only a regular file is read, and at most MAX_CONFIG_BYTES of it: a FIFO
    would block forever and /dev/zero never ends. O_NONBLOCK keeps open()
    itself from waiting for a FIFO's writer; fstat then refuses it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(f"config file {path} does not exist") from None
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"config file {path} is not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB")
        data = os.read(fd, MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:  # grew after fstat
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                          f"{exc.start})") from None


def _number(text: str) -> int | float | str:
    """A number written as text (a flag, or a line read without tomllib); the text itself when not one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _value(key: str, raw: Any) -> int | float:
    """A threshold checked strictly: a whole number for a count, a finite non-negative number for the rest."""
    kind = _TYPES.get(key)
    if kind is None:
        raise ValueError(f"unknown threshold {key!r} (known: {', '.join(_TYPES)})")
    whole = kind is int
    number = isinstance(raw, int) if whole else isinstance(raw, (int, float))
    if not isinstance(raw, bool) and number and 0 <= raw <= MAX_THRESHOLD and math.isfinite(raw):
        return kind(raw)
    shown = repr(raw) if len(repr(raw)) <= 24 else repr(raw)[:20] + "..."
    raise ValueError(f"threshold {key} needs a non-negative {'whole ' if whole else ''}number, finite and at most "
                     f"2**53, not {shown}")


def _parse(text: str) -> tuple[dict[str, Any], str]:
    """The document's tables, and a problem description ('' when none)."""
    if tomllib is not None:
        try:
            return tomllib.loads(text), ""
        except tomllib.TOMLDecodeError as exc:
            return {}, f"not valid TOML ({exc})"
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
            table[key.strip()] = _number(value.strip())
    return {"thresholds": table}, ""
