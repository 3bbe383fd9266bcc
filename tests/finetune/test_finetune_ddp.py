"""DDP on CPU (gloo, 2 processes via torchrun) gives the same model as one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
from ft_data import make_train_set


@pytest.mark.slow
def test_torchrun_two_processes_equals_one(tiny_llava, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    data = make_train_set(tmp_path / "data", n=7)
    common = ["finetune", "--data", str(data), "--model", str(tiny_llava), "--lora-r", "8", "--lora-alpha", "16",
              "--lora-dropout", "0", "--lr", "3e-3", "--grad-accum", "2", "--epochs", "2", "--save-every", "2",
              "--log-every", "0", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "presel.cli", *common, "--batch-size", "2", "--out", str(tmp_path / "one")],
                   check=True, env=env, capture_output=True, timeout=300)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "presel.cli", *common, "--batch-size", "1", "--out", str(tmp_path / "two")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (s1["world_size"], s2["world_size"]) == (1, 2)
    assert s1["global_batch"] == s2["global_batch"] == 4 and s1["steps"] == s2["steps"] == 4
    l1 = [json.loads(x)["loss"] for x in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    l2 = [json.loads(x)["loss"] for x in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert l1 == pytest.approx(l2, rel=1e-5)
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
