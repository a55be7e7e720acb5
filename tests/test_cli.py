"""The `weightkit` command and the shared benchmark helpers (no timing asserts, all fast)."""

import json
import subprocess
import sys

import pytest
import torch

import weightkit
from weightkit import cli
from weightkit.bench import FAMILIES, common
from weightkit.bench import newton_schulz as ns_bench


def test_info_prints_versions(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert torch.__version__ in out
    for word in ("CUDA build", "CPU ISA", "OpenMP", "fast bf16"):
        assert word in out


def test_module_entry_point_runs_info():
    done = subprocess.run(
        [sys.executable, "-m", "weightkit.cli", "info", "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["torch_runtime"] == torch.__version__


def test_bench_unknown_family_exits_2(capsys):
    assert cli.main(["bench", "--only", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown family 'nope'" in err
    assert "newton_schulz" in err


def test_bench_cuda_without_gpu_exits_2(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    assert cli.main(["bench", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_bench_script_refuses_cuda_without_gpu(family, capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(FAMILIES[family]).main(["--device", "cuda", "--json", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    assert "--device cuda: no CUDA GPU is available to this torch" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_families_registry_points_at_runnable_modules():
    import importlib

    for module_name in FAMILIES.values():
        module = importlib.import_module(module_name)
        assert callable(module.run) and callable(module.main)


def test_write_results_shape(tmp_path):
    cases = [
        {"case": "square-512-bf16", "baseline": "torch.optim.Muon", "ours_ms": 3.0, "baseline_ms": 4.5, "notes": "x"},
        {"case": "square-512-bf16", "baseline": "plain PyTorch", "ours_ms": 3.0, "baseline_ms": 2.0},
    ]
    skipped = [{"case": "square-8192-bf16", "reason": "too slow"}]
    path = common.write_results("newton_schulz", "cpu", cases, tmp_path / "a" / "b.json", skipped=skipped)
    data = json.loads(path.read_text())
    for key in ("family", "device", "torch", "commit", "cases", "threads", "date", "skipped"):
        assert key in data
    assert data["family"] == "newton_schulz"
    assert data["torch"] == torch.__version__.split("+")[0]
    assert data["threads"] == torch.get_num_threads()
    assert data["skipped"] == skipped
    assert [c["baseline"] for c in data["cases"]] == ["torch.optim.Muon", "plain PyTorch"]
    for c in data["cases"]:
        assert list(c)[:6] == ["case", "baseline", "ours_ms", "baseline_ms", "speedup", "notes"]
        assert c["speedup"] == pytest.approx(c["baseline_ms"] / c["ours_ms"], rel=1e-2)
    assert data["cases"][0]["speedup"] == 1.5
    assert data["cases"][1]["notes"] == ""


def test_write_results_default_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    case = {"case": "c", "baseline": "b", "ours_ms": 1.0, "baseline_ms": 1.0}
    path = common.write_results("fam", "cpu", [case])
    assert path == common.results_path("fam", "cpu")
    assert (tmp_path / path).is_file()
    assert path.parts[:3] == ("bench", "results", common.device_slug("cpu"))


def test_write_results_rejects_missing_keys(tmp_path):
    with pytest.raises(ValueError, match="baseline_ms"):
        common.write_results("fam", "cpu", [{"case": "c", "baseline": "b", "ours_ms": 1.0}], tmp_path / "x.json")


def test_device_slug_and_name():
    slug = common.device_slug("cpu")
    isa = weightkit.build_info()["cpu_isa_best"]
    assert slug.startswith("cpu-") and slug.endswith(f"-{isa}-{torch.get_num_threads()}t")
    assert slug == slug.lower() and " " not in slug
    assert f"{torch.get_num_threads()} thread" in common.device_name("cpu")


@pytest.mark.parametrize(
    "name, slug",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("Tesla V100-SXM2-16GB", "v100"),
    ],
)
def test_gpu_slug(name, slug):
    assert common._gpu_word(name) == slug


def test_time_ms_positive_median():
    calls = []
    ms = common.time_ms(lambda: calls.append(sum(range(1000))), device="cpu", warmup=1, repeats=3, min_time_s=0.0)
    assert ms > 0
    assert len(calls) >= 4


def test_time_ms_runs_a_long_call_twice():
    import time

    calls = []

    def slow():
        calls.append(None)
        time.sleep(0.05)

    ms = common.time_ms(slow, device="cpu", warmup=3, repeats=10, min_time_s=0.0, max_time_s=0.01, long_call_s=0.01)
    assert ms >= 50 * 0.9
    assert len(calls) == 2


def test_ns_plain_baseline_matches_ours():
    import weightkit

    G = torch.randn(48, 80, generator=torch.Generator().manual_seed(0))
    for M in (G, G.T):
        ours = weightkit.newton_schulz(M, 5, "jordan", compute_dtype=torch.bfloat16)
        plain = ns_bench.plain_newton_schulz(M).float()
        assert plain.shape == M.shape
        assert ns_bench._rel_diff(ours, plain) < 0.05


def test_ns_plan_cpu_caps_and_orders_cases():
    cases, skipped = ns_bench.plan(torch.device("cpu"), quick=False)
    names = [c.name for c in cases]
    assert "square-2048-bf16" in names and "square-4096-bf16" not in names
    assert "wide-512x2048-bf16" in names
    assert {s["case"] for s in skipped} == {"square-4096-bf16", "square-8192-bf16"}
    flops = [c.flops for c in cases]
    assert flops == sorted(flops)
    quick, _ = ns_bench.plan(torch.device("cpu"), quick=True)
    assert len(quick) == 3


def test_print_table_aligns(capsys):
    cases = [
        {"case": "a", "baseline": "torch.optim.Muon", "ours_ms": 1.0, "baseline_ms": 10.0, "notes": "n"},
        {"case": "longer-case", "baseline": "plain PyTorch", "ours_ms": 1234.0, "baseline_ms": 617.0},
    ]
    common.print_table("fam", "cpu", cases, skipped=[{"case": "z", "reason": "slow"}])
    out = capsys.readouterr().out.splitlines()
    assert "thread" in out[0]
    assert "10.00x" in out[3] and "0.50x" in out[4]
    assert out[3].index("10.00x") + len("10.00x") == out[4].index("0.50x") + len("0.50x")
    assert out[-1] == "skipped z: slow"


def test_other_load_reports_cores_or_none():
    with common.OtherLoad() as load:
        sum(range(100000))
    assert load.cores is None or load.cores >= 0


def _stream(**arms) -> dict:
    base = {"n_known": 4, "value_steps": 20, "batch_size": 2, "mu": 2000.0,
            "unedited": {"efficacy": 0.0, "ppl_pydoc": 14.490570608}}
    return {**base, **{name: {"efficacy": eff, "per_edit_ms": ms, "n_edits": 4} for name, (eff, ms) in arms.items()}}


def test_rls_bench_merges_a_stored_arm_run_with_the_same_settings(tmp_path):
    from weightkit.bench import rls as rls_bench

    path = tmp_path / "rls.json"
    path.write_text(json.dumps({"commit": "abc", "smollm2_stream": _stream(rls=(0.9, 100.0))}))
    new = _stream(memit_sequential=(0.8, 90.0))
    new["unedited"]["ppl_pydoc"] = 14.490570611  # another run's last digits
    merged = rls_bench._with_stored_arms(new, path)
    assert merged["rls"] == {"efficacy": 0.9, "per_edit_ms": 100.0, "n_edits": 4}
    assert merged["arms_from"] == {"rls": "abc"}
    (case,) = rls_bench._stream_cases(merged)
    assert (case["ours_ms"], case["baseline_ms"]) == (100.0, 90.0) and "rls from the run at abc" in case["notes"]
    # Carried again from a file written by the merged run: still the run where rls really ran.
    path.write_text(json.dumps({"commit": "def", "smollm2_stream": merged}))
    again = rls_bench._with_stored_arms(_stream(memit_sequential=(0.8, 90.0)), path)
    assert again["arms_from"] == {"rls": "abc"}
    # Other settings: the stored arm is not merged and no comparison is claimed.
    other = _stream(memit_sequential=(0.8, 90.0))
    other["mu"] = 1000.0
    assert "rls" not in rls_bench._with_stored_arms(other, path)
    assert rls_bench._stream_cases(other) == []


def test_rls_bench_rejects_unknown_arms(capsys):
    from weightkit.bench import rls as rls_bench

    with pytest.raises(SystemExit):
        rls_bench.main(["--only", "real", "--arms", "rome"])
    assert "--arms" in capsys.readouterr().err


def test_bench_refuses_an_unwritable_out_before_running(tmp_path):
    from weightkit.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["bench", "--quick", "--only", "rls", "--out", str(blocker / "sub")]) != 0


def test_palette_perplexity_plot_reads_every_sweep_file(tmp_path):
    from weightkit.bench.palette_ppl_plot import collect_series, plot_perplexity

    assert plot_perplexity(tmp_path) is None  # no sweep: no plot
    runs = lambda *rs: {"runs": [dict(zip(("label", "quantizer", "stored_bits", "ppl"), r)) for r in rs]}  # noqa: E731
    (tmp_path / "palette-ppl.json").write_text(json.dumps(runs(("fp", "none", 32, 14.7), ("tcq-2.5", "tcq", 2.64, 237))))
    (tmp_path / "palette-ppl-mixed.json").write_text(json.dumps(runs(("tcq-2", "tcq", 2.14, 8770.0),
                                                                     ("mixed-tcq-2.5", "mixed", 2.64, 42.9))))
    (tmp_path / "palette-ppl-ldlq.json").write_text(json.dumps({"fp_ppl": 14.70, "runs": [
        {"quantizer": "vq", "stored_bits": 2.72, "nearest": {"ppl": 883.0}, "ldlq": {"ppl": 21.3}}]}))
    (tmp_path / "palette-ppl-ldlq-tcq.json").write_text(json.dumps({"fp_ppl": 14.70, "runs": [
        {"quantizer": "tcq", "stored_bits": 2.15, "nearest": {"ppl": 8770.0}, "ldlq": {"ppl": 30.5}}]}))
    (tmp_path / "palette-ppl-ldlq-tcq-L16.json").write_text(json.dumps({"fp_ppl": 14.70, "runs": [
        {"quantizer": "tcq", "stored_bits": 2.64, "ldlq": {"ppl": 18.5}}]}))  # LDLQ only
    (tmp_path / "palette-ppl-ldlq-mixed.json").write_text(json.dumps(runs(("vq-2.5", "vq", 2.72, 21.3),
                                                                          ("mixed@vq-2.5", "mixed", 2.70, 20.9))))
    (tmp_path / "palette-ppl-ldlq-mixed-tcq.json").write_text(json.dumps(runs(("tcq-2", "tcq", 2.14, 28.4),
                                                                              ("mixed@tcq-2", "mixed", 2.14, 25.0))))
    (tmp_path / "palette-ppl-baselines.json").write_text(json.dumps(runs(
        ("ptqtp", "ptqtp", 4.27, 197.4), ("int4", "int4", 4.25, 20.1), ("int3", "int3", 3.25, 84.6),
        ("gptq-int3", "gptq-int3", 3.25, 48.0), ("gptq-int3-act", "gptq-int3-act", 3.27, 30.0))))
    series, fp = collect_series(tmp_path)
    assert fp == 14.70
    assert series == {"TCQ nearest": [(2.14, 8770.0), (2.64, 237.0)], "TCQ mixed (DP allocation)": [(2.64, 42.9)],
                      "VQ LDLQ": [(2.72, 21.3)], "TCQ LDLQ": [(2.15, 30.5)], "TCQ LDLQ, L = 16": [(2.64, 18.5)],
                      "TCQ mixed + LDLQ (DP allocation)": [(2.14, 25.0)], "VQ/SQ mixed + LDLQ (DP allocation)": [(2.70, 20.9)],
                      "PTQTP (2 trit-planes)": [(4.27, 197.4)], "int RTN g128": [(3.25, 84.6), (4.25, 20.1)],
                      "GPTQ g128": [(3.25, 48.0)], "GPTQ act-order g128": [(3.27, 30.0)]}
    pytest.importorskip("matplotlib")
    assert plot_perplexity(tmp_path) == str(tmp_path / "palette-ppl.png")
    assert (tmp_path / "palette-ppl.png").stat().st_size > 10_000


def test_palette_bench_mse_only_writes_its_own_file(tmp_path, monkeypatch, capsys):
    from weightkit.bench import palette as palette_bench

    monkeypatch.setattr(palette_bench, "MSE_TABLE", {"sq": {2: 0.1175}, "tcq": {2: 0.0710}})
    out = tmp_path / "palette-mse.json"
    assert palette_bench.main(["--mse-only", "--quick", "--device", "cpu", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["cases"] == [] and res["quick"] is True
    assert [(r["quantizer"], r["bits"]) for r in res["mse"]] == [("sq", 2), ("tcq", 2)]
    assert all(r["samples"] == 1 << 16 and r["within_5pct"] and r["seconds"] > 0 for r in res["mse"])
    assert "mse tcq-2: " in capsys.readouterr().out
