"""The `crm-kpi` command line: one click group (`main`), tables for the read commands (`tables`)."""

from stream.cli.commands import main

__all__ = ["main"]
