"""Champion/challenger comparison over the archive: paired figures, intervals, drift and
off-policy estimates, read from the archive's DuckDB views (services.common.archive_files; the
archive never imports this package). ``python -m services.compare`` serves it over HTTP
(``GET /v1/experiments/compare``) and exports drift as metrics; ``rdv compare`` runs it
in the terminal."""
