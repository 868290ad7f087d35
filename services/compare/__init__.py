"""Champion/challenger comparison over the archive: paired figures, intervals, drift and
off-policy estimates. Pure statistics here (no Kafka, no HTTP); the queries that feed
them read the archive's DuckDB views (services.archive.query)."""
