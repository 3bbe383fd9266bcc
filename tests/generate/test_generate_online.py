"""Online generation against a real local HTTP server with scripted misbehaviour."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from gen_fake_server import FakeOpenAI, make_selection

from presel.errors import PreselError
from presel.generate.online import GenerateConfig, generate_to_dir


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def test_scripted_server_every_item_ends_with_instruction_or_failure(tmp_path, server, fast_cfg):
    tasks = ["vqa", "ocr", "chart", "caption", "grounding", "conversation"]
    selected = {f"s{i:02d}": tasks[i % len(tasks)] for i in range(14)}
    sel = make_selection(tmp_path, selected, {"r0": "vqa", "r1": "caption"}, fmt="parquet")
    server.script = {
        "s00": ["slow:0.3"],
        "s01": ["429:1", "ok"],
        "s02": ["500", "503", "ok"],
        "s03": ["close", "ok"],
        "s04": ["drop", "ok"],
        "s05": ["malformed", "ok"],
        "s06": ["malformed", "badjson", "malformed"],  # 3 bad answers with parse_retries=2: failed
        "s07": ["500"] * 10,                            # transient until retries run out: failed
        "s08": ["400"],                                 # bad request: failed at once, not retried
        "s09": ["slow:2", "ok"],                        # timeout (1 s), then ok
    }
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps([
        {"id": "r0", "image": "images/vqa/r0.png", "conversations": [{"from": "human", "value": "<image>\nQ0"},
                                                                    {"from": "gpt", "value": "A0"}]},
        {"id": "r1", "image": "images/caption/r1.png", "conversations": [{"from": "human", "value": "Q1"},
                                                                        {"from": "gpt", "value": "A1"}]},
    ]))
    cfg = fast_cfg(server.base_url, max_retries=3, timeout=1.0, concurrency=6, price_in=2.0, price_out=10.0)
    summary = generate_to_dir(sel, tmp_path / "gen", cfg, reference_annotations=ref, progress=False)
    out = tmp_path / "gen"
    res, fails = lines(out / "results.jsonl"), lines(out / "failures.jsonl")
    ok_ids = [r["id"] for r in res]
    fail_ids = [f["id"] for f in fails]
    assert len(ok_ids) == len(set(ok_ids)) and not set(ok_ids) & set(fail_ids)
    assert set(ok_ids) | set(fail_ids) == set(selected)  # every selected image: instruction or recorded failure
    assert set(fail_ids) == {"s06", "s07", "s08"}
    kinds = {f["id"]: f["kind"] for f in fails}
    assert kinds == {"s06": "malformed", "s07": "transient", "s08": "request"}
    assert server.attempts["s08"] == 1 and server.attempts["s07"] == 4 and server.attempts["s06"] == 3
    assert server.attempts["s02"] == 3 and server.attempts["s03"] == 2 and server.attempts["s04"] == 2
    # Retry-After honoured although the backoff would have been ~10 ms
    t = server.times["s01"]
    assert t[1] - t[0] >= 0.95
    assert summary["complete"] and summary["generated"] == 11 and summary["failed"] == 3
    assert summary["failures_by_kind"] == {"malformed": 1, "request": 1, "transient": 1}
    # accounting: tokens are those of every 200 answer (the server bills 100 in / 20 out each)
    n200 = len(res) + 1 + 3  # 11 good answers, the malformed one of s05, the three of s06
    assert summary["total"]["tokens_in"] == 100 * n200 and summary["total"]["tokens_out"] == 20 * n200
    assert summary["total"]["requests"] == sum(server.attempts.values())
    assert summary["total"]["cost"] == pytest.approx((100 * n200 * 2.0 + 20 * n200 * 10.0) / 1e6)
    assert sum(t["requests"] for t in summary["tasks"].values()) == summary["total"]["requests"]
    train = json.loads((out / "train.json").read_text())
    assert [r["id"] for r in train][:2] == ["r0", "r1"]
    assert train[1]["conversations"][0]["value"].startswith("<image>")  # token added to the reference turn
    assert {r["id"] for r in train[2:]} == set(ok_ids)
    for rec in train:
        conv = rec["conversations"]
        assert conv[0]["from"] == "human" and conv[0]["value"].count("<image>") == 1
        assert all(t["value"].strip() for t in conv) and conv[-1]["from"] == "gpt"
        assert sum(t["value"].count("<image>") for t in conv) == 1
    cfg_json = json.loads((out / "config.json").read_text())
    assert cfg_json["stage"] == "generate" and cfg_json["config"]["model"] == "fake-vlm"
    # the request carries the image as a base64 data URL and the template's prompts
    body = server.bodies[0]
    assert body["model"] == "fake-vlm"
    part = body["messages"][-1]["content"][0]
    assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")


def test_rerun_is_a_noop_and_retry_failed(tmp_path, server, fast_cfg):
    sel = make_selection(tmp_path, {f"s{i}": "vqa" for i in range(6)})
    server.script = {"s2": ["malformed"] * 3}
    cfg = fast_cfg(server.base_url, parse_retries=2)
    s1 = generate_to_dir(sel, tmp_path / "gen", cfg, progress=False)
    assert s1["failed"] == 1 and s1["generated"] == 5
    before = sum(server.attempts.values())
    train1 = (tmp_path / "gen" / "train.json").read_bytes()
    s2 = generate_to_dir(sel, tmp_path / "gen", cfg, progress=False)
    assert sum(server.attempts.values()) == before  # nothing redone, failures not retried by default
    assert s2["last_run"]["items"] == 0 and (tmp_path / "gen" / "train.json").read_bytes() == train1
    cfg_retry = fast_cfg(server.base_url, parse_retries=2, retry_failed=True)
    s3 = generate_to_dir(sel, tmp_path / "gen", cfg_retry, progress=False)
    assert server.attempts["s2"] == 4 and s3["failed"] == 0 and s3["generated"] == 6
    ids = [r["id"] for r in lines(tmp_path / "gen" / "results.jsonl")]
    assert sorted(ids) == [f"s{i}" for i in range(6)]
    assert s3["total"]["requests"] == 6 + 3  # the failed answers still count (they were billed)


def test_interrupted_by_exception_then_resumed_no_duplicates(tmp_path, server, fast_cfg):
    sel = make_selection(tmp_path, {f"s{i:02d}": "vqa" for i in range(30)})
    server.latency = 0.02
    seen = []

    def boom(line):
        seen.append(line["id"])
        if len(seen) == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_to_dir(sel, tmp_path / "gen", fast_cfg(server.base_url, concurrency=3), progress=False, on_item=boom)
    first = [r["id"] for r in lines(tmp_path / "gen" / "results.jsonl")]
    assert first[:len(seen)] == seen  # everything reported finished is on disk (and its commit group)
    assert not (tmp_path / "gen" / "train.json").exists()
    time.sleep(0.3)  # let the abandoned in-flight requests end
    asked_before = dict(server.attempts)
    s = generate_to_dir(sel, tmp_path / "gen", fast_cfg(server.base_url, concurrency=3), progress=False)
    ids = [r["id"] for r in lines(tmp_path / "gen" / "results.jsonl")]
    assert len(ids) == len(set(ids)) == 30 and s["complete"]
    for i in first:  # finished items are never asked again
        assert server.attempts[i] == asked_before[i] == 1


def test_killed_subprocess_then_resumed_no_loss_no_duplicate(tmp_path, server):
    sel = make_selection(tmp_path, {f"s{i:03d}": "vqa" for i in range(60)})
    server.latency = 0.05
    out = tmp_path / "gen"
    code = textwrap.dedent(f"""
        from presel.generate.online import GenerateConfig, generate_to_dir
        cfg = GenerateConfig(base_url={server.base_url!r}, model="fake-vlm", concurrency=2, backoff_base=0.01)
        generate_to_dir({str(sel)!r}, {str(out)!r}, cfg, progress=False)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        if len(lines(out / "results.jsonl")) >= 8:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = [r["id"] for r in lines(out / "results.jsonl")]
    assert 8 <= len(done_before) < 60, "the run should have been killed midway"
    s = generate_to_dir(sel, out, GenerateConfig(base_url=server.base_url, model="fake-vlm", concurrency=4,
                                                 backoff_base=0.01), progress=False)
    ids = [r["id"] for r in lines(out / "results.jsonl")]
    assert len(ids) == len(set(ids)) == 60  # no duplicate, no loss
    assert ids[:len(done_before)] == done_before
    assert s["complete"] and s["generated"] == 60
    train = json.loads((out / "train.json").read_text())
    assert [r["id"] for r in train] == [f"s{i:03d}" for i in range(60)]  # selection order, deterministic


