"""RLSEdit: per-edit cost, drift and a real SmolLM2 editing stream; see weightkit.bench.rls (also `weightkit bench --only rls`)."""

from weightkit.bench.rls import main

raise SystemExit(main())
