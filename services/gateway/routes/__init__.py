"""HTTP routes: inference, feedback, health/readiness/metrics and the control API (the
OpenAI-compatible API has its own package, services/gateway/openai/)."""
