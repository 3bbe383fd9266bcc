"""A real SIGKILL in the middle of `presel finetune`, then the same command again (slow: two subprocesses)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from ft_data import make_train_set


@pytest.mark.slow
def test_sigkill_then_rerun_matches_uninterrupted(tiny_llava, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    data = make_train_set(tmp_path / "data", n=6, bad=False)
    args = ["--data", str(data), "--model", str(tiny_llava), "--lora-r", "8", "--lora-alpha", "16", "--lr", "3e-3",
            "--batch-size", "2", "--max-steps", "40", "--save-every", "3", "--log-every", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "presel.cli", "finetune"]
    subprocess.run(cmd + args + ["--out", str(tmp_path / "ref")], check=True, env=env, capture_output=True, timeout=300)

    out = tmp_path / "run"
    log = tmp_path / ".run.finetune-work" / "train_log.jsonl"
    proc = subprocess.Popen(cmd + args + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 8:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail("training finished before it could be killed; raise --max-steps")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    subprocess.run(cmd + args + ["--out", str(out)], check=True, env=env, capture_output=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] is not None and summary["resumed_from_step"] >= 6
    steps = [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
