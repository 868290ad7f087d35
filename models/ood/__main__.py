"""``python -m models.ood fit|eval`` (see ``models.ood.cli``)."""

from models.ood.cli import main

raise SystemExit(main())
