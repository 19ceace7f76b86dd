"""`socktop serve`: the Prometheus exporter face (beside the TUI, the CLI and the reports).

`metrics` turns one snapshot and its analysis into metric families with a
bounded number of series; `server` runs the one collection thread and the
HTTP endpoints. Neither imports Textual.
"""

DEFAULT_TOP = 10  # series per state and family; here so that `socktop --help` need not import prometheus_client
