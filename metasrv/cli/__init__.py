"""The ``metasrv`` command: argparse subcommands that translate to the layers below."""
