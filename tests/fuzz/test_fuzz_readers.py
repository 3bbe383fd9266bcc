"""Seeded fuzzing of presel's readers: >= 1,000 random mutations of valid pool manifests, run configs, id lists,
weights files and batch result files. Each reader either accepts the input or raises PreselError (never another
exception), and nothing is written outside the output folder. Deterministic: a fixed seed per case."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import yaml

from presel.errors import PreselError

N_PER_KIND = 220  # x 5 kinds = 1,100 mutations

_SPECIAL = [b"\x00", b"\xff", b"\xc3", b"{", b"[", b"]", b"}", b'"', b",", b"\n", b"\r", b":", b"\\", b"-", b"*",
            b"&", b"!", b"%", b"\t", b"1e308", b"NaN", b"null", b"\xed\xa0\x80", b"[" * 5000, b"'"]
_VALUES = [None, True, 0, -1, 1e308, -1e308, float("nan"), "", "x" * 5000, "../../etc/passwd", "/abs/x.png",
           "a\u0000b", "\udcff", [], {}, ["a", "b"], {"k": {"k": [1]}}, 12345678901234567890, 0.5, "t"]


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randint(0, len(b))
        if op == 0 and b:  # flip a byte
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        elif op == 1:  # insert a special token
            b[pos:pos] = rng.choice(_SPECIAL)
        elif op == 2 and b:  # delete a range
            b[pos:pos + rng.randint(1, 20)] = b""
        elif op == 3 and b:  # duplicate a range
            end = min(len(b), pos + rng.randint(1, 40))
            b[pos:pos] = b[pos:end]
        elif op == 4:  # truncate
            del b[pos:]
        else:  # random bytes
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(b)


def mutate_value(obj, rng: random.Random):
    """Replace one random node of a JSON-like value by a hostile value."""
    if isinstance(obj, dict) and obj and rng.random() < 0.7:
        k = rng.choice(list(obj))
        if rng.random() < 0.15:
            obj = dict(obj)
            obj.pop(k)
            return obj
        return {**obj, k: mutate_value(obj[k], rng)}
    if isinstance(obj, list) and obj and rng.random() < 0.7:
        i = rng.randrange(len(obj))
        return obj[:i] + [mutate_value(obj[i], rng)] + obj[i + 1:]
    return rng.choice(_VALUES)


def _mutants(kind: str, valid: bytes, structured, dump, n: int):
    rng = random.Random(f"presel-fuzz-{kind}")
    for i in range(n):
        if structured is not None and i % 2:
            try:
                yield dump(mutate_value(structured, rng))
                continue
            except (ValueError, TypeError, UnicodeEncodeError, yaml.YAMLError, RecursionError):
                pass
        yield mutate_bytes(valid, rng)


def _snapshot(root: Path, skip: Path | None = None) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for f in filenames:
            p = Path(dirpath, f)
            out[str(p)] = p.stat().st_mtime_ns
    return out


def _check(root: Path, target: Path, mutants, read, out_dir: Path | None = None) -> int:
    before = _snapshot(root, out_dir)
    n = 0
    for data in mutants:
        target.write_bytes(data)
        before[str(target)] = target.stat().st_mtime_ns
        try:
            read(target)
        except PreselError as e:
            assert str(e) and len(str(e)) < 20_000, f"unbounded message for {data[:200]!r}"
        except Exception as e:  # pragma: no cover - the failure this test exists to find
            pytest.fail(f"{type(e).__name__}: {str(e)[:300]} for input {data[:300]!r}")
        after = _snapshot(root, out_dir)
        assert after == before, f"files written outside the output folder: {set(after) ^ set(before)}"
        n += 1
    return n


def _pool_records():
    return [{"id": f"r{i}", "image": f"img/{i}.png", "task": ["vqa", "ocr"][i % 2],
             "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
            for i in range(4)]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_fuzz_pool_manifests(tmp_path, suffix):
    from presel.io.manifest import read_pool

    recs = _pool_records()
    if suffix == ".jsonl":
        valid = "".join(json.dumps(r) + "\n" for r in recs).encode()
        structured, dump = recs, lambda v: ("".join(json.dumps(r) + "\n" for r in v) if isinstance(v, list)
                                            else json.dumps(v)).encode()
    elif suffix == ".json":
        valid = json.dumps(recs).encode()
        structured, dump = recs, lambda v: json.dumps(v).encode()
    else:
        valid = ("id,image,task\n" + "".join(f"{r['id']},{r['image']},{r['task']}\n" for r in recs)).encode()
        structured, dump = None, None
    n = _check(tmp_path, tmp_path / f"pool{suffix}", _mutants("pool" + suffix, valid, structured, dump, N_PER_KIND // 3 + 1),
               lambda p: read_pool(p))
    assert n > 70


def test_fuzz_run_configs(tmp_path):
    from presel.pipeline import Pipeline, RunConfig

    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _pool_records()))
    (tmp_path / "ref.txt").write_text("r0\nr1\n")
    import numpy as np

    np.save(tmp_path / "f.npy", np.ones((4, 3), np.float32))
    (tmp_path / "ids.txt").write_text("r0\nr1\nr2\nr3\n")
    cfg = {"out": "run", "pool": {"path": "pool.jsonl"},
           "reference": {"fraction": 0.5, "seed": 0},
           "select": {"budget": 0.5, "seed": 0, "task_weights": "uniform", "images_per_cluster": 2,
                      "features": "f.npy", "feature_ids": "ids.txt"}, "report": {}}
    valid = yaml.safe_dump(cfg).encode()

    def read(p):
        Pipeline(RunConfig.load(p), log=lambda s: None).status()  # everything `presel run --dry-run` checks

    n = _check(tmp_path, tmp_path / "config.yaml",
               _mutants("config", valid, cfg, lambda v: yaml.safe_dump(v, allow_unicode=True).encode(), N_PER_KIND),
               read, out_dir=tmp_path / "run")
    assert n == N_PER_KIND


def test_fuzz_id_lists(tmp_path):
    from presel.io.manifest import read_id_list

    valid_txt = b"r0\nr1\nimg/2.png\n"
    n = _check(tmp_path, tmp_path / "ids.txt", _mutants("ids.txt", valid_txt, None, None, N_PER_KIND // 2), read_id_list)
    rows = [{"id": "r0"}, {"id": "r1"}]
    n += _check(tmp_path, tmp_path / "ids.jsonl",
                _mutants("ids.jsonl", b'{"id": "r0"}\n{"id": "r1"}\n', rows,
                         lambda v: ("".join(json.dumps(r) + "\n" for r in v) if isinstance(v, list)
                                    else json.dumps(v)).encode(), N_PER_KIND // 2), read_id_list)
    assert n == 2 * (N_PER_KIND // 2)


def test_fuzz_weights_files(tmp_path):
    from presel.selection.weights_io import normalise_task_weights, read_weights_file

    w = {"ocr": {"n": 3, "score": 0.9, "weight": 0.4}, "vqa": {"n": 3, "score": 0.7, "weight": 0.6}}

    def read(p):
        normalise_task_weights(read_weights_file(p), ["ocr", "vqa"], source=str(p))

    n = _check(tmp_path, tmp_path / "w.json",
               _mutants("weights", json.dumps(w).encode(), w, lambda v: json.dumps(v).encode(), N_PER_KIND), read)
    assert n == N_PER_KIND


def test_fuzz_batch_result_files(tmp_path):
    from presel.generate.batch import _iter_result_files

    def line(cid, ok=True):
        body = ({"id": "c", "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "Q: a? A: b"}}],
                 "usage": {"prompt_tokens": 10, "completion_tokens": 2}} if ok else {"error": {"message": "x"}})
        return {"id": f"b-{cid}", "custom_id": cid, "error": None,
                "response": {"status_code": 200 if ok else 500, "request_id": f"r-{cid}", "body": body}}

    rows = [line("a"), line("b", ok=False),
            {"custom_id": "c", "result": {"type": "succeeded", "message": {"content": [{"type": "text", "text": "x"}],
                                                                               "usage": {"input_tokens": 1}}}},
            {"key": "d", "response": {"candidates": [{"content": {"parts": [{"text": "x"}]}}]}}]
    valid = "".join(json.dumps(r) + "\n" for r in rows).encode()

    def read(p):
        list(_iter_result_files([p]))

    n = _check(tmp_path, tmp_path / "results.jsonl",
               _mutants("results", valid, rows, lambda v: ("".join(json.dumps(r) + "\n" for r in v)
                                                          if isinstance(v, list) else json.dumps(v)).encode(),
                        N_PER_KIND), read)
    assert n == N_PER_KIND


def test_fuzz_feature_store_metadata(tmp_path):
    """Mutated shard markers, manifest.json and rejects.jsonl of a finished store: select's reader names the
    damage (PreselError) or reads it; never another exception."""
    import numpy as np

    from presel.features.store import FORMAT, VERSION, FeatureStore, load_feature_matrix, shard_name

    root = tmp_path / "feats"
    st = FeatureStore.open(root, {"store_dtype": "float16", "model": "m"})
    rng = np.random.default_rng(0)
    rows = []
    for i in range(2):
        keys = [f"img/{i}-{j}.png" for j in range(3)]
        st.write_shard(i, keys, [f"h{i}{j}" for j in range(3)], rng.normal(size=(3, 4)), [])
        rows += [(k, f"h{i}{j}", i, j) for j, k in enumerate(keys)]
    st.write_index(rows)
    st.close()
    man = {"format": FORMAT, "version": VERSION, "dim": 4, "dtype": "float16", "ids": "image_key",
           "index": "index.parquet", "identity": st.identity,
           "shards": [{"index": i, "name": shard_name(i), "rows": 3, "sha256": st.shards[i].sha256} for i in range(2)]}
    (root / "manifest.json").write_text(json.dumps(man))
    (root / "rejects.jsonl").write_text('{"id": "x", "image": "img/x.png", "reason": "missing: file not found"}\n')
    load_feature_matrix(root)  # the valid store reads
    marker = json.loads((root / "shards" / "shard-000000.json").read_text())
    n = 0
    for name, valid in (("shards/shard-000000.json", marker), ("manifest.json", man)):
        target = root / name
        original = target.read_bytes()
        n += _check(tmp_path, target, _mutants(name, original, valid, lambda v: json.dumps(v).encode(), 60),
                    load_feature_matrix)
        target.write_bytes(original)
    rej = root / "rejects.jsonl"
    n += _check(tmp_path, rej, _mutants("rejects", rej.read_bytes(), None, None, 40),
                lambda p: load_feature_matrix(root))
    assert n == 160
