"""Optimizer step time and loss curves; see weightkit.bench.optim (also `weightkit bench --only optim`)."""

from weightkit.bench.optim import main

raise SystemExit(main())
