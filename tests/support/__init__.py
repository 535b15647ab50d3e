"""What the tests share: real servers (Apache Kafka, Tansu, Redis), the worker harness, settings without
the developer's environment, and the in-memory store model."""
