"""Test support: servers the tests start themselves (an Apache Kafka broker) and their pytest fixtures."""