def test_torn_last_line_is_cut_and_redone(tmp_path, server, fast_cfg):
    sel = make_selection(tmp_path, {"a": "vqa", "b": "vqa"})
    cfg = fast_cfg(server.base_url)
    generate_to_dir(sel, tmp_path / "gen", cfg, progress=False)
    res = tmp_path / "gen" / "results.jsonl"
    text = res.read_text().splitlines()
    res.write_text(text[0] + "\n" + text[1][:20])  # a kill in the middle of writing the second line
    s = generate_to_dir(sel, tmp_path / "gen", cfg, progress=False)
    ids = [r["id"] for r in lines(res)]
    assert sorted(ids) == ["a", "b"] and s["generated"] == 2


def test_consecutive_failures_stop_the_run_then_resume(tmp_path, server, fast_cfg):
    sel = make_selection(tmp_path, {f"s{i:02d}": "vqa" for i in range(20)})
    server.default = "500"
    cfg = fast_cfg(server.base_url, concurrency=1, max_retries=1, stop_after_failures=3)
    with pytest.raises(PreselError, match="stopped after 3 failed items in a row"):
        generate_to_dir(sel, tmp_path / "gen", cfg, progress=False)
    assert len(lines(tmp_path / "gen" / "failures.jsonl")) == 3
    summary = json.loads((tmp_path / "gen" / "summary.json").read_text())
    assert not summary["complete"] and summary["pending"] == 17 and "stopped" in summary
    assert not (tmp_path / "gen" / "train.json").exists()
    server.default = "ok"
    s = generate_to_dir(sel, tmp_path / "gen", fast_cfg(server.base_url, retry_failed=True), progress=False)
    assert s["complete"] and s["generated"] == 20 and s["failed"] == 0


