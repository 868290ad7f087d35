"""HTTP routes: inference, and health/readiness/metrics."""
