"""Batch files, collect, batch API (local files + batches server), structured output."""

import io
import json
import random

import pytest
from gen_fake_server import FakeBatchAPI, fake_image_bytes, make_selection, ok_answer

from presel.errors import PreselError
from presel.generate.batch import BatchConfig, batch_files_to_dir, collect_to_dir
from presel.generate.batch_api import batch_api_to_dir
from presel.generate.online import GenerateConfig, generate_to_dir

REQUEST_SCHEMA = {
    "type": "object", "required": ["custom_id", "method", "url", "body"], "additionalProperties": False,
    "properties": {
        "custom_id": {"type": "string", "minLength": 1}, "method": {"const": "POST"},
        "url": {"const": "/v1/chat/completions"},
        "body": {"type": "object", "required": ["model", "messages"],
                 "properties": {"model": {"type": "string"}, "messages": {"type": "array", "minItems": 1}}},
    },
}


def read_lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def cfg(**kw):
    kw.setdefault("model", "fake-vlm")
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_max", 0.05)
    return GenerateConfig(**kw)


def output_line(req, text=None, status=200, n=0):
    """What vllm run-batch / a provider writes for one request."""
    cid = req["custom_id"]
    body = ({"id": f"c-{cid}", "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": text or ok_answer(cid)}}],
             "usage": {"prompt_tokens": 100, "completion_tokens": 20}} if status == 200
            else {"error": {"message": f"scripted {status}"}})
    return {"id": f"vllm-{cid}-{n}", "custom_id": cid, "error": None,
            "response": {"status_code": status, "request_id": f"r-{cid}-{n}", "body": body}}


