"""PTQTP on SmolLM2-135M, fp32 against int8 activations (see weightkit.bench.trit_plane_model)."""

from weightkit.bench.trit_plane_model import main

raise SystemExit(main())
