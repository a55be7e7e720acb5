"""``python -m weightkit``: the ``weightkit`` command (see weightkit.cli)."""

import sys

from weightkit.cli import main

sys.exit(main())
