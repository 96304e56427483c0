"""`python -m edge` runs the CLI."""

from edge.cli import main

main()
