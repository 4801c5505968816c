"""``python -m olladist.sim serve``."""

from olladist.sim.cli import main

raise SystemExit(main())
