"""`python -m stream` is `crm-kpi`."""

from stream.cli import main

main()
