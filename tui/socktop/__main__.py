"""`python -m socktop` runs the same entry point as the `socktop` script."""

from socktop.cli import run

run()
