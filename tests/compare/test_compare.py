"""`presel compare` on the small demo pool with tiny models: arms, paired seeds, resume after a kill."""

import json

import pytest
import yaml

from presel.compare import CompareConfig, compare_cells, compare_table, paired_differences
from presel.errors import PreselError

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dinov2):
    from presel.cache import offline_model
    from presel.demo.pool import build_demo_pool
    from presel.pipeline import Pipeline, RunConfig

    root = tmp_path_factory.mktemp("cmp")
    mp = pytest.MonkeyPatch()
    mp.setenv("PRESEL_CACHE", str(root / "cache"))
    tiny = offline_model("tiny-llava")
    build_demo_pool(root / "run" / "pool", size="small")
    tune = {"model": str(tiny), "lora_r": 4, "lora_alpha": 8, "batch_size": 8, "max_length": 128, "save_every_steps": 0}
    cfg = {"out": ".", "pool": {"path": "pool/pool.jsonl"}, "reference": {"fraction": 0.05, "seed": 0},
           "annotate": {"annotations": "pool/annotations.json"}, "ref_model": tune, "score": {"batch_size": 8},
           "weights": {"tau": "auto"}, "embed": {"model": str(tiny_dinov2), "batch_size": 32, "workers": 0},
           "select": {"budget": 0.15, "seed": 0}, "generate": {"from_annotations": "pool/annotations.json"}}
    (root / "run" / "config.yaml").write_text(yaml.safe_dump(cfg))
    Pipeline(RunConfig.load(root / "run" / "config.yaml"), log=lambda m: None).run()
    yield root / "run", str(tiny)
    mp.undo()


def _config(run, model, out, **kw):
    data = {"run": "config.yaml", "heldout": "pool/heldout.json", "full": "pool/annotations.json", "out": out,
            "model": model, "seeds": 2, "finetune": {"lora_r": 4, "lora_alpha": 8, "batch_size": 8, "max_length": 128,
                                                     "max_steps": 2, "save_every_steps": 1, "log_every": 0},
            "evaluate": {"batch_size": 8, "max_new_tokens": 2, "limit_per_task": 3}, **kw}
    (run / f"{out}.yaml").write_text(yaml.safe_dump(data))
    from presel.compare import load_compare_config

    return load_compare_config(run / f"{out}.yaml")


def test_every_arm_same_budget_and_reference_paired_table(run_dir):
    from presel.compare import run_compare

    run, model = run_dir
    cc, base = _config(run, model, "cmp-all")
    logs = []
    doc = run_compare(cc, base, log=logs.append)
    out = run / "cmp-all"
    names = {f"{a}-s{s}" for a in ("presel", "presel-best", "size-best", "random", "typiclust") for s in (0, 1)}
    assert set(doc["models"]) == names | {"full"}
    ref = {json.loads(x)["id"] for x in open(run / "reference" / "reference.jsonl")}
    budgets, methods = set(), {}
    for n in names:
        summ = json.loads((out / "selections" / n / "selection" / "summary.json").read_text())
        budgets.add(summ["totals"]["budget"])
        methods[n.rsplit("-s", 1)[0]] = (summ.get("method"), summ["task_weights"])
        import pyarrow.parquet as pq

        sel = pq.read_table(out / "selections" / n / "selection" / "selection.parquet").to_pylist()
        assert {r["id"] for r in sel if r["source"] == "reference"} == ref  # the same reference set in every arm
        assert all(v["n"] == 3 for v in doc["models"][n]["per_task"].values())
    assert len(budgets) == 1
    assert methods["presel"][1] == "irs" and methods["presel-best"][1] == "irs" and methods["size-best"][1] == "size"
    # seeds are paired: the seed drives both the selection and the fine-tuning
    for s in (0, 1):
        cfg = json.loads((out / "models" / f"random-s{s}" / "presel_config.json").read_text())
        assert cfg["config"]["seed"] == s
    sel0 = yaml.safe_load((out / "selections" / "random-s0" / "config.yaml").read_text())
    sel1 = yaml.safe_load((out / "selections" / "random-s1" / "config.yaml").read_text())
    assert (sel0["select"]["seed"], sel1["select"]["seed"]) == (0, 1)
    cells = doc["cells"]
    assert set(cells["paired"]) == {"PreSel - random", "IRS - size weights", "best rule - paper rule", "best - random"}
    d = cells["paired"]["PreSel - random"]["tasks"]["mean"]["answer_nll"]
    by = [doc["models"][f"presel-s{s}"]["mean_answer_nll"] - doc["models"][f"random-s{s}"]["mean_answer_nll"]
          for s in (0, 1)]
    assert d["seeds"] == [0, 1] and d["mean"] == pytest.approx(sum(by) / 2)
    table = (out / "table.md").read_text()
    assert "answer NLL" in table and "exact match" in table and "IRS - size weights" in table
    assert len(list((out / "image-features").glob("*/*.npy"))) > 0
    # a rerun does nothing again: no selection, fine-tune or evaluation is redone
    logs2 = []
    run_compare(cc, base, log=logs2.append)
    assert not any("fine-tuning" in m or "evaluating" in m for m in logs2)


