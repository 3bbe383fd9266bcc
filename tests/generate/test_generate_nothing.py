"""Success on nothing is no success: oracle with no match, and a server that cannot be reached."""

import json
import socket

from gen_fake_server import make_selection

from presel.cli import main
from presel.generate.online import generate_to_dir


def test_oracle_with_no_matching_annotation_is_an_error(tmp_path, capsys):
    sel = make_selection(tmp_path, {"s1": "vqa", "s2": "vqa"})
    anns = tmp_path / "anns.jsonl"
    anns.write_text(json.dumps({"id": "other", "image": "elsewhere/x.png",
                                "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]})
                    + "\n")
    rc = main(["generate", "--selection", str(sel), "--from-annotations", str(anns), "--out", str(tmp_path / "gen")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{anns}: none of the 2 selected image(s)" in err and "id s1" in err
    assert not (tmp_path / "gen").exists()


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_connection_refused_records_no_item_failures(tmp_path, server, fast_cfg, capsys):
    sel = make_selection(tmp_path, {f"s{i}": "vqa" for i in range(6)})
    out = tmp_path / "gen"
    args = ["generate", "--selection", str(sel), "--model", "fake-vlm", "--out", str(out), "--max-retries", "1", "--backoff-base", "0.01",
            "--no-progress"]
    rc = main([*args, "--base-url", f"http://127.0.0.1:{_free_port()}/v1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot connect to the server at http://127.0.0.1:" in err
    fails = (out / "failures.jsonl").read_text() if (out / "failures.jsonl").exists() else ""
    assert fails == ""  # nothing recorded: the items were never tried by a server
    # the same command with the server up finishes every item
    summary = generate_to_dir(sel, out, fast_cfg(server.base_url), progress=False)
    assert summary["complete"] and summary["generated"] == 6 and summary["failed"] == 0


def test_api_key_echoed_by_the_server_is_never_written(tmp_path, server, fast_cfg, monkeypatch):
    from gen_fake_server import FakeOpenAI

    key = "sk-test-0123456789abcdef"
    monkeypatch.setenv("PRESEL_TEST_KEY", key)

    def echo_headers(h, raw):  # a server whose error body echoes the request headers
        FakeOpenAI.send_json(h, 400, {"error": {"message": f"bad request; headers: {dict(h.headers)}"}})

    server.extra_routes[("POST", "/v1/chat/completions")] = echo_headers
    sel = make_selection(tmp_path, {"s1": "vqa"})
    out = tmp_path / "gen"
    summary = generate_to_dir(sel, out, fast_cfg(server.base_url, api_key_env="PRESEL_TEST_KEY"), progress=False)
    assert summary["failed"] == 1
    fails = (out / "failures.jsonl").read_text()
    assert "headers" in fails and "[api key redacted]" in fails
    for f in out.rglob("*"):
        if f.is_file():
            assert key not in f.read_text(errors="replace"), f
