"""End-to-end decoding speed of SmolLM2-135M, unquantized and quantized (see weightkit.bench.generate)."""

from weightkit.bench.generate import main

raise SystemExit(main())
