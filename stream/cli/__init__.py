"""The `crm-kpi` command line: one click group of commands (`commands`)."""

from stream.cli.commands import main

__all__ = ["main"]
