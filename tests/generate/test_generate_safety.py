"""Only images inside the image root that decode as images ever leave the machine (online and batch)."""

import base64
import json

from gen_fake_server import make_selection

from presel.generate.batch import BatchConfig, batch_files_to_dir
from presel.generate.online import generate_to_dir

SECRET = b"API_KEY=topsecret-do-not-send\n"


def _hostile_selection(tmp_path):
    run = tmp_path / "run"
    sel = make_selection(run, {"good": "vqa"})
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / ".env").write_bytes(SECRET)
    outside = tmp_path / "passwd"
    outside.write_bytes(SECRET)
    (run / "images" / "vqa" / "link.png").symlink_to(tmp_path / "secret" / ".env")  # a link out of the root
    (run / "images" / "vqa" / "notes.png").write_bytes(SECRET)  # inside the root, but not an image
    rows = [json.loads(x) for x in sel.read_text().splitlines()]
    for rid, image in (("dotdot", "../secret/.env"), ("absolute", str(outside)), ("link", "images/vqa/link.png"),
                       ("notimage", "images/vqa/notes.png")):
        rows.append(dict(rows[0], id=rid, image=image))
    sel.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return sel


def _failures(out):
    return {f["id"]: f for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}


def _never_sent(blob: bytes):
    assert SECRET not in blob and base64.b64encode(SECRET)[:24] not in blob


def test_online_refuses_paths_outside_the_root_and_non_images(tmp_path, server, fast_cfg):
    sel = _hostile_selection(tmp_path)
    out = tmp_path / "gen"
    summary = generate_to_dir(sel, out, fast_cfg(server.base_url), progress=False)
    assert [json.loads(x)["id"] for x in (out / "results.jsonl").read_text().splitlines()] == ["good"]
    fails = _failures(out)
    assert set(fails) == {"dotdot", "absolute", "link", "notimage"}
    assert all(f["kind"] == "image" and f["error"].startswith("refused image") for f in fails.values())
    assert "outside the image root" in fails["dotdot"]["error"] and "'..' path" in fails["dotdot"]["error"]
    assert "absolute path" in fails["absolute"]["error"] and "symlink" in fails["link"]["error"]
    assert "not an image" in fails["notimage"]["error"]
    assert dict(server.attempts) == {"good": 1}  # nothing else reached the server
    _never_sent(json.dumps(server.bodies).encode())
    assert summary["failed"] == 4 and summary["failures_by_kind"] == {"image": 4}


def test_batch_files_never_hold_refused_images(tmp_path):
    from presel.generate.online import GenerateConfig

    sel = _hostile_selection(tmp_path)
    out = tmp_path / "gen"
    r = batch_files_to_dir(sel, out, GenerateConfig(base_url="http://127.0.0.1:9", model="m"), BatchConfig())
    ids = [json.loads(x)["custom_id"] for f in r["files"] for x in (out / f["name"]).read_text().splitlines()]
    assert ids == ["good"] and r["estimate"]["items"] == 1
    for f in out.iterdir():
        if f.is_file():
            _never_sent(f.read_bytes())
    assert set(_failures(out)) == {"dotdot", "absolute", "link", "notimage"}
    # path transport (file URIs) and url transport apply the same path policy
    r = batch_files_to_dir(sel, tmp_path / "gen2", GenerateConfig(base_url="http://127.0.0.1:9", model="m"),
                           BatchConfig(image_transport="url", image_url_prefix="https://img.example"))
    ids = [json.loads(x)["custom_id"] for f in r["files"] for x in (tmp_path / "gen2" / f["name"]).read_text().splitlines()]
    assert sorted(ids) == ["good", "notimage"]  # a url is not read here; only paths that leave the root are refused