def test_request_files_format_split_transport_and_estimate(tmp_path):
    import jsonschema
    from PIL import Image

    sel = make_selection(tmp_path, {f"s{i:02d}": ("vqa", "caption")[i % 2] for i in range(10)}, {"r0": "vqa"})
    Image.new("RGB", (1024, 1024), "white").save(tmp_path / "images" / "vqa" / "s00.png")  # one real image
    r = batch_files_to_dir(sel, tmp_path / "gen", cfg(price_in=2.0, price_out=8.0), BatchConfig(max_lines=3))
    assert [f["lines"] for f in r["files"]] == [3, 3, 3, 1]
    ids = []
    for f in r["files"]:
        for line in read_lines(tmp_path / "gen" / f["name"]):
            jsonschema.validate(line, REQUEST_SCHEMA)
            url = line["body"]["messages"][-1]["content"][0]["image_url"]["url"]
            assert url.startswith("data:image/png;base64,")
            ids.append(line["custom_id"])
        assert (tmp_path / "gen" / f["name"]).stat().st_size == f["bytes"]
    assert ids == [f"s{i:02d}" for i in range(10)]  # selected only, selection order, each once
    est = r["estimate"]
    assert est["items"] == 10 and est["saving_fraction"] == 0.5 and est["images_without_size"] == 0
    assert est["batch_cost"] == pytest.approx(est["online_cost"] / 2)
    # 1024x1024 -> 768x768 -> 4 tiles of 512 -> 85 + 4 * 170 tokens; the fake 2x2 images are 1 tile
    manifest = json.loads((tmp_path / "gen" / "requests_manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == [f["name"] for f in r["files"]]

    r2 = batch_files_to_dir(sel, tmp_path / "gen2", cfg(), BatchConfig(image_transport="path"))
    sizes = [len(x) for x in (tmp_path / "gen2" / "requests-00000.jsonl").read_bytes().splitlines(keepends=True)]
    limit = max(sizes) * 2 + 1
    r2b = batch_files_to_dir(sel, tmp_path / "gen2b", cfg(), BatchConfig(max_bytes=limit, image_transport="path"))
    assert all(f["bytes"] <= limit and f["lines"] == 2 for f in r2b["files"]) and len(r2b["files"]) == 5
    first = read_lines(tmp_path / "gen2" / r2["files"][0]["name"])[0]
    assert first["body"]["messages"][-1]["content"][0]["image_url"]["url"].startswith("file:///")
    r3 = batch_files_to_dir(sel, tmp_path / "gen3", cfg(), BatchConfig(image_transport="url",
                                                                      image_url_prefix="https://cdn.example/pool/"))
    first = read_lines(tmp_path / "gen3" / r3["files"][0]["name"])[0]
    assert first["body"]["messages"][-1]["content"][0]["image_url"]["url"] == "https://cdn.example/pool/images/vqa/s00.png"
    with pytest.raises(PreselError, match="over max_bytes=1024"):
        batch_files_to_dir(sel, tmp_path / "gen4", cfg(), BatchConfig(max_bytes=1024))
    with pytest.raises(PreselError, match="needs image_url_prefix"):
        BatchConfig(image_transport="url")


def test_collect_scrambled_partial_repeated_then_more_files(tmp_path):
    sel = make_selection(tmp_path, {f"s{i:02d}": ("vqa", "chart")[i % 2] for i in range(12)}, {"r0": "vqa"})
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps([{"id": "r0", "image": "images/vqa/r0.png",
                                "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}]))
    out = tmp_path / "gen"
    r = batch_files_to_dir(sel, out, cfg(price_in=1.0, price_out=1.0), BatchConfig(max_lines=5),
                           reference_annotations=ref)
    reqs = [x for f in r["files"] for x in read_lines(out / f["name"])]
    outs = [output_line(q) for q in reqs]
    outs[3] = output_line(reqs[3], status=500)                      # s03 fails first ...
    outs[5] = output_line(reqs[5], text="no json here")             # s05 malformed
    random.Random(0).shuffle(outs)
    a, b = outs[:6], outs[6:]
    (tmp_path / "res-a.jsonl").write_text("".join(json.dumps(x) + "\n" for x in a))
    (tmp_path / "res-a-copy.jsonl").write_text("".join(json.dumps(x) + "\n" for x in a))
    extra = {"id": "zzz", "custom_id": "not-selected", "response": None, "error": {"code": "x", "message": "y"}}
    b_text = "".join(json.dumps(x) + "\n" for x in b + [extra])
    torn_id = b[-1]["custom_id"]
    b_torn = b_text[: b_text.rindex(json.dumps(b[-1]))] + json.dumps(extra) + "\n" + json.dumps(b[-1])[:40]
    (tmp_path / "res-b-partial.jsonl").write_text(b_torn)

    s1 = collect_to_dir(out, [tmp_path / "res-a.jsonl", tmp_path / "res-a-copy.jsonl"])
    assert s1["collect"]["repeated"] == 6 and s1["collect"]["ok"] + s1["collect"]["failed"] == 6
    assert s1["pending"] == 6 and not (out / "train.json").exists()
    s2 = collect_to_dir(out, [tmp_path / "res-b-partial.jsonl", tmp_path / "res-a.jsonl"])
    assert s2["collect"]["bad_lines"] == 1 and s2["collect"]["unknown_ids"] == 1 and s2["collect"]["repeated"] == 6
    assert s2["pending"] == 1 and s2["failed"] == 2
    # allow_partial writes what is there
    s2b = collect_to_dir(out, [tmp_path / "res-a.jsonl"], allow_partial=True)
    assert s2b["train_records"] == 1 + 12 - 2 - 1
    # a request file for just the failures and the missing item
    r2 = batch_files_to_dir(sel, out, cfg(price_in=1.0, price_out=1.0, retry_failed=True), BatchConfig(),
                            reference_annotations=ref)
    assert [f["name"] for f in r2["files"]] == ["requests-00003.jsonl"]
    redo = read_lines(out / "requests-00003.jsonl")
    assert sorted(x["custom_id"] for x in redo) == sorted({"s03", "s05", torn_id})
    (tmp_path / "res-c.jsonl").write_text("".join(json.dumps(output_line(q, n=1)) + "\n" for q in redo))
    s3 = collect_to_dir(out, [tmp_path / "res-c.jsonl"])
    assert s3["complete"] and s3["failed"] == 0 and s3["generated"] == 12
    res = read_lines(out / "results.jsonl")
    assert sorted(x["id"] for x in res) == [f"s{i:02d}" for i in range(12)]  # each once
    # every answered line billed once: 12 ok + 2 failed first tries (the 500 carried no usage)
    assert s3["total"]["tokens_in"] == 100 * (12 + 1) and s3["total"]["requests"] == 12 + 2
    train = json.loads((out / "train.json").read_text())
    assert [x["id"] for x in train] == ["r0"] + [f"s{i:02d}" for i in range(12)]
    with pytest.raises(PreselError, match="has no config.json"):
        collect_to_dir(tmp_path / "nowhere", [tmp_path / "res-a.jsonl"])


def test_batch_api_slow_expired_failed_resume_and_retry(tmp_path):
    sel = make_selection(tmp_path, {f"s{i:02d}": "vqa" for i in range(12)})
    srv = FakeBatchAPI(batch_script=["complete:5", "expire:1", "fail:1"], script={"s01": ["malformed"]})
    srv.base_url = srv.start()
    try:
        out = tmp_path / "gen"
        waits = []
        bc = BatchConfig(max_lines=4, poll_interval=1.0, poll_max=2.0)
        # first run gives up before the slow batch completes
        with pytest.raises(PreselError, match="still running .* rerun the same command to resume"):
            batch_api_to_dir(sel, out, cfg(base_url=srv.base_url), BatchConfig(max_lines=4, poll_interval=1.0,
                                                                                 poll_max=2.0, max_wait=0.5),
                             sleep=waits.append, log=lambda m: None)
        state = json.loads((out / "batch_api_state.json").read_text())
        assert srv.created == 3 and [e["batch_id"] for e in state["batches"]] == ["batch_0000", "batch_0001", "batch_0002"]
        # resumed: polls the same batches, submits nothing new
        s = batch_api_to_dir(sel, out, cfg(base_url=srv.base_url), bc, sleep=waits.append, log=lambda m: None)
        assert srv.created == 3 and len(srv.files) == 3 + 2 + 1  # 3 uploads, outputs+errors of 1 and 2, output of 0
        assert waits == [1.0, 1.5, 2.0]  # backoff between polls (x1.5), capped by poll_max
        assert s["complete"] and [b["status"] for b in s["batches"]] == ["completed", "expired", "failed"]
        kinds = s["failures_by_kind"]
        assert kinds == {"malformed": 1, "batch_expired": 2, "batch_failed": 4}
        assert s["generated"] == 12 - 7
        # retry the failures: new request files (7 requests, 4 per file) and batches for them only
        srv.batch_script.append("complete:1")
        srv.script = {}
        s2 = batch_api_to_dir(sel, out, cfg(base_url=srv.base_url, retry_failed=True), bc, sleep=waits.append,
                              log=lambda m: None)
        assert srv.created == 5 and s2["complete"] and s2["failed"] == 0 and s2["generated"] == 12
        redo = read_lines(out / "requests-00003.jsonl") + read_lines(out / "requests-00004.jsonl")
        assert sorted(x["custom_id"] for x in redo) == ["s01", "s06", "s07", "s08", "s09", "s10", "s11"]
        ids = [x["id"] for x in read_lines(out / "results.jsonl")]
        assert sorted(ids) == [f"s{i:02d}" for i in range(12)]
    finally:
        srv.stop()


STRUCT_TEMPLATES = """
templates:
  attrs:
    kind: json
    user: Give the colour and count as JSON.
    instructions: [Give the colour and count of the objects as JSON.]
    json_schema:
      type: object
      required: [colour, count]
      additionalProperties: false
      properties:
        colour: {type: string}
        count: {type: integer, minimum: 0}
"""


def structured_answer(item_id):
    if item_id.endswith("bad"):
        return json.dumps({"colour": "red", "count": "three"})
    return json.dumps({"colour": "red", "count": 3})


def test_structured_output_online_and_batch(tmp_path):
    tpl = tmp_path / "t.yaml"
    tpl.write_text(STRUCT_TEMPLATES)
    sel = make_selection(tmp_path, {"a": "attrs", "b-bad": "attrs", "c": "attrs"})
    srv = FakeBatchAPI(answer=structured_answer)
    srv.base_url = srv.start()
    try:
        s = generate_to_dir(sel, tmp_path / "on", cfg(base_url=srv.base_url, templates=str(tpl), parse_retries=1),
                            progress=False)
        body = srv.bodies[0]
        rf = body["response_format"]
        assert rf["type"] == "json_schema" and rf["json_schema"]["schema"]["required"] == ["colour", "count"]
        assert s["generated"] == 2 and s["failed"] == 1 and srv.attempts["b-bad"] == 2
        assert [b["seed"] for b in srv.bodies if srv.item_of(b) == "b-bad"] == [0, 1]  # re-asked with a new seed
        fail = read_lines(tmp_path / "on" / "failures.jsonl")[0]
        assert fail["id"] == "b-bad" and "json_schema at count" in fail["error"]
        train = json.loads((tmp_path / "on" / "train.json").read_text())
        assert json.loads(train[0]["conversations"][1]["value"]) == {"colour": "red", "count": 3}
        sb = batch_api_to_dir(sel, tmp_path / "bt", cfg(base_url=srv.base_url, templates=str(tpl)),
                              BatchConfig(poll_interval=0.01, poll_max=0.01), sleep=lambda x: None, log=lambda m: None)
        req = read_lines(tmp_path / "bt" / "requests-00000.jsonl")[0]
        assert req["body"]["response_format"]["type"] == "json_schema"
        assert sb["generated"] == 2 and sb["failures_by_kind"] == {"malformed": 1}
    finally:
        srv.stop()


def test_cli_batch_file_then_collect_glob(tmp_path, capsys):
    from presel.cli import main

    sel = make_selection(tmp_path, {"a": "vqa", "b": "ocr"})
    out = tmp_path / "gen"
    assert main(["generate", "--selection", str(sel), "--mode", "batch-file", "--model", "m", "--out", str(out),
                 "--price-in", "3", "--price-out", "15", "--image-tokens", "1000"]) == 0
    text = capsys.readouterr().out
    assert "requests-00000.jsonl: 2 requests" in text and "saving" in text and "(50%)" in text
    reqs = read_lines(out / "requests-00000.jsonl")
    (tmp_path / "results-00000.jsonl").write_text("".join(json.dumps(output_line(q)) + "\n" for q in reqs))
    assert main(["generate", "--collect", str(tmp_path / "results-*.jsonl"), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["generated"] == 2 and summary["estimate"]["tokens_in"] > 2000
    assert len(json.loads((out / "train.json").read_text())) == 2
    assert main(["generate", "--mode", "batch-file", "--model", "m", "--out", str(out)]) == 2  # no --selection


def test_fake_image_bytes_name_their_item():
    from PIL import Image

    data = fake_image_bytes("x", pad=10)
    assert data.split(b"fake ", 1)[1].split(b"\n")[0] == b"x"
    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # a real image: presel sends only files that decode


def test_batch_api_unknown_route_is_a_clear_error_and_state_is_kept(tmp_path, server):
    sel = make_selection(tmp_path, {"a": "vqa"})
    with pytest.raises(PreselError, match="HTTP 404 .* rerun the same command to resume"):
        batch_api_to_dir(sel, tmp_path / "gen", cfg(base_url=server.base_url), sleep=lambda x: None,
                         log=lambda m: None)  # a chat-only server has no /v1/files
    state = json.loads((tmp_path / "gen" / "batch_api_state.json").read_text())
    assert state["batches"][0]["input_file_id"] is None and (tmp_path / "gen" / "requests-00000.jsonl").exists()
