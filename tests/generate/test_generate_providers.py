"""Providers' own request/result shapes, lossless collect, batch APIs under a token cap, lost creates,
client retry headers, per-model image tokens."""

import base64
import json
import re

import pytest
from gen_fake_providers import FakeAnthropic, FakeGemini
from gen_fake_server import FakeBatchAPI, FakeOpenAI, make_selection, ok_answer

from presel.errors import PreselError
from presel.generate.batch import BatchConfig, batch_files_to_dir, collect_to_dir
from presel.generate.batch_api import batch_api_to_dir
from presel.generate.online import GenerateConfig

IDS = ["s00", "s01", "coco/000000123.jpg", "s03", "s04", "s05"]  # one id Anthropic cannot carry as is


def read_lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def cfg(**kw):
    kw.setdefault("model", "fake-vlm")
    kw.setdefault("backoff_base", 0.0)
    kw.setdefault("backoff_max", 0.0)
    kw.setdefault("timeout", 5.0)
    return GenerateConfig(**kw)


def selection(tmp_path, ids=IDS):
    return make_selection(tmp_path, {i: ("vqa", "caption")[n % 2] for n, i in enumerate(ids)})


def write(path, lines, torn=None):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + (torn or ""))
    return path


def assert_lossless(out, ids):
    res, fail = read_lines(out / "results.jsonl"), read_lines(out / "failures.jsonl")
    got = [x["id"] for x in res] + [x["id"] for x in fail if x["id"] not in {r["id"] for r in res}]
    assert sorted(got) == sorted(ids), (res, fail)  # every selected id ends somewhere ...
    assert len({x["id"] for x in res}) == len(res)   # ... and no result twice
    return {x["id"]: x for x in res}, {x["id"]: x for x in fail}


# --------------------------------------------------------------------------- request shapes


def test_request_lines_in_each_providers_shape(tmp_path):
    sel = selection(tmp_path)
    a = batch_files_to_dir(sel, tmp_path / "a", cfg(temperature=1.5), BatchConfig(provider="anthropic"))
    lines = read_lines(tmp_path / "a" / a["files"][0]["name"])
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", x["custom_id"]) for x in lines)
    assert lines[2]["custom_id"].startswith("h-")  # the id with "/" and "." is carried as a hash
    p = lines[0]["params"]
    assert set(p) >= {"model", "max_tokens", "messages", "system"} and p["temperature"] == 1.0  # clipped to [0, 1]
    img, text = p["messages"][0]["content"]
    assert img["type"] == "image" and img["source"]["type"] == "base64" and img["source"]["media_type"] == "image/png"
    assert base64.b64decode(img["source"]["data"]).endswith(b"s00") and text["type"] == "text"

    g = batch_files_to_dir(sel, tmp_path / "g", cfg(), BatchConfig(provider="gemini"))
    lines = read_lines(tmp_path / "g" / g["files"][0]["name"])
    assert [x["key"] for x in lines] == IDS
    req = lines[0]["request"]
    assert req["contents"][0]["parts"][0]["inline_data"]["mime_type"] == "image/png"
    assert "text" in req["contents"][0]["parts"][1] and "system_instruction" in req
    assert req["generation_config"]["max_output_tokens"] > 0

    v = batch_files_to_dir(sel, tmp_path / "v", cfg(temperature="none"), BatchConfig(provider="vllm",
                                                                                   image_transport="path"))
    line = read_lines(tmp_path / "v" / v["files"][0]["name"])[0]
    assert line["url"] == "/v1/chat/completions" and "temperature" not in line["body"]
    with pytest.raises(PreselError, match="cannot read local file"):
        BatchConfig(provider="gemini", image_transport="path")
    with pytest.raises(PreselError, match="provider='bedrock' must be one of"):
        BatchConfig(provider="bedrock")