def test_api_key_from_env_never_written_or_printed(tmp_path, fast_cfg, monkeypatch, capsys):
    key = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("PRESEL_TEST_KEY", key)
    sel = make_selection(tmp_path, {"a": "vqa", "b": "vqa", "c": "caption"})
    with FakeOpenAI(api_key=key, script={"b": ["400"], "c": ["429:0", "ok"]}) as srv:
        s = generate_to_dir(sel, tmp_path / "gen", fast_cfg(srv.base_url, api_key_env="PRESEL_TEST_KEY"), progress=True)
        assert srv.auth_seen == {f"Bearer {key}"}
        assert s["generated"] == 2 and s["failed"] == 1
        # a wrong key stops the run at once with a clear message, which does not contain the key either
        monkeypatch.setenv("PRESEL_TEST_KEY", key + "-wrong")
        with pytest.raises(PreselError, match="refused the API key") as ei:
            generate_to_dir(sel, tmp_path / "gen2", fast_cfg(srv.base_url, api_key_env="PRESEL_TEST_KEY"),
                            progress=False)
        assert key not in str(ei.value)
    captured = capsys.readouterr()
    assert key not in captured.out and key not in captured.err
    for d in ("gen", "gen2"):
        for p in (tmp_path / d).rglob("*"):
            if p.is_file():
                assert key.encode() not in p.read_bytes(), p


