"""Every benchmark family: the same as `weightkit bench` (takes --quick, --only, --device, --out)."""

import sys

from weightkit.cli import main

raise SystemExit(main(["bench", *sys.argv[1:]]))