def test_structured_output_and_detail_in_provider_requests(tmp_path):
    from test_generate_batch import STRUCT_TEMPLATES

    tpl = tmp_path / "t.yaml"
    tpl.write_text(STRUCT_TEMPLATES)
    sel = make_selection(tmp_path, {"a": "attrs"})
    a = batch_files_to_dir(sel, tmp_path / "a", cfg(templates=str(tpl)), BatchConfig(provider="anthropic"))
    p = read_lines(tmp_path / "a" / a["files"][0]["name"])[0]["params"]
    assert p["output_config"]["format"]["type"] == "json_schema"
    assert p["output_config"]["format"]["schema"]["required"] == ["colour", "count"]
    g = batch_files_to_dir(sel, tmp_path / "g", cfg(templates=str(tpl)), BatchConfig(provider="gemini"))
    gc = read_lines(tmp_path / "g" / g["files"][0]["name"])[0]["request"]["generation_config"]
    assert gc["response_mime_type"] == "application/json" and gc["response_json_schema"]["required"] == ["colour", "count"]
    o = batch_files_to_dir(sel, tmp_path / "o", cfg(templates=str(tpl), image_detail="low"), BatchConfig())
    body = read_lines(tmp_path / "o" / o["files"][0]["name"])[0]["body"]
    assert body["messages"][-1]["content"][0]["image_url"]["detail"] == "low"
    assert o["estimate"]["image_token_rule"] == "gpt-4o" or o["estimate"]["image_detail"] == "low"


# --------------------------------------------------------------------------- collect, real shapes


