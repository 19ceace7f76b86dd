"""Snapshots → meaning. No Textual (nor Rich) here.

- `findings.analyze(snapshot, thresholds) -> Analysis`: the one entry point (findings, sysctl context);
- `knowledge`: what each TCP state means and what to do (`socktop explain <state>`);
- `sysctl`: the advisor (readings, counter rates, suggestions; never tcp_tw_recycle);
- `commands`: the shell commands handed out, built safely;
- `config`: thresholds from defaults, the XDG config file and flags.
"""
