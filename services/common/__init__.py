"""The kernel every service shares: messages, topics, settings, Kafka, the poll loop."""