def openai_results(reqs):
    """OpenAI output + error files: answers, an HTTP 400 in the output, an expired request in the error file."""
    out, err = [], []
    for n, q in enumerate(reqs):
        cid = q["custom_id"]
        if n == 1:
            err.append({"id": f"batch_req_{n}", "custom_id": cid, "response": None,
                        "error": {"code": "batch_expired", "message": "This request could not be executed before the "
                                  "completion window expired."}})
        elif n == 3:
            out.append({"id": f"batch_req_{n}", "custom_id": cid, "error": None, "response": {
                "status_code": 400, "request_id": f"r{n}", "body": {"error": {"message": "Invalid image.",
                                                                              "type": "invalid_request_error"}}}})
        else:
            out.append({"id": f"batch_req_{n}", "custom_id": cid, "error": None, "response": {
                "status_code": 200, "request_id": f"r{n}", "body": {
                    "id": f"chatcmpl-{n}", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": ok_answer(cid) if n != 4 else "prose"}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}}})
    return out, err


def vllm_results(reqs):
    """vllm run-batch: error lines carry the message in the top-level error, response.body null."""
    out = []
    for n, q in enumerate(reqs):
        if n % 3 == 1:
            out.append({"id": f"vllm-{n}", "custom_id": q["custom_id"], "response": {
                "status_code": 400, "request_id": f"vllm-batch-{n}", "body": None},
                "error": "The decoder prompt (length 9000) is longer than the maximum model length of 8192."})
        else:
            out.append({"id": f"vllm-{n}", "custom_id": q["custom_id"], "error": None, "response": {
                "status_code": 200, "request_id": f"vllm-batch-{n}", "body": {
                    "id": f"chatcmpl-{n}", "object": "chat.completion", "model": "m",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": ok_answer(q["custom_id"])}}],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}}}})
    return out


def anthropic_results(reqs, item_of):
    out = []
    for n, q in enumerate(reqs):
        cid = q["custom_id"]
        if n == 1:
            out.append({"custom_id": cid, "result": {"type": "errored", "error": {
                "type": "error", "error": {"type": "invalid_request_error", "message": "Image too large."}}}})
        elif n == 3:
            out.append({"custom_id": cid, "result": {"type": "expired"}})
        elif n == 4:
            out.append({"custom_id": cid, "result": {"type": "canceled"}})
        else:
            out.append({"custom_id": cid, "result": {"type": "succeeded", "message": {
                "id": f"msg_{n}", "type": "message", "role": "assistant", "model": "claude",
                "content": [{"type": "text", "text": ok_answer(item_of[cid])}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": 80, "cache_creation_input_tokens": 0,
                                                 "cache_read_input_tokens": 20, "output_tokens": 30}}}})
    return out


def gemini_results(reqs):
    out = []
    for n, q in enumerate(reqs):
        if n == 1:
            out.append({"key": q["key"], "error": {"code": 400, "message": "Unable to process input image.",
                                                   "status": "INVALID_ARGUMENT"}})
        elif n == 4:
            out.append({"key": q["key"], "response": {"candidates": [{"content": {"parts": [
                {"text": ok_answer(q["key"])[:30]}], "role": "model"}, "finishReason": "MAX_TOKENS"}],
                "usageMetadata": {"promptTokenCount": 300, "candidatesTokenCount": 64, "thoughtsTokenCount": 6}}})
        else:
            out.append({"key": q["key"], "response": {"candidates": [{"content": {"parts": [
                {"text": ok_answer(q["key"])}], "role": "model"}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 300, "candidatesTokenCount": 40, "totalTokenCount": 340},
                "modelVersion": "gemini-2.5-flash", "responseId": f"resp-{n}"}})
    return out


@pytest.mark.parametrize("provider", ["openai", "vllm", "anthropic", "gemini"])
def test_collect_real_shaped_results_losslessly(tmp_path, provider):
    from presel.generate.providers import custom_id

    sel = selection(tmp_path)
    out = tmp_path / "gen"
    r = batch_files_to_dir(sel, out, cfg(price_in=1.0, price_out=1.0), BatchConfig(provider=provider))
    reqs = read_lines(out / r["files"][0]["name"])
    if provider == "openai":
        o, e = openai_results(reqs)
        files = [write(tmp_path / "out.jsonl", o), write(tmp_path / "err.jsonl", e)]
    elif provider == "vllm":
        files = [write(tmp_path / "out.jsonl", vllm_results(reqs))]
    elif provider == "anthropic":
        files = [write(tmp_path / "out.jsonl", anthropic_results(reqs, {custom_id("anthropic", i): i for i in IDS}))]
    else:
        files = [write(tmp_path / "out.jsonl", gemini_results(reqs))]
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(files[0].read_bytes())
    files.append(copy)  # the same results twice: nothing counted twice
    s = collect_to_dir(out, files, provider=provider)
    assert s["complete"] and s["collect"]["repeated"] == len(read_lines(files[0]))
    ok, fail = assert_lossless(out, IDS)
    assert s["generated"] == len(ok) and s["failed"] == len(fail) and len(ok) + len(fail) == len(IDS)
    train = json.loads((out / "train.json").read_text())
    assert [x["id"] for x in train] == [i for i in IDS if i in ok]
    if provider == "vllm":
        assert fail["s01"]["error"] == ("HTTP 400: The decoder prompt (length 9000) is longer than the maximum model "
                                        "length of 8192.") and fail["s01"]["kind"] == "request"
        assert s["total"]["tokens_in"] == 50 * 4
    if provider == "openai":
        assert fail["s01"]["kind"] == "batch_expired" and fail["s03"]["error"] == "HTTP 400: Invalid image."
        assert fail["s04"]["kind"] == "malformed"
    if provider == "anthropic":
        assert "coco/000000123.jpg" in ok  # the hashed custom id mapped back
        assert fail["s01"]["error"] == "invalid_request_error: Image too large." and fail["s01"]["kind"] == "request"
        assert fail["s03"]["kind"] == "batch_expired" and fail["s04"]["kind"] == "batch_canceled"
        assert s["total"]["tokens_in"] == 100 * 3 and s["total"]["requests"] == 3  # unrun requests not billed
    if provider == "gemini":
        assert fail["s01"]["error"] == "400: Unable to process input image." and fail["s01"]["kind"] == "request"
        assert "cut at max_tokens" in fail["s04"]["error"]
        assert s["total"]["tokens_out"] == 40 * 4 + 70


def test_unrecognised_result_files_are_errors_naming_file_and_line(tmp_path, capsys):
    from presel.cli import main

    sel = selection(tmp_path, ["a", "b"])
    out = tmp_path / "gen"
    r = batch_files_to_dir(sel, out, cfg(), BatchConfig())
    reqs = read_lines(out / r["files"][0]["name"])
    anth = tmp_path / "anthropic.jsonl"
    write(anth, [{"custom_id": "a", "result": {"type": "expired"}}, {"custom_id": "b", "result": {"type": "canceled"}}])
    weird = write(tmp_path / "weird.jsonl", [{"custom_id": "a", "result": {"type": "expired"}}, {"foo": 1}])
    with pytest.raises(PreselError, match=r"weird.jsonl line 2: not a batch result line .*keys are \['foo'\].*"
                                          r"expected one of: .*custom_id.*result.*key"):
        collect_to_dir(out, [weird])
    with pytest.raises(PreselError, match=r"line 1: .*looks like a request file"):
        collect_to_dir(out, [out / r["files"][0]["name"]])
    mid = tmp_path / "mid.jsonl"
    mid.write_text('{"custom_id": "a", "resp\n' + json.dumps({"custom_id": "b", "result": {"type": "expired"}}) + "\n")
    with pytest.raises(PreselError, match=r"mid.jsonl line 1: not JSON"):
        collect_to_dir(out, [mid])
    with pytest.raises(PreselError, match=r"line 1: .*it is a anthropic result line, but --provider openai"):
        collect_to_dir(out, [anth], provider="openai")
    assert not (out / "results.jsonl").exists() or not read_lines(out / "results.jsonl")  # nothing half-collected
    assert main(["generate", "--collect", str(weird), "--out", str(out)]) == 2
    assert "weird.jsonl line 2" in capsys.readouterr().err
    # the Anthropic file itself collects (auto-detected) into recorded failures, not an empty success
    s = collect_to_dir(out, [anth])
    assert s["complete"] and s["failed"] == 2 and s["generated"] == 0 and s["failures_by_kind"] == {
        "batch_canceled": 1, "batch_expired": 1}
    assert len(reqs) == 2


# --------------------------------------------------------------------------- batch APIs


def test_openai_batch_api_token_cap_refusals_and_lost_create(tmp_path):
    ids = [f"s{i:02d}" for i in range(12)]
    sel = selection(tmp_path, ids)
    # one file = 2 requests; the server takes 3 requests' worth of tokens, presel's cap allows 2 files
    srv = FakeBatchAPI(token_cap=300, tokens_per_request=100, drop_creates={1},
                       batch_script=["complete:2"] * 40, script={"s05": ["400"]})
    srv.base_url = srv.start()
    logs = []
    try:
        out = tmp_path / "gen"
        bc = BatchConfig(max_lines=2, poll_interval=0.01, poll_max=0.01)

        def run(**kw):
            return batch_api_to_dir(sel, out, cfg(base_url=srv.base_url, **kw), bc, sleep=lambda s: None,
                                    log=logs.append)
        # the estimate of one request (same for all: same template, same fake image size)
        ctx_probe = batch_files_to_dir(sel, tmp_path / "probe", cfg(), bc)
        per_req = ctx_probe["estimate"]["tokens_in"] // 12
        bc.max_enqueued_tokens = 4 * per_req  # two files of two requests
        s = run()
        state = json.loads((out / "batch_api_state.json").read_text())
        assert s["complete"] and len(state["batches"]) == 6
        assert all(e["tokens"] <= 2 * per_req for e in state["batches"])
        refused = [b for e in state["batches"] for b in e.get("refused", [])]
        assert refused and any("enqueued-token limit" in m for m in logs)  # the server refused, presel waited
        assert srv.max_enqueued <= 300
        # the dropped create made a batch that presel adopted instead of creating a second one
        assert sum(1 for e in state["batches"] if e.get("adopted")) == 1
        made = [b for b in srv.batches.values() if b["status"] != "failed"]
        assert len(made) == 6  # one batch per file, none duplicated
        assert sorted(b["input_file_id"] for b in made) == sorted(e["input_file_id"] for e in state["batches"])
        ok, fail = assert_lossless(out, ids)
        assert list(fail) == ["s05"]
        # --retry-failed goes through the same cap
        before = srv.created
        s2 = run(retry_failed=True)
        assert s2["complete"] and s2["failed"] == 0 and srv.created == before + 1
        assert_lossless(out, ids)
    finally:
        srv.stop()
    assert not srv.server_errors


def test_openai_create_lost_then_crash_resumes_without_duplicate(tmp_path):
    ids = ["a", "b", "c"]
    sel = selection(tmp_path, ids)
    srv = FakeBatchAPI(drop_creates={0})
    srv.base_url = srv.start()
    try:
        out = tmp_path / "gen"
        with pytest.raises(PreselError, match="rerun the same command to resume"):  # no retries: the run stops
            batch_api_to_dir(sel, out, cfg(base_url=srv.base_url, max_retries=0), BatchConfig(poll_interval=0.01,
                             poll_max=0.01), sleep=lambda s: None, log=lambda m: None)
        e = json.loads((out / "batch_api_state.json").read_text())["batches"][0]
        assert e["input_file_id"] and e["create_started"] and e["batch_id"] is None and srv.created == 1
        s = batch_api_to_dir(sel, out, cfg(base_url=srv.base_url), BatchConfig(poll_interval=0.01, poll_max=0.01),
                             sleep=lambda s: None, log=lambda m: None)
        assert s["complete"] and srv.created == 1 and len(srv.files) == 2  # the one upload + its output
        assert s["batches"][0]["batch_id"] == "batch_0000"
        assert_lossless(out, ids)
    finally:
        srv.stop()


def test_openai_create_that_times_out_after_the_batch_was_made(tmp_path):
    ids = ["a", "b"]
    sel = selection(tmp_path, ids)
    srv = FakeBatchAPI(hang_creates={0: 1.5})
    srv.base_url = srv.start()
    try:
        s = batch_api_to_dir(sel, tmp_path / "gen", cfg(base_url=srv.base_url, timeout=0.5),
                             BatchConfig(poll_interval=0.01, poll_max=0.01), sleep=lambda s: None, log=lambda m: None)
        assert s["complete"] and srv.created == 1  # the timed-out create was found by its marker, not repeated
        assert s["batches"][0]["batch_id"] == "batch_0000"
        assert_lossless(tmp_path / "gen", ids)
    finally:
        srv.stop()


def test_anthropic_batch_api(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")  # the default key variable for anthropic
    sel = selection(tmp_path)
    srv = FakeAnthropic(batch_script=["end:2", "expire:1"], drop_creates={0}, script={"s03": ["400"]})
    srv.base_url = srv.start()
    try:
        out = tmp_path / "gen"
        s = batch_api_to_dir(sel, out, cfg(base_url=srv.base_url),
                             BatchConfig(provider="anthropic", max_lines=3, poll_interval=0.01, poll_max=0.01),
                             sleep=lambda s: None, log=lambda m: None)
        assert srv.created == 2  # the dropped create was found by its time and request count, not made twice
        assert all(h.get("x-api-key") == "sk-ant-test" and "authorization" not in h for h in srv.headers_seen)
        ok, fail = assert_lossless(out, IDS)
        assert "coco/000000123.jpg" in ok
        assert fail["s03"]["kind"] == "request" and "scripted 400" in fail["s03"]["error"]
        assert {fail[i]["kind"] for i in ("s04", "s05")} == {"batch_expired"}  # second file half expired
        assert s["complete"] and s["provider"] == "anthropic"
    finally:
        srv.stop()
    assert not srv.server_errors


def test_gemini_batch_api(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "g-test")
    sel = selection(tmp_path)
    srv = FakeGemini(batch_script=["end:2", "end:1"], drop_creates={1}, script={"s00": ["malformed"]})
    srv.base_url = srv.start()
    try:
        out = tmp_path / "gen"
        s = batch_api_to_dir(sel, out, cfg(base_url=srv.base_url, api_key_env="GEMINI_API_KEY", model="gemini-2.5-flash"),
                             BatchConfig(provider="gemini", max_lines=3, poll_interval=0.01, poll_max=0.01),
                             sleep=lambda s: None, log=lambda m: None)
        assert srv.created == 2 and len([f for f in srv.files if not f.startswith("files/batch-")]) == 2
        assert all(h.get("x-goog-api-key") == "g-test" for h in srv.headers_seen)
        ok, fail = assert_lossless(out, IDS)
        assert list(fail) == ["s00"] and fail["s00"]["kind"] == "malformed"  # s00 is a vqa item: needs JSON
        assert s["complete"] and s["total"]["tokens_in"] == 100 * 6
    finally:
        srv.stop()
    assert not srv.server_errors


# --------------------------------------------------------------------------- client and estimates


def test_client_retry_headers_409_and_should_retry(tmp_path):
    from presel.generate.client import ChatClient, RequestError, TransientError

    body = lambda item: {"model": "m", "messages": [{"role": "user", "content": [  # noqa: E731
        {"type": "image_url", "image_url": {"url": f"https://x/{item}"}}, {"type": "text", "text": "q"}]}]}
    srv = FakeOpenAI(script={"a": ["409"], "b": ["429ms:250"], "c": ["should:false:503"], "d": ["should:true:400"]})
    with srv:
        c = ChatClient(srv.base_url, timeout=5)
        try:
            for item in ("a", "d"):
                with pytest.raises(TransientError):
                    c.chat(body(item))
                assert c.chat(body(item)).text  # retried, then answered
            with pytest.raises(TransientError) as ei:
                c.chat(body("b"))
            assert ei.value.retry_after == 0.25
            with pytest.raises(RequestError):  # the server says: do not retry
                c.chat(body("c"))
        finally:
            c.close()


def test_online_temperature_none_and_image_detail(tmp_path, server, fast_cfg):
    from presel.generate.online import generate_to_dir

    sel = make_selection(tmp_path, {"a": "vqa"})
    generate_to_dir(sel, tmp_path / "on", fast_cfg(server.base_url, temperature="none", image_detail="high"),
                    progress=False)
    b = server.bodies[0]
    assert "temperature" not in b and b["messages"][-1]["content"][0]["image_url"]["detail"] == "high"
    with pytest.raises(PreselError, match="must be a number in \\[0, 2\\] or none"):
        GenerateConfig(temperature="warm")
    assert GenerateConfig(temperature="0.3").temperature == 0.3


def test_image_token_rules_per_model():
    from presel.generate.image_tokens import image_tokens, rule_for_model

    assert image_tokens(1024, 1024, model="gpt-4o") == 85 + 4 * 170
    assert image_tokens(1024, 1024, model="gpt-4o-mini") == 2833 + 4 * 5667
    assert image_tokens(1024, 1024, model="gpt-4o", detail="low") == 85
    assert image_tokens(1024, 1024, model="gpt-4.1") == 765
    assert image_tokens(1024, 1024, model="gpt-4.1-mini") == 1659  # 32x32 patches x 1.62
    assert image_tokens(1024, 1024, model="o4-mini") == 1762
    assert image_tokens(4096, 4096, model="gpt-4.1-nano") == 3742  # scaled to 39x39 patches (cap 1536) x 2.46
    assert image_tokens(1024, 1024, model="Qwen/Qwen2-VL-7B-Instruct") == 35 * 35
    assert image_tokens(336, 336, rule="qwen2vl") == 12 * 12
    assert rule_for_model("o3") == ("o-series", 1.0)
    assert image_tokens(1000, 1000, model="claude-sonnet-4-5") == 1334  # 1000 x 1000 / 750
    assert image_tokens(300, 200, model="gemini-2.5-flash") == 258
    assert image_tokens(1024, 768, model="gemini-2.5-flash") == 258 * 2 * 2  # 512-px tiles
    with pytest.raises(PreselError, match="image_detail"):
        image_tokens(1, 1, detail="ultra")


def test_generate_writes_hf_dataset_beside_train_json(tmp_path, server, fast_cfg):
    datasets = pytest.importorskip("datasets")
    from gen_fake_server import fake_image_bytes

    from presel.generate.online import generate_to_dir

    sel = make_selection(tmp_path, {"a": "vqa", "b": "vqa"})
    s = generate_to_dir(sel, tmp_path / "on", fast_cfg(server.base_url, format="hf-datasets"), progress=False)
    assert s["outputs"] == ["train.json", "train_hf"]
    ds = datasets.load_from_disk(str(tmp_path / "on" / "train_hf"))
    assert ds["id"] == ["a", "b"] and ds["messages"][0][0]["content"][0] == {"type": "image", "text": None}
    stored = ds.data.column("images").to_pylist()  # the fake images: a real PNG, then the id
    assert stored[1][0]["bytes"] == fake_image_bytes("b")  # embedded, not a path
