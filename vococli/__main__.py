"""`python -m vococli` runs the command line."""

from .cli import main

main()
