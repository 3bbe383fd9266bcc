"""Every stage of `presel run` on the small demo pool, with tiny models (a tiny LLaVA and a tiny DINOv2)."""

import json

import pyarrow.parquet as pq
import pytest
import yaml


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dinov2):
    from presel.cache import offline_model
    from presel.demo.pool import build_demo_pool
    from presel.pipeline import Pipeline, RunConfig

    root = tmp_path_factory.mktemp("e2e")
    mp = pytest.MonkeyPatch()
    mp.setenv("PRESEL_CACHE", str(root / "cache"))
    tiny = offline_model("tiny-llava")
    build_demo_pool(root / "run" / "pool", size="small")
    tune = {"model": str(tiny), "lora_r": 4, "lora_alpha": 8, "batch_size": 8, "max_length": 128, "save_every_steps": 0}
    cfg = {"out": ".", "pool": {"path": "pool/pool.jsonl"},
           "reference": {"fraction": 0.05, "seed": 0},
           "annotate": {"annotations": "pool/annotations.json"},
           "ref_model": tune, "score": {"batch_size": 8}, "weights": {"tau": "auto"},
           "embed": {"model": str(tiny_dinov2), "batch_size": 32, "workers": 0},
           "select": {"budget": 0.15, "seed": 0},
           "generate": {"from_annotations": "pool/annotations.json"},
           "final_model": dict(tune, max_steps=2),
           "report": {}}
    (root / "run" / "config.yaml").write_text(yaml.safe_dump(cfg))
    logs = []
    Pipeline(RunConfig.load(root / "run" / "config.yaml"), log=logs.append).run()
    yield root / "run", logs
    mp.undo()


def test_every_stage_ran(run_dir):
    run, logs = run_dir
    timings = json.loads((run / "timings.json").read_text())
    assert set(timings) == {"reference", "annotate", "ref_model", "score", "weights", "embed", "select",
                            "generate", "final_model", "report"}
    pool_images = sum(1 for _ in open(run / "pool" / "pool.jsonl"))
    sel = pq.read_table(run / "selection" / "selection.parquet").to_pylist()
    summary = json.loads((run / "selection" / "summary.json").read_text())
    assert len(sel) == summary["totals"]["budget"] == int(0.15 * summary["totals"]["distinct_images"])
    assert summary["totals"]["records"] == pool_images
    ref_ids = {json.loads(line)["id"] for line in open(run / "reference" / "reference.jsonl")}
    assert {r["id"] for r in sel if r["source"] == "reference"} == ref_ids
    weights = json.loads((run / "weights" / "task_weights.json").read_text())
    assert set(weights) == set(summary["tasks"]) and abs(sum(w["weight"] for w in weights.values()) - 1) < 1e-9
    train = json.loads((run / "generate" / "train.json").read_text())
    assert {r["id"] for r in train} >= {r["id"] for r in sel}
    assert all(r["conversations"] and r["conversations"][0]["from"] == "human" for r in train)
    assert (run / "final_model" / "config.json").exists()
    html = (run / "report" / "report.html").read_text()
    assert "Instruction relevance" in html and "http://" not in html.replace("http://www.w3.org", "")


def test_rerun_skips_everything(run_dir):
    from presel.pipeline import Pipeline, RunConfig

    run, _ = run_dir
    logs = []
    before = (run / "selection" / "selection.parquet").read_bytes()
    Pipeline(RunConfig.load(run / "config.yaml"), log=logs.append).run()
    assert sum("up to date" in s for s in logs) == 10
    assert (run / "selection" / "selection.parquet").read_bytes() == before


def _rerun_with(run, **changes):
    from presel.pipeline import STAGES, Pipeline, RunConfig

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    for sec, vals in changes.items():
        cfg[sec] = {**cfg[sec], **vals}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    logs = []
    Pipeline(RunConfig.load(run / "config.yaml"), log=logs.append).run()
    return {s for s in STAGES if any(f" {s} -> " in x for x in logs)}


def test_neutral_settings_keep_every_stage_and_a_real_one_reruns_downstream(run_dir):
    """Issue evidence: `ref_model.log_every` used to delete the reference model and rerun everything after it."""
    run, _ = run_dir
    original = (run / "config.yaml").read_text()
    model = (run / "ref_model" / "model.safetensors")
    weights = sorted((run / "ref_model").glob("*.safetensors"))
    before = {p.name: p.stat().st_mtime_ns for p in weights}
    assert _rerun_with(run, ref_model={"log_every": 1, "save_every_steps": 7, "num_workers": 0},
                       score={"batch_size": 4, "prefetch": False}, embed={"batch_size": 8, "workers": 1}) == set()
    assert {p.name: p.stat().st_mtime_ns for p in weights} == before and (model.exists() or weights)
    assert _rerun_with(run, weights={"tau": 0.5}) == {"weights", "select", "generate", "final_model", "report"}
    assert _rerun_with(run) == set()
    (run / "config.yaml").write_text(original)  # leave the run as the other tests expect it
    assert _rerun_with(run) == {"weights", "select", "generate", "final_model", "report"}
