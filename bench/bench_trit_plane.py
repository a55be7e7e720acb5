"""Trit-plane benchmark (see weightkit.bench.trit_plane); takes --quick, --json, --device, --threads."""

from weightkit.bench.trit_plane import main

raise SystemExit(main())
