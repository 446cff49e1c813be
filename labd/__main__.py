"""Run the labd command line with ``python -m labd``."""

from labd.cli.main import main

main(prog_name="labd")
