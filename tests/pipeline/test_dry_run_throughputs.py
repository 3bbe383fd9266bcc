"""``presel run CONFIG --dry-run --throughputs FILE``: measured throughputs from a JSON file."""

import json

import pytest
import yaml

from presel.cli import main


def _setup(tmp_path, estimate=None):
    rows = [{"id": f"r{i}", "image": f"img/{i}.jpg", "task": "t"} for i in range(7200)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"out": "run", "pool": {"path": "pool.jsonl"}, "embed": {"model": "dinov2-small"}}
    if estimate:
        cfg["estimate"] = estimate
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "config.yaml"


def _embed_hours(out: str) -> float:
    row = next(line for line in out.splitlines() if line.startswith("embed "))
    return float(row.split()[1])


def test_throughputs_file_overrides_the_estimate_section(tmp_path, capsys):
    cfg = _setup(tmp_path, estimate={"embed_images_per_s": 1.0})
    assert main(["run", str(cfg), "--dry-run"]) == 0
    assert _embed_hours(capsys.readouterr().out) == 2.0  # 7200 images at 1/s
    (tmp_path / "t.json").write_text(json.dumps({"embed_images_per_s": 4.0, "score_samples_per_s": 9.5}))
    assert main(["run", str(cfg), "--dry-run", "--throughputs", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert _embed_hours(out) == 0.5
    assert "embed_images_per_s" not in out.split("assumed throughputs")[1]
    assert "score_samples_per_s" not in out.split("assumed throughputs")[1]
    assert "finetune_samples_per_s = 2.3" in out  # still assumed, and said so
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content,needle", [
    ('{"embed_images_per_sec": 5}', "unknown key 'embed_images_per_sec'"),
    ('{"embed_images_per_s": -1}', "must be a number > 0"),
    ('{"embed_images_per_s": "fast"}', "must be a number > 0"),
    ('[1, 2]', "must be a JSON object"),
    ('{"embed_images_per_s": 5,\n', "line 2: not valid JSON"),
])
def test_bad_throughputs_file_is_one_clear_error(tmp_path, capsys, content, needle):
    cfg = _setup(tmp_path)
    (tmp_path / "t.json").write_text(content)
    assert main(["run", str(cfg), "--dry-run", "--throughputs", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "t.json" in err


def test_throughputs_needs_dry_run(tmp_path, capsys):
    cfg = _setup(tmp_path)
    (tmp_path / "t.json").write_text("{}")
    assert main(["run", str(cfg), "--throughputs", str(tmp_path / "t.json")]) == 2
    assert "--dry-run" in capsys.readouterr().err
    assert main(["run", str(cfg), "--dry-run", "--throughputs", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
