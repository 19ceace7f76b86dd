"""socktop: a live terminal monitor of the machine's TCP sockets."""

__version__ = "0.1.0"
