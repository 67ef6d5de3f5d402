"""metasrv: a meta server for Python package indexes."""

__version__ = "0.1.0"
