"""Palette GEMV / Hadamard speed, quantizer MSE and SmolLM2 perplexity; see weightkit.bench.palette (also `weightkit bench --only palette`)."""

from weightkit.bench.palette import main

raise SystemExit(main())
