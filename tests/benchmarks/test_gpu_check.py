"""``scripts/gpu-check.sh --cpu-smoke``: the GPU check's code paths on CPU with tiny models, so the script a
GPU session runs once as prepared cannot rot between GPU sessions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# the figures the GPU check exists for (issue: GPU paths proven); each must come out as a number
FIGURES = (
    "embed.dinov2_s.end_to_end_images_per_s", "embed.dinov2_s.model_only_images_per_s",
    "embed.dinov2_s.peak_gpu_memory_bytes",
    "embed.dinov2_b.end_to_end_images_per_s", "embed.dinov2_b.model_only_images_per_s",
    "embed.dinov2_b.peak_gpu_memory_bytes",
    "score.batched_samples_per_s", "score.batch1_samples_per_s", "score.speedup", "score.max_abs_irs_diff",
    "score.peak_gpu_memory_bytes",
    "finetune.tokens_per_s", "finetune.tokens_per_s_after_resume", "finetune.resumed_from_step",
    "finetune.peak_gpu_memory_bytes",
    "projection.measured.selection_gpu_hours", "projection.scaled_7b.selection_gpu_hours",
    "wall_s",
)


def _get(d, dotted):
    for k in dotted.split("."):
        d = d[k]
    return d


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    # without PYTEST_CURRENT_TEST: scikit-image turns a sample photo it would download into a pytest skip
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"} | {"PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--cpu-smoke", str(out)], env=env,
                       capture_output=True, text=True, timeout=300)
    return r, out


def test_cpu_smoke_writes_every_figure(smoke):
    r, out = smoke
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    figures = json.loads((out / "figures.json").read_text())
    assert figures["mode"] == "cpu-smoke" and figures["errors"] == {}
    for key in FIGURES:
        v = _get(figures, key)
        assert isinstance(v, (int, float)) and not isinstance(v, bool), (key, v)
    for key in ("embed.dinov2_s.end_to_end_images_per_s", "embed.dinov2_b.model_only_images_per_s",
                "score.batched_samples_per_s", "score.batch1_samples_per_s", "finetune.tokens_per_s"):
        assert _get(figures, key) > 0, key
    assert figures["embed"]["dinov2_b"]["embedded"] == figures["embed"]["images"]
    # fp32 on CPU: batched and unbatched IRS agree to rounding
    assert figures["score"]["max_abs_irs_diff"] < 1e-4
    assert figures["finetune"]["resumed_from_step"] == figures["sizes"]["ft_crash_at"]
    # which attention ran is recorded (SDPA on this torch: the profiler sees its op)
    assert any("scaled_dot_product" in op for op in figures["score"]["sdpa_ops_forward"])
    # one printed line per figure group, and the log is kept
    log = (out / "gpu-check.log").read_text()
    for needle in ("embed dinov2_s", "embed dinov2_b", "score (", "finetune LoRA", "projection, LLaVA-665K",
                   "total wall time"):
        assert needle in r.stdout and needle in log, needle


def test_cpu_smoke_throughputs_feed_the_dry_run(smoke, capsys):
    from presel.cli import main
    from presel.estimate import ASSUMED, read_throughputs

    r, out = smoke
    assert r.returncode == 0
    measured = read_throughputs(str(out / "throughputs.json"))
    assert set(measured) == set(ASSUMED) - {"generate_samples_per_s"}
    assert read_throughputs(str(out / "throughputs-7b-scaled.json"))["score_samples_per_s"] < measured["score_samples_per_s"]
    text = (out / "dry-run.txt").read_text()
    assert "selection cost" in text and "embed_images_per_s" not in text.split("assumed throughputs")[-1]
    # the printed command works on a config (here the demo-sized one the projection used is gone; use ours)
    assert main(["run", str(ROOT / "configs" / "llava665k.yaml"), "--dry-run", "--throughputs",
                 str(out / "throughputs.json")]) == 2  # the 665K pool is not here: one clear error
    assert "pool" in capsys.readouterr().err
