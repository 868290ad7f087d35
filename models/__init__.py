"""Pure model code (torch, numpy): no Kafka, no HTTP, no settings."""
