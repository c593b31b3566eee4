"""The `vococli` command line: thin commands over the library (parsing and printing only)."""

from vococli.cli.app import main

__all__ = ["main"]
