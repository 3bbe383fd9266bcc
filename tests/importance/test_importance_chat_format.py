"""``presel score`` with a named chat format (llava-v1) and the end-of-turn warning."""

import json
import math

import pytest
from imp_data import make_annotated

from presel.importance.scoring import ScoreConfig, score_to_dir

torch = pytest.importorskip("torch")

NO_EOT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {% for p in m['content'] %}"
                   "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}{% endfor %}\n"
                   "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")


def _cfg(model, **kw):
    return ScoreConfig(model=str(model), **{"batch_size": 4, "dtype": "fp32", "device": "cpu", **kw})


def test_official_protocol_scores_in_llava_v1(tiny_llava, tmp_path, capsys):
    data = make_annotated(tmp_path / "data", bad=False)
    s = score_to_dir(data, tmp_path / "irs", _cfg(tiny_llava, protocol="official"), progress=False)
    assert s["chat_format"] == "llava-v1" and s["scored"] == 8 and "no_end_of_turn" not in s
    assert "warning" not in capsys.readouterr().err
    rows = [json.loads(x) for f in sorted((tmp_path / "irs" / "shards").glob("*.jsonl")) for x in f.read_text().splitlines()]
    assert all(math.isfinite(r["irs"]) for r in rows)
    own = score_to_dir(data, tmp_path / "irs_own", _cfg(tiny_llava), progress=False)
    assert "chat_format" not in own
    a = {r["id"]: r["loss_q"] for r in rows}
    b = [json.loads(x) for f in sorted((tmp_path / "irs_own" / "shards").glob("*.jsonl")) for x in f.read_text().splitlines()]
    assert any(abs(a[r["id"]] - r["loss_q"]) > 1e-6 for r in b)  # another rendering, other losses
    # the chat format is part of the settings: resuming with another one is refused
    from presel.errors import PreselError

    with pytest.raises(PreselError, match="chat_format"):
        score_to_dir(data, tmp_path / "irs", _cfg(tiny_llava), progress=False)


def test_warns_once_when_labels_hold_no_end_of_turn(tiny_llava, tmp_path, capsys, monkeypatch):
    import presel.vlm.load as load

    real = load.load_vlm

    def no_eot(*a, **kw):
        model, proc = real(*a, **kw)
        proc.chat_template = NO_EOT_TEMPLATE
        return model, proc

    monkeypatch.setattr(load, "load_vlm", no_eot)
    data = make_annotated(tmp_path / "data", bad=False)
    s = score_to_dir(data, tmp_path / "irs", _cfg(tiny_llava, render_workers=0), progress=False)
    err = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert len(err) == 1 and "no end-of-turn token" in err[0] and "--chat-format llava-v1" in err[0]
    assert any(f"'c{i}'" in err[0] for i in range(8))
    assert s["no_end_of_turn"] == 8


def test_cli_flags(tiny_llava, tmp_path):
    from presel.cli import main

    data = make_annotated(tmp_path / "data", n=2, bad=False)
    for i, (flags, want) in enumerate(((["--protocol", "official"], "llava-v1"), (["--chat-format", "llava-v1"], "llava-v1"),
                        ([], None))):
        out = tmp_path / f"o{i}"
        assert main(["score", "--data", str(data), "--model", str(tiny_llava), "--out", str(out), "--quiet",
                     "--device", "cpu", "--dtype", "fp32", *flags]) == 0
        assert json.loads((out / "summary.json").read_text()).get("chat_format") == want
        assert json.loads((out / "config.json").read_text())["config"]["protocol"] == (
            "official" if "--protocol" in flags else "paper")
