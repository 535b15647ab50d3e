"""What the tests share: real servers (Apache Kafka, Tansu, Redis), the worker harness, settings without
the developer's environment, the in-memory store model (checked against the real scripts), generated
event streams (hypothesis) and the comparison of exporter series with bench/reference_catalog.py."""
