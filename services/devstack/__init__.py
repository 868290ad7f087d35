"""The local development platform: a Kafka broker from Maven jars, the stack file of
processes, and the supervisor that keeps them running (used by ``rdv up`` and benches)."""
