"""`python -m vococli` runs the command line."""

from vococli.cli.app import main

main()
