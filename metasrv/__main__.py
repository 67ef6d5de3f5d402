"""Run the command line as ``python -m metasrv``."""

from metasrv.cli import run

run()
