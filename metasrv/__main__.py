"""Run the command line as ``python -m metasrv``."""

from metasrv.cli.main import run

run()
