"""Build facts and the torch-version guard."""

from __future__ import annotations

import subprocess
import sys

import torch

import weightkit as wk


def test_build_info_names_what_was_built():
    info = wk.build_info()
    assert info["torch_version"].split(".")[:2] == torch.__version__.split("+")[0].split(".")[:2]
    assert info["cpu_isa_best"] in ("scalar", "avx2", "avx512")
    assert set(info["cpu_isa_compiled"]) == {"scalar", "avx2", "avx512"}
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert info["cuda_archs"]


def test_import_under_another_torch_minor_fails_clearly():
    code = "import torch; torch.__version__ = '2.99.0'; import weightkit"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0
    assert "weightkit: the extension was built against torch" in done.stderr
    assert "torch 2.99.0 is installed" in done.stderr and "--no-build-isolation" in done.stderr
