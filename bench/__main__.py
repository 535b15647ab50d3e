"""`python -m bench`: throughput, latency, memory and scrape time of the worker (issue #3).

Starts its own Tansu broker and Redis on free ports, publishes a seeded core
event mix once, then measures in interleaved rounds (A B C … A B C …):

* worker      — the project's `crm-kpi worker`, first event applied → last, figures verified
* naive       — bench/naive_faust.py: one Faust agent, one awaited Redis call per event
* raw         — aiokafka getmany(), no processing (ceiling)
* decode      — aiokafka getmany() + the project's validation, no Redis (decode ceiling)

then the one-off measurements: start-up to first event, peak RSS, p50/p99
publish→visible at a fixed rate, exporter scrape time, Redis memory after 1M
events and after their windows expired. Prints a table; writes JSON.
"""

from bench.run import main

main()
