from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llava, tiny_dinov2) -> Path:
    """A real `presel run` of every stage with tiny models (see report_run.py), plus an evaluation.json
    written the way `presel demo --compare` writes it."""
    from report_run import build_tiny_run

    from presel.evaluate import EvalConfig, evaluate_model
    from presel.io.atomic import write_json

    root = tmp_path_factory.mktemp("report_run")
    run = build_tiny_run(root, tiny_llava, tiny_dinov2)
    cfg = EvalConfig(batch_size=8, max_new_tokens=4, limit_per_task=1, device="cpu")
    results = {name: evaluate_model(run / name, root / "data" / "heldout.json", cfg, progress=False)
               for name in ("final_model", "ref_model")}
    write_json(run / "evaluation.json", {n: {k: v for k, v in r.items() if k != "predictions"}
                                         for n, r in results.items()})
    return run
