"""``rdv``: the platform's command line (local broker now; registry and compare later)."""
