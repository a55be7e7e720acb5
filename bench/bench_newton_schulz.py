"""Newton-Schulz benchmark (see weightkit.bench.newton_schulz); takes --quick, --json, --device, --threads."""

from weightkit.bench.newton_schulz import main

raise SystemExit(main())
