"""Run the command line as ``python -m metasrv``."""

from metasrv.cli.main import run

if __name__ == "__main__":  # imported (multiprocessing's spawn does), it runs nothing
    run()
