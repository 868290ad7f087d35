"""``rdv``: the platform's command line. ``args`` declares every subcommand; each other
module runs one group of them and prints; the work is done by the packages they call."""
