"""The ``labd`` command line: `labd.cli.main` and the operator commands."""
