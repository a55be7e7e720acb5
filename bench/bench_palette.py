"""Palette GEMV / Hadamard speed and quantizer MSE; see weightkit.bench.palette (also `weightkit bench
--only palette`). SmolLM2 perplexity against bits: `python -m weightkit.bench.palette_ppl`."""

from weightkit.bench.palette import main

raise SystemExit(main())
