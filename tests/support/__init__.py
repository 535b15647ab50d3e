"""What the tests share: real-server harness, settings without the developer's environment, references."""
