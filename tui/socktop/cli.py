"""The `socktop` command: the TUI by default; `--once`, `--json`, `demo`, `explain` without it.

The non-interactive paths never import Textual: they must start fast (a
`--json` run at 20k sockets has to beat `ss -tanp`) and work where no
terminal does. Output goes through `write_output`, which turns a closed
stdout, a full disk and a closed pipe into one line or a quiet exit.
"""

from __future__ import annotations

import argparse
import errno
import gc
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from . import __version__
from .collect.netns import Selection
from .collect.records import BACKENDS, BackendUnavailable, CollectError, TcpState
from .safetext import printable
from .serve import DEFAULT_TOP

if TYPE_CHECKING:
    from .analyze.config import Config
    from .collect.owners import OwnerScanner

EXAMPLES = """\
examples:
  socktop                          live TUI, refreshed every second
  sudo socktop                     the same, with the owner of every socket
  socktop --once                   one summary (states, top ports, top processes), then exit
  socktop --json --state close-wait --port 8080
                                   one JSON document (schema socktop/1), filtered
  socktop --json --sockets         ... with every socket listed
  socktop demo --duration 120      start the loopback demo scenario (leaks, TIME_WAIT, ...)
  socktop --demo                   the TUI together with the demo scenario
  socktop serve                    Prometheus exporter on 127.0.0.1:9877 (see socktop serve --help)
  socktop explain close-wait       what a state means and what to do about it
  socktop explain tcp_tw_recycle   what a kernel setting does (and why that one is gone)
  socktop --once --sample 10 --threshold close_wait_warning=20
                                   findings with rates and trends over 10 s, a lower threshold
"""