def test_missing_image_and_mismatched_out_are_clear_errors(tmp_path, server, fast_cfg):
    sel = make_selection(tmp_path, {"a": "vqa", "b": "vqa"})
    (tmp_path / "images" / "vqa" / "b.png").unlink()
    with pytest.raises(PreselError, match=r"1 selected image\(s\) not found under the image root .*id b"):
        generate_to_dir(sel, tmp_path / "gen", fast_cfg(server.base_url), progress=False)
    # explicit image root works
    root2 = tmp_path / "elsewhere"
    make_selection(root2, {"a": "vqa", "b": "vqa"})
    s = generate_to_dir(sel, tmp_path / "gen", fast_cfg(server.base_url), image_root=root2, progress=False)
    assert s["image_root"] == str(root2) and s["generated"] == 2
    other = GenerateConfig(base_url=server.base_url, model="another-model")
    with pytest.raises(PreselError, match="holds another generation run"):
        generate_to_dir(sel, tmp_path / "gen", other, image_root=root2, progress=False)
    s = generate_to_dir(sel, tmp_path / "gen", other, image_root=root2, overwrite=True, progress=False)
    assert s["model"] == "another-model" and s["total"]["requests"] == 2


def test_config_validation():
    with pytest.raises(PreselError, match="concurrency=0 must be >= 1"):
        GenerateConfig(concurrency=0)
    with pytest.raises(PreselError, match="NAME of an environment variable"):
        GenerateConfig(api_key_env="sk-abc-123")
    with pytest.raises(PreselError, match="no --base-url"):
        generate_to_dir("x.jsonl", "out", GenerateConfig(model="m"))


def test_cli_online_and_sharegpt(tmp_path, server):
    from presel.cli import main

    sel = make_selection(tmp_path, {"a": "vqa", "b": "chart"})
    rc = main(["generate", "--selection", str(sel), "--base-url", server.base_url, "--model", "m",
               "--out", str(tmp_path / "gen"), "--format", "sharegpt", "--no-progress", "--backoff-base", "0.01",
               "--price-in", "1", "--price-out", "2", "--max-tokens-field", "max_completion_tokens"])
    assert rc == 0
    assert server.bodies[0]["max_completion_tokens"] == 512 and "max_tokens" not in server.bodies[0]
    sg = json.loads((tmp_path / "gen" / "train_sharegpt.json").read_text())
    assert sg[0]["images"] == ["images/vqa/a.png"] and sg[0]["messages"][0]["role"] == "user"
    assert sg[0]["messages"][0]["content"].startswith("<image>")
    rc = main(["generate", "--selection", str(sel), "--model", "m", "--out", str(tmp_path / "gen3")])
    assert rc == 2


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to the default, unblocked. A test process can inherit SIGINT
    ignored (a background job of a shell without job control) or have it set so by a library earlier in the
    run; Python then installs no KeyboardInterrupt handler and the command would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_on_the_cli_exits_promptly_and_resumes(tmp_path, server):
    sel = make_selection(tmp_path, {f"s{i:03d}": "vqa" for i in range(80)})
    server.latency = 0.05
    server.script = {f"s{i:03d}": ["slow:30"] for i in range(40, 80)}  # requests in flight at Ctrl-C hang
    out = tmp_path / "gen"
    cmd = [sys.executable, "-m", "presel.cli", "generate", "--selection", str(sel), "--base-url", server.base_url,
           "--model", "m", "--out", str(out), "--concurrency", "4", "--no-progress", "--timeout", "60"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            preexec_fn=_default_sigint)
    deadline = time.time() + 60
    while time.time() < deadline and len(lines(out / "results.jsonl")) < 40:
        time.sleep(0.02)
    time.sleep(0.3)  # the hanging requests are in flight now
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "rerun the same command to resume" in err
    assert time.time() - t0 < 10  # in-flight requests are aborted, not waited for (timeout is 60 s)
    assert len(lines(out / "results.jsonl")) == 40
    server.script = {}
    s = generate_to_dir(sel, out, GenerateConfig(base_url=server.base_url, model="m", concurrency=8), progress=False)
    ids = [r["id"] for r in lines(out / "results.jsonl")]
    assert len(ids) == len(set(ids)) == 80 and s["complete"]