def test_cli_table_of_the_models_finished_so_far(run_dir, capsys):
    from presel.cli import main

    run, model = run_dir
    _config(run, model, "cmp-cli", arms=["presel", "random"], seeds=1)
    assert main(["compare", str(run / "cmp-cli.yaml"), "--table"]) == 0
    assert "0 of 2 models evaluated so far" in capsys.readouterr().out
    assert main(["compare", str(run / "cmp-cli.yaml")]) == 0
    assert main(["compare", str(run / "cmp-cli.yaml"), "--table"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 models evaluated so far" in out and "| presel | random |" in out


def test_killed_comparison_resumes_without_refitting_finished_models(run_dir):
    from presel.compare import run_compare

    run, model = run_dir
    cc, base = _config(run, model, "cmp-kill", arms=["presel", "random"])
    calls = []

    def kill(row):
        calls.append(row["step"])
        if len(calls) == 5:  # two models of 2 steps finished, the third one is cut after its first step
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_compare(cc, base, log=lambda m: None, on_step=kill)
    out = run / "cmp-kill"
    done = {n: (out / "models" / n / "config.json").stat().st_mtime_ns for n in ("presel-s0", "random-s0")}
    assert not (out / "models" / "presel-s1").exists()
    logs = []
    doc = run_compare(cc, base, log=logs.append)
    tuned = [m for m in logs if m.startswith("compare: fine-tuning")]
    assert [m.split()[2] for m in tuned] == ["presel-s1", "random-s1"]
    assert {n: (out / "models" / n / "config.json").stat().st_mtime_ns for n in done} == done
    assert not any("evaluating presel-s0" in m or "evaluating random-s0" in m for m in logs)
    summary = json.loads((out / "models" / "presel-s1" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 1  # the cut fine-tune went on from its checkpoint
    assert set(doc["models"]) == {"presel-s0", "random-s0", "presel-s1", "random-s1"}


def test_paired_differences_use_matched_seeds_only():
    seeds, d = paired_differences({2: 0.5, 0: 1.0, 1: 3.0}, {1: 1.0, 0: 0.25, 5: 9.0, 2: None})
    assert seeds == [0, 1] and d == [0.75, 2.0]
    cc = CompareConfig(run="r.yaml", heldout="h.json", arms=("presel", "random"), seeds=3)

    def res(nll, acc):
        return {"per_task": {"t": {"answer_nll": nll, "accuracy": acc, "n": 10}}, "mean_answer_nll": nll,
                "mean_accuracy": acc}

    # the arms' values are listed in different orders; differences still pair seed with seed
    results = {"random-s2": res(1.3, 0.2), "presel-s0": res(1.0, 0.5), "random-s0": res(1.5, 0.4),
               "presel-s2": res(1.2, 0.1), "presel-s1": res(0.9, 0.3), "random-s1": res(0.8, 0.3)}
    cells = compare_cells(results, cc)
    c = cells["paired"]["PreSel - random"]["tasks"]["t"]["answer_nll"]
    assert c["seeds"] == [0, 1, 2] and c["mean"] == pytest.approx((-0.5 + 0.1 - 0.1) / 3)
    assert c["ci_low"] < c["mean"] < c["ci_high"]
    unpaired_mean = (1.0 + 0.9 + 1.2) / 3 - (1.5 + 0.8 + 1.3) / 3
    assert c["mean"] == pytest.approx(unpaired_mean)  # same mean, but the interval is the paired one
    assert "PreSel - random" in compare_table(cells)
    one = compare_cells({k: v for k, v in results.items() if k.endswith("-s0")}, cc)
    assert "| t | 1.000 (1 seed) | 1.500 (1 seed) |" in compare_table(one)  # no interval from one seed
    del results["random-s1"]
    c = compare_cells(results, cc)["paired"]["PreSel - random"]["tasks"]["mean"]["answer_nll"]
    assert c["seeds"] == [0, 2] and c["mean"] == pytest.approx((-0.5 - 0.1) / 2)


def test_config_errors():
    with pytest.raises(PreselError, match="arms: bogus unknown"):
        CompareConfig(run="r", heldout="h", arms=("presel", "bogus"))
    with pytest.raises(PreselError, match="needs 'full'"):
        CompareConfig(run="r", heldout="h", arms=("presel", "full"))
    with pytest.raises(PreselError, match="best_method"):
        CompareConfig(run="r", heldout="h", best_method="nope")
    assert CompareConfig(run="r", heldout="h", arms="presel, random").arms == ("presel", "random")


def test_parallel_jobs_give_the_same_models_and_figures(run_dir):
    from presel.compare import run_compare

    run, model = run_dir
    cc1, base = _config(run, model, "cmp-j1", arms=["presel", "random"], seeds=1)
    one = run_compare(cc1, base, log=lambda m: None)
    cc2, base = _config(run, model, "cmp-j2", arms=["presel", "random"], seeds=1, jobs=2)
    two = run_compare(cc2, base, log=lambda m: None)
    assert set(one["models"]) == set(two["models"]) == {"presel-s0", "random-s0"}
    for n in one["models"]:
        assert two["models"][n]["mean_answer_nll"] == pytest.approx(one["models"][n]["mean_answer_nll"], rel=1e-4)
        assert two["models"][n]["mean_accuracy"] == one["models"][n]["mean_accuracy"]
        assert set(two["timings"][n]) >= {"finetune_s", "evaluate_s"}
