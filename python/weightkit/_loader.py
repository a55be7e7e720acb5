"""Loads the compiled core ``weightkit._C`` once, and refuses a torch it was not built for.

The extension links against libtorch's C++ ABI, which changes between torch minor releases; a
mismatch shows up as an obscure undefined-symbol error or, worse, a crash. We check the version
recorded at build time first and say how to rebuild.
"""

from __future__ import annotations

import importlib
import os

import torch  # must come first: _C finds libtorch only once torch has loaded it

_REBUILD = (
    "Rebuild weightkit against the installed torch: "
    "pip install --no-build-isolation --force-reinstall --no-deps weightkit (or `.` from a checkout)."
)


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("+")[0].split(".")[:2])


def load_extension():
    """Import ``weightkit._C`` and check it was built for this torch; returns the module."""
    try:
        ext = importlib.import_module("weightkit._C")
    except ImportError as err:
        raise ImportError(
            f"weightkit: cannot load the compiled extension weightkit._C ({err}). "
            f"It may have been built for another torch than {torch.__version__}. {_REBUILD}"
        ) from err
    built = ext.build_info()["torch_version"]
    if _major_minor(built) != _major_minor(torch.__version__) and not os.environ.get(
        "WEIGHTKIT_SKIP_TORCH_CHECK"
    ):
        raise ImportError(
            f"weightkit: the extension was built against torch {built} but torch "
            f"{torch.__version__} is installed. {_REBUILD}"
        )
    return ext
