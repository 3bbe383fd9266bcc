"""Where a new stage and a new setting go, proven by adding them in a temporary module: the stage is one module,
one registry line and one folder name in presel.layout; a setting is one field of its config dataclass (flag,
YAML key, key membership and resume identity follow). The Stage contract is checked when a subclass is defined."""

import importlib.util
import json
import sys

import pytest
import yaml

STAGE_MODULE = '''
from dataclasses import dataclass

from presel.config import neutral
from presel.errors import PreselError
from presel.io.atomic import write_json
from presel.pipeline.base import Stage


@dataclass
class CountConfig:
    """per_task: also count the records of each task."""

    per_task: bool = False
    threads: int = neutral(1)  # how fast, not what: never in the stage key

    def __post_init__(self):
        if self.threads < 1:
            raise PreselError(f"threads={self.threads} must be >= 1")


class Count(Stage):
    name = "count"
    config = CountConfig
    outputs = {"counts": "counts.json"}
    runs = 0

    def wire(self):
        self.files = {"pool": self.cfg.path(self.cfg.pool["path"])}
        return True

    def run(self):
        type(self).runs += 1
        pool = self.ctx.pool()
        out = {"records": len(pool.records)}
        if self.conf.per_task:
            out["tasks"] = sorted(pool.tasks)
        write_json(self.out_dir / "counts.json", out)
'''


@pytest.fixture
def count_stage(tmp_path, monkeypatch):
    import presel.layout as layout
    import presel.pipeline.registry as registry
    import presel.pipeline.runner as runner

    monkeypatch.setitem(layout.STAGE_DIRS, "count", "counts")  # 1. its folder
    path = tmp_path / "presel_count_stage.py"  # 2. its module
    path.write_text(STAGE_MODULE)
    spec = importlib.util.spec_from_file_location("presel_count_stage", path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "presel_count_stage", mod)
    spec.loader.exec_module(mod)
    reg = (*registry.REGISTRY, mod.Count)  # 3. one registry line
    monkeypatch.setattr(registry, "REGISTRY", reg)
    monkeypatch.setattr(registry, "STAGES", tuple(s.name for s in reg))
    monkeypatch.setattr(registry, "STAGE_DIRS", {s.name: s.dir for s in reg})
    monkeypatch.setattr(runner, "REGISTRY", reg)
    return mod


def test_a_new_stage_is_one_module_one_registry_line_and_one_folder(tmp_path, count_stage, capsys):
    from presel.cli import main

    (tmp_path / "pool.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "image": f"{i}.png", "task": f"t{i % 2}"})
                                                 + "\n" for i in range(6)))
    cfg = tmp_path / "c.yaml"

    def run(section):
        cfg.write_text(yaml.safe_dump({"out": "run", "pool": {"path": "pool.jsonl"}, "count": section}))
        return main(["run", str(cfg)])

    Count = count_stage.Count
    assert Count.dir == "counts" and Count.neutral == {"threads"}
    assert run({}) == 0 and Count.runs == 1
    assert json.loads((tmp_path / "run" / "counts" / "counts.json").read_text()) == {"records": 6}
    assert run({"threads": 4}) == 0 and Count.runs == 1  # neutral: nothing reruns
    assert run({"per_task": True, "threads": 4}) == 0 and Count.runs == 2  # a result setting reruns it
    assert json.loads((tmp_path / "run" / "counts" / "counts.json").read_text())["tasks"] == ["t0", "t1"]
    capsys.readouterr()
    assert run({"threads": 0}) == 2  # its own checks, before anything runs, naming section, key, value and fix
    assert "count: threads=0 must be >= 1" in capsys.readouterr().err


def test_the_stage_contract_is_checked_when_a_subclass_is_defined():
    from presel.pipeline.base import Stage

    with pytest.raises(TypeError, match="add it to presel.layout.STAGE_DIRS"):
        type("Nowhere", (Stage,), {"name": "nowhere"})
    with pytest.raises(TypeError, match="derived from the config dataclass"):
        type("Declared", (Stage,), {"name": "select", "neutral": frozenset({"seed"})})
    with pytest.raises(TypeError, match="does not take"):
        type("BadPath", (Stage,), {"name": "select", "paths": ("nope",)})
    with pytest.raises(TypeError, match="tuple of stage names"):
        type("BadNeeds", (Stage,), {"name": "select", "needs": "embed"})
    with pytest.raises(TypeError, match="which are no stages"):
        type("UnknownNeeds", (Stage,), {"name": "select", "needs": ("embedd",)})


def test_declarations_cannot_change_on_a_stage_at_run_time():
    from types import SimpleNamespace

    from presel.pipeline.registry import REGISTRY

    for cls in REGISTRY:
        st = cls(SimpleNamespace(cfg=None), {})
        for attr in ("config", "needs", "neutral", "dir"):
            with pytest.raises(AttributeError, match="class declaration"):
                setattr(st, attr, getattr(cls, attr))
