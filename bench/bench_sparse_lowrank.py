"""SLTrain layer speed, memory and training quality; see weightkit.bench.sparse_lowrank (also `weightkit bench --only sparse_lowrank`)."""

from weightkit.bench.sparse_lowrank import main

raise SystemExit(main())