USAGE_ERROR = 2  # as argparse exits on a bad argument
BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head`, so `set -o pipefail` sees it
USAGE = """\
socktop [options]             the live TUI (or --once, --json)
       socktop explain TOPIC         what a state or kernel setting means (socktop explain close-wait)
       socktop demo [--duration S]   start the loopback demo scenario
       socktop serve [--listen ...]  Prometheus exporter (socktop serve --help)"""


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments get one line on stderr and exit status 2, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see socktop --help)\n")


def _state(text: str) -> TcpState:
    try:
        return TcpState.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected 1-65535")
    return int(text)


def _pid(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"invalid pid {text!r}: expected a positive number")
    return int(text)


def _seconds(low: float, high: float, what: str) -> Callable[[str], float]:
    """An argparse type for a number of seconds within [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: expected seconds, e.g. 1 or 0.5") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} {text} out of range: {low:g} to {high:g} seconds")
        return value

    return parse


def _netns(text: str) -> Selection:
    try:
        return Selection.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_netns_argument(parser: argparse.ArgumentParser) -> None:
    """``--netns``, the same for the TUI and `socktop serve`; `chosen_netns` resolves its default."""
    parser.add_argument("--netns", type=_netns, default=None, metavar="all|self|NAME|PID",
                        help="network namespaces to read: all, self, a name in /var/run/netns or a pid's "
                             "(several with commas); default $SOCKTOP_NETNS, else all as root, else self")


def chosen_netns(options: argparse.Namespace) -> bool:
    """Replace ``options.netns`` by the selection to read (its default filled in); False, said in one
    line, when $SOCKTOP_NETNS is bad."""
    try:
        options.netns = Selection.chosen(options.netns)
    except ValueError as exc:
        _fail(str(exc))
        return False
    return True


def _threshold(text: str) -> tuple[str, int | float]:
    from .analyze.config import parse_override

    try:
        return parse_override(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="socktop",
        usage=USAGE,
        description="Live monitor of this machine's TCP sockets: by state, port and process, "
        "with what each state means and the command that fixes a pile-up.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"socktop {__version__}")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="print one summary and exit")
    mode.add_argument("--json", action="store_true", help="print one JSON document (schema socktop/1) and exit")
    mode.add_argument("--demo", action="store_true", help="run the TUI together with the loopback demo scenario")
    parser.add_argument("--sockets", action="store_true", help="with --json: list every socket too")
    parser.add_argument("--state", type=_state, help="only sockets in this state, e.g. close-wait")
    parser.add_argument("--port", type=_port, help="only sockets with this local or remote port")
    parser.add_argument("--pid", type=_pid, help="only sockets held by (or inferred for) this process")
    parser.add_argument("--container", metavar="TEXT",
                        help="only sockets of the containers, pods and namespaces whose name holds TEXT "
                             "(or whose key is TEXT: pod:UID, docker:ID, netns:INODE)")
    add_netns_argument(parser)
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="how to read the socket table (default: auto = netlink, else /proc, else psutil)")
    parser.add_argument("-i", "--interval", type=_seconds(0.5, 10, "interval"), default=1.0, help="TUI refresh interval in seconds (0.5-10)")
    parser.add_argument("--prometheus", type=_prometheus_url, default=None, metavar="URL",
                        help="the TUI also shows the Fleet view: every host whose socktop serve this Prometheus "
                             "scrapes, ranked by its worst finding (key F)")
    parser.add_argument("--clipboard", choices=("auto", "osc52", "system", "off"), default="auto",
                        help="how the TUI copies commands (default: auto)")
    parser.add_argument("--sample", type=_seconds(0, 600, "sample"), default=0.0, metavar="SECONDS",
                        help="with --once/--json: watch this long first (one refresh per interval) so findings "
                             "can use rates and trends (default 0: one snapshot)")
    parser.add_argument("--threshold", type=_threshold, action="append", default=[], metavar="KEY=VALUE",
                        help="override one finding threshold, e.g. close_wait_warning=20 (repeatable)")
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help="config file: [thresholds] and [keys] (default: $XDG_CONFIG_HOME/socktop/config.toml)")
    return parser


def build_demo_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="socktop demo", description="Start the loopback demo scenario and wait.")
    parser.add_argument("--duration", type=_seconds(1, 86400, "duration"), default=600.0, help="seconds before it stops by itself (default 600)")
    return parser


SERVE_EPILOG = """\
what it exposes: socket counts by state, service port, remote address, container
(namespace, pod, container or service) and process (pid, process name, user,
container), findings, kernel TCP counters and settings; never command
lines, never the sockets' contents. It reads only; it never runs a program or
changes a setting.

It binds 127.0.0.1 by default. A wider bind (--listen 0.0.0.0:9877) lets anyone
who reaches the port read which processes and users hold which ports and peers:
keep it on a private network, serve it over TLS with client certificates
(--tls-cert, --tls-key, --tls-client-ca), or put it behind a reverse proxy with
TLS and authentication (nginx, caddy, kube-rbac-proxy) that listens outside and
forwards to 127.0.0.1:9877. See the README, "Watching a fleet".
"""


def _listen(text: str) -> str:
    from .serve.server import parse_listen

    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _prometheus_url(text: str) -> str:
    from .analyze.fleet import check_url

    try:
        return check_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _top(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"invalid --top {text!r}: expected 1-1000")
    return int(text)


def build_serve_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="socktop serve", epilog=SERVE_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            description="Serve Prometheus metrics (/metrics), /healthz and /snapshot.json, "
                                        "collected once per interval whatever the scrape rate.")
    parser.add_argument("--listen", type=_listen, default="127.0.0.1:9877", metavar="HOST:PORT",
                        help="address to listen on (default 127.0.0.1:9877: this host only)")
    parser.add_argument("--interval", type=_seconds(1, 3600, "interval"), default=15.0,
                        help="seconds between collections (default 15)")
    parser.add_argument("--top", type=_top, default=None, metavar="N",
                        help="per state, the N ports, processes and remote addresses with the most sockets get "
                             f"their own series; the rest are summed as 'other' (default: [serve] top in the "
                             f"config file, else {DEFAULT_TOP})")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="how to read the socket table")
    add_netns_argument(parser)
    parser.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM; with --tls-key)")
    parser.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    parser.add_argument("--tls-client-ca", metavar="FILE",
                        help="with TLS: answer only clients whose certificate this CA signed (mutual TLS)")
    parser.add_argument("--threshold", type=_threshold, action="append", default=[], metavar="KEY=VALUE",
                        help="override one finding threshold (repeatable)")
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help="thresholds file (default: $XDG_CONFIG_HOME/socktop/config.toml)")
    return parser


def run() -> NoReturn:
    """The `socktop` command (and `python -m socktop`): `main`, then the exit.

    After a one-shot run (`--once`, `--json`) the output is flushed and the
    process ends at once, without tearing the interpreter down object by
    object (numpy's modules, the table's columns): about 25 ms of a `--json`
    run at 25k sockets, for nothing. Every other route exits as usual.
    """
    try:
        status = main()
    except KeyboardInterrupt:  # Ctrl-C: one line, the status a shell gives an interrupted command
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the line into a traceback
        _say("interrupted")
        os._exit(INTERRUPTED)
    if _one_shot_done:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)
    sys.exit(status)


INTERRUPTED = 128 + 2  # 128 + SIGINT, as a shell reports a command Ctrl-C ended
_one_shot_done = False  # set once a one-shot run has written its output: `run` may skip the teardown


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "demo":
        return _run_demo(build_demo_parser().parse_args(args[1:]))
    if args and args[0] == "serve":
        return _run_serve(build_serve_parser().parse_args(args[1:]))
    if args and args[0] == "explain":
        return _run_explain(args[1:])
    options = build_parser().parse_args(args)
    if options.sockets and not options.json:
        build_parser().error("--sockets needs --json")
    if options.prometheus and (options.once or options.json):
        build_parser().error("--prometheus is for the TUI's Fleet view, not --once or --json")
    if options.pid is not None and not pid_exists(options.pid):
        return _fail(f"no such process: {options.pid}", USAGE_ERROR)
    if not chosen_netns(options):
        return USAGE_ERROR
    config = _load_config(options)
    if config is None:
        return USAGE_ERROR
    if options.once or options.json:
        global _one_shot_done
        status = _run_once(options, config, _early_owner_scan(options))
        _one_shot_done = True
        return status
    return _run_tui(options, config)


def _early_owner_scan(options: argparse.Namespace) -> OwnerScanner | None:
    """For a one-shot run whose arguments are good, the owner scan started at once in a forked child (its
    readlinks overlap importing numpy and dumping the table, see `OwnerScanner.prefetch`); psutil finds
    owners itself."""
    if not (options.once or options.json) or options.backend == "psutil":
        return None
    from .collect.owners import OwnerScanner

    scanner = OwnerScanner()
    scanner.prefetch()
    return scanner


def _load_config(options: argparse.Namespace) -> Config | None:
    """The config file and --threshold flags, read once; None (said in one line) when the file cannot be read."""
    from .analyze.config import ConfigError, load_config

    try:
        return load_config(options.config, options.threshold)
    except ConfigError as exc:
        _fail(str(exc))
        return None


def pid_exists(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without signalling; EPERM means it does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:  # larger than pid_t
        return False
    return True


def _fail(message: str, status: int = 1) -> int:
    """One line on stderr; status 1 for a failure to collect or write, USAGE_ERROR for a bad argument."""
    _say(f"error: {message}")
    return status


def _say(line: str) -> None:
    """``socktop: LINE`` on stderr, unless stderr is closed too (print would then write to stdout).

    The line may quote what the user typed or a path (a --config, a --listen host): escapes in it are
    shown, never sent to the terminal."""
    if sys.stderr is not None:
        try:
            print(f"socktop: {printable(line)}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass


def write_output(write: Callable[[TextIO], object]) -> int:
    """Run ``write`` on stdout and flush; the exit status.

    A closed stdout (``>&-``) or a full disk is one line and status 1. A
    reader that went away (``| head -c 10``) ends the command quietly with
    BROKEN_PIPE, as a Unix tool killed by SIGPIPE would; stdout is then
    pointed at /dev/null so that Python's own flush at exit does not
    report the pipe again.
    """
    stream = sys.stdout
    if stream is None:
        return _fail("standard output is closed: nothing to write to")
    try:
        write(stream)
        stream.flush()
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE
    except OSError as exc:
        _silence_stdout()
        if exc.errno == errno.EPIPE:
            return BROKEN_PIPE
        return _fail(f"cannot write the output: {exc.strerror or exc}")
    except ValueError:  # "I/O operation on closed file"
        return _fail("standard output is closed: nothing to write to")
    return 0


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null: what is left in Python's buffer is dropped at exit without a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _run_once(options: argparse.Namespace, config: Config, scanner: OwnerScanner | None = None) -> int:
    collecting = gc.isenabled()
    gc.disable()  # the imports and the first refresh make no cycles worth a collection: ~7% of the imports' time
    try:
        return _once(options, config, scanner, collecting)
    finally:
        if scanner is not None:  # a prefetch not taken (a failure, Ctrl-C, psutil finding owners itself)
            scanner.cancel_prefetch()
        if collecting:
            gc.enable()


def _once(options: argparse.Namespace, config: Config, scanner: OwnerScanner | None, collecting: bool) -> int:
    from .analyze.findings import analyze
    from .model.engine import Engine
    from .report import render_summary, write_json

    for warning in config.warnings:
        _say(f"warning: {warning}")
    try:
        engine = Engine(options.backend, options.interval, netns=options.netns, scanner=scanner)
        snapshot = engine.refresh()
        if collecting:
            gc.enable()  # sampling may refresh for minutes
        deadline = time.monotonic() + options.sample
        while time.monotonic() < deadline:
            time.sleep(min(options.interval, max(0.0, deadline - time.monotonic())))
            snapshot = engine.refresh()
    except (BackendUnavailable, CollectError, OSError) as exc:
        return _fail(str(exc))
    analysis = analyze(snapshot, config.thresholds, config.warnings)  # host-wide: the filters narrow the tables
    filters: dict[str, Any] = {
        "state": options.state.name if options.state else None, "port": options.port, "pid": options.pid,
        "container": options.container,
    }
    snapshot = snapshot.filtered(state=options.state, port=options.port, pid=options.pid, place=options.container)
    if options.json:
        return write_output(lambda out: write_json(out, snapshot, filters, options.sockets, analysis))
    return write_output(lambda out: out.write(render_summary(snapshot, analysis=analysis,
                                                             filtered=any(value is not None for value in filters.values()))))


def _run_tui(options: argparse.Namespace, config: Config) -> int:
    if os.environ.get("TERM") == "dumb":  # no cursor addressing: a full-screen UI would be garbage
        status = _run_once(options, config)
        _say("TERM=dumb cannot show the live view: that was the --once summary (run with a terminal type "
             "such as TERM=xterm-256color for the TUI)")
        return status
    from .ui.app import run

    return run(options, config)


def _run_serve(options: argparse.Namespace) -> int:
    from .serve.server import Tls, run_serve

    if not chosen_netns(options):
        return USAGE_ERROR
    config = _load_config(options)
    if config is None:
        return USAGE_ERROR
    for warning in config.warnings:
        _say(f"warning: {warning}")
    if bool(options.tls_cert) != bool(options.tls_key) or (options.tls_client_ca and not options.tls_cert):
        build_serve_parser().error("--tls-cert and --tls-key go together (and --tls-client-ca needs them)")
    tls = Tls(options.tls_cert, options.tls_key, options.tls_client_ca) if options.tls_cert else None
    top = options.top
    if top is None:
        configured = config.serve.get("top", DEFAULT_TOP)
        try:
            top = _top(str(configured))
        except argparse.ArgumentTypeError:
            _say(f"warning: {config.path}: [serve] top must be 1-1000, not {configured!r}; using {DEFAULT_TOP}")
            top = DEFAULT_TOP
    return run_serve(options.listen, options.interval, top, options.backend, config.thresholds,
                     lambda line: _say(f"serve: {line}"), tls, options.netns)


def _run_demo(options: argparse.Namespace) -> int:
    from .demo.scenario import run_demo

    return run_demo(options.duration, echo=_echo)


def _echo(line: str) -> None:
    """A progress line on stdout; once its reader is gone (``| head``) or the disk is full, the
    demo goes on without it rather than dying with its sockets and workers left behind."""
    if sys.stdout is None:
        return
    try:
        print(line, flush=True)
    except (OSError, ValueError):
        _silence_stdout()


EXPLAIN_USAGE = """\
usage: socktop explain STATE-OR-SETTING

What a TCP state means (who is in it, how long, why it piles up, what to do) or
what a kernel setting does, with the values this kernel has now.

  STATE     e.g. close-wait, TIME_WAIT, syn-recv, 8 (the kernel's number)
  SETTING   e.g. tcp_tw_reuse or net.ipv4.tcp_fin_timeout

states:   {states}
settings: {settings}
"""


def _run_explain(args: list[str]) -> int:
    from .analyze.knowledge import explain_text
    from .analyze.sysctl import SETTINGS, explain_sysctl
    from .collect.kernelstate import read_kernel_state
    from .collect.records import DISPLAY_STATES

    if args and args[0] in ("-h", "--help"):
        import textwrap

        names = textwrap.fill(", ".join(key.rpartition(".")[2] for key in SETTINGS), 68,
                              subsequent_indent="          ")
        sys.stdout.write(EXPLAIN_USAGE.format(states=", ".join(s.name.lower().replace("_", "-") for s in DISPLAY_STATES), settings=names))
        return 0
    if len(args) != 1:
        return _fail("explain takes one state or kernel setting, e.g. socktop explain close-wait "
                     "(see socktop explain --help)", USAGE_ERROR)
    kernel = read_kernel_state()
    try:
        text = explain_text(TcpState.parse(args[0]), kernel)
    except ValueError:
        setting = explain_sysctl(args[0], kernel)
        if setting is None:
            return _fail(f"unknown state or setting {args[0]!r} (see socktop explain --help for the names)",
                         USAGE_ERROR)
        text = setting
    return write_output(lambda out: out.write(text + "\n"))
