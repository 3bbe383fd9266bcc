"""Pools kept as datasets: Parquet with image bytes, save_to_disk folders, WebDataset tar shards, an fsspec
bucket; each through embed -> select -> generate --from-annotations, plus the bad-input paths."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from presel.cli import main
from presel.io import sources

N = 8
TASKS = ["a"] * 4 + ["b"] * 4


def png(i: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(i)
    b = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(b, format="PNG")
    return b.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))


def write_shards(d: Path, images: list[bytes], per_shard: int = 4) -> str:
    d.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(images), per_shard):
        write_tar(d / f"shards-{s // per_shard:06d}.tar",
                  [(f"{i:09d}", {"png": images[i], "json": json.dumps({"task": TASKS[i]}).encode(),
                                 "txt": b"a caption"}) for i in range(s, min(len(images), s + per_shard))])
    last = (len(images) - 1) // per_shard
    return str(d / f"shards-{{000000..{last:06d}}}.tar")


def annotations(path: Path, ids: list[str]) -> Path:
    with open(path, "w") as f:
        for i, rid in enumerate(ids):
            f.write(json.dumps({"id": rid, "image": "x", "conversations": [
                {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": f"answer {i}"}]}) + "\n")
    return path


def run_pipeline(tmp: Path, model: Path, pool: str, ids: list[str], *extra: str) -> tuple[Path, Path, Path]:
    feats, sel, gen = tmp / "feats", tmp / "sel", tmp / "gen"
    assert main(["embed", "--pool", pool, *extra, "--model", str(model), "--out", str(feats), "--workers", "0",
                 "--batch-size", "4", "--no-progress"]) == 0
    assert main(["select", "--pool", pool, *extra, "--features", str(feats), "--budget", "0.5", "--task-weights",
                 "uniform", "--images-per-cluster", "2", "--out", str(sel)]) == 0
    ann = annotations(tmp / "ann.jsonl", ids)
    assert main(["generate", "--selection", str(sel / "selection.parquet"), "--from-annotations", str(ann),
                 "--match", "id", "--pool", pool, "--out", str(gen)]) == 0
    return feats, sel, gen


def check_outputs(feats: Path, sel: Path, gen: Path, prefix: str) -> None:
    summary = json.loads((feats / "summary.json").read_text())
    assert summary["embedded_images"] == N and summary["rejected_images"] == 0
    idx = pq.read_table(feats / "index.parquet").to_pylist()
    assert len(idx) == N and all(r["key"].startswith(prefix) and len(r["hash"]) == 32 for r in idx)
    rows = pq.read_table(sel / "selection.parquet").to_pylist()
    assert len(rows) == N // 2 and {r["task"] for r in rows} == {"a", "b"}
    train = json.loads((gen / "train.json").read_text())
    assert sorted(r["id"] for r in train) == sorted(r["id"] for r in rows)
    assert all(r["image"].startswith(prefix) for r in train)


@pytest.fixture(autouse=True)
def _fresh_caches():
    sources.clear_caches()
    yield
    sources.clear_caches()


def test_parquet_with_bytes_structs_runs_the_pipeline(tmp_path, tiny_dinov2):
    images = [png(i) for i in range(N)]
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(N)], "task": TASKS,
                             "image": [{"bytes": b, "path": f"orig/{i}.png"} for i, b in enumerate(images)]}),
                   tmp_path / "pool.parquet")
    feats, sel, gen = run_pipeline(tmp_path, tiny_dinov2, str(tmp_path / "pool.parquet"), [f"p{i}" for i in range(N)])
    check_outputs(feats, sel, gen, "parquet:pool.parquet#image/")
    # the stored hash is the hash of the image bytes, whatever the container
    idx = {r["key"]: r["hash"] for r in pq.read_table(feats / "index.parquet").to_pylist()}
    assert idx["parquet:pool.parquet#image/3"] == sources.hash_bytes(images[3])
    # export for a trainer: the images come out of the table as files (symlinks cannot point into a table)
    exp = ["prepare", "export", "--train", str(gen / "train.json"), "--image-root", str(tmp_path), "--to", "llava"]
    assert main([*exp, "--out", str(tmp_path / "exp0")]) == 2
    assert main([*exp, "--image-mode", "copy", "--out", str(tmp_path / "exp")]) == 0
    rows = json.loads((tmp_path / "exp" / "train.json").read_text())
    for r in rows:
        row = int(r["image"].rsplit("/", 1)[1].split(".")[0])
        assert r["image"] == f"pool/image/{row}.png"
        assert (tmp_path / "exp" / "images" / r["image"]).read_bytes() == images[row]


def test_parquet_folder_with_raw_bytes_and_named_columns(tmp_path, tiny_dinov2):
    d = tmp_path / "ds" / "data"
    d.mkdir(parents=True)
    images = [png(i) for i in range(N)]
    for part in range(2):
        s = slice(part * 4, part * 4 + 4)
        pq.write_table(pa.table({"uid": [f"u{i}" for i in range(N)][s], "kind": TASKS[s], "img": images[s]}),
                       d / f"train-{part:05d}.parquet")
    pool = str(tmp_path / "ds")
    feats, sel, gen = run_pipeline(tmp_path, tiny_dinov2, pool, [f"u{i}" for i in range(N)],
                                   "--image-column", "img", "--task-column", "kind", "--id-column", "uid")
    check_outputs(feats, sel, gen, "parquet:data/train-0000")


def test_save_to_disk_dataset_runs_the_pipeline(tmp_path, tiny_dinov2):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    imgs = [Image.open(io.BytesIO(png(i))) for i in range(N)]
    ds = datasets.Dataset.from_dict({"image": imgs, "task": TASKS},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "task": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "hfds"))
    # no id column: records are keyed by their row
    feats, sel, gen = run_pipeline(tmp_path, tiny_dinov2, str(tmp_path / "hfds"), [str(i) for i in range(N)])
    check_outputs(feats, sel, gen, "arrow:data-00000-of-00001.arrow#image/")
    # a DatasetDict folder names its splits
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    from presel.errors import PreselError
    from presel.io.manifest import read_pool

    with pytest.raises(PreselError, match="DatasetDict with splits train"):
        read_pool(tmp_path / "dd")


def test_webdataset_shards_run_the_pipeline_streamed(tmp_path, tiny_dinov2):
    pattern = write_shards(tmp_path / "wds", [png(i) for i in range(N)])
    assert "{000000..000001}" in pattern
    feats, sel, gen = run_pipeline(tmp_path, tiny_dinov2, pattern, [f"{i:09d}" for i in range(N)])
    check_outputs(feats, sel, gen, "tar:shards-00000")
    assert not any(p.suffix == ".png" for p in (tmp_path / "wds").rglob("*"))  # nothing unpacked


def test_fsspec_memory_bucket(tmp_path, tiny_dinov2):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    images = [png(i) for i in range(N)]
    buf = io.BytesIO()
    write_tar_path = tmp_path / "s.tar"
    write_tar(write_tar_path, [(f"{i:09d}", {"png": images[i], "json": json.dumps({"task": TASKS[i]}).encode()})
                               for i in range(N)])
    fs.pipe("/bucket-i15/wds/shards-000000.tar", write_tar_path.read_bytes())
    pq.write_table(pa.table({"id": [f"m{i}" for i in range(N)], "task": TASKS, "image": images}), buf)
    fs.pipe("/bucket-i15/tab/pool.parquet", buf.getvalue())
    for i, b in enumerate(images):
        fs.pipe(f"/bucket-i15/files/{i}.png", b)
    try:
        feats, sel, gen = run_pipeline(tmp_path / "t", tiny_dinov2, "memory://bucket-i15/wds/shards-{000000..000000}.tar",
                                       [f"{i:09d}" for i in range(N)])
        check_outputs(feats, sel, gen, "tar:shards-000000.tar#")
        feats, sel, gen = run_pipeline(tmp_path / "p", tiny_dinov2, "memory://bucket-i15/tab/pool.parquet",
                                       [f"m{i}" for i in range(N)])
        check_outputs(feats, sel, gen, "parquet:pool.parquet#image/")
        # plain image paths in a local manifest, the image root in the bucket
        man = tmp_path / "files.jsonl"
        man.write_text("".join(json.dumps({"id": f"f{i}", "image": f"{i}.png", "task": TASKS[i]}) + "\n"
                               for i in range(N)))
        feats = tmp_path / "ff"
        assert main(["embed", "--pool", str(man), "--image-root", "memory://bucket-i15/files", "--model",
                     str(tiny_dinov2), "--out", str(feats), "--workers", "0", "--no-progress"]) == 0
        assert json.loads((feats / "summary.json").read_text())["embedded_images"] == N
        # a bucket path that does not exist: one clear error, exit 2
        assert main(["embed", "--pool", "memory://bucket-i15/nothing/pool.parquet", "--model", str(tiny_dinov2),
                     "--out", str(tmp_path / "x"), "--workers", "0", "--no-progress"]) == 2
    finally:
        fs.rm("/bucket-i15", recursive=True)


def test_bad_inputs(tmp_path, tiny_dinov2, capsys):
    from presel.errors import PreselError
    from presel.io.manifest import read_pool

    # missing image column: named, with the columns there are and the fix
    pq.write_table(pa.table({"id": ["a"], "task": ["t"], "pixels": [1]}), tmp_path / "nocol.parquet")
    assert main(["embed", "--pool", str(tmp_path / "nocol.parquet"), "--model", str(tiny_dinov2), "--out",
                 str(tmp_path / "f0"), "--workers", "0", "--no-progress"]) == 2
    assert "nocol.parquet: no image column 'image' (columns: id, task, pixels)" in capsys.readouterr().err
    pq.write_table(pa.table({"id": ["a"], "task": ["t"], "img": [png(0)]}), tmp_path / "named.parquet")
    with pytest.raises(PreselError, match="no image column 'picture'.*--image-column"):
        read_pool(tmp_path / "named.parquet", image_field="picture")
    # an unreadable shard: one error naming it
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "shards-000000.tar").write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(PreselError, match="shards-000000.tar: unreadable tar shard"):
        read_pool(tmp_path / "bad" / "shards-000000.tar", default_task="t")
    # a shard listed by a pattern but absent
    with pytest.raises(PreselError, match="not found"):
        read_pool(str(tmp_path / "bad" / "shards-{000000..000003}.tar"), default_task="t")
    # a tar member that is not an image: a rejects entry (id, image, reason); the rest is embedded; rerun resumes
    d = tmp_path / "wds"
    d.mkdir()
    write_tar(d / "shards-000000.tar", [("k0", {"png": png(0)}), ("k1", {"jpg": b"not an image at all"}),
                                        ("k2", {"png": png(2)})])
    args = ["embed", "--pool", str(d / "shards-000000.tar"), "--default-task", "t", "--model", str(tiny_dinov2),
            "--out", str(tmp_path / "f1"), "--workers", "0", "--no-progress"]
    assert main(args) == 0
    rej = [json.loads(x) for x in (tmp_path / "f1" / "rejects.jsonl").read_text().splitlines()]
    assert rej == [{"id": "k1", "image": "tar:shards-000000.tar#k1.jpg", "reason": rej[0]["reason"]}]
    assert rej[0]["reason"].startswith("not an image")
    assert main(args) == 0
    assert "embedded 0 new images" in capsys.readouterr().out
    # a path leaving the image root is refused
    man = tmp_path / "m.jsonl"
    man.write_text(json.dumps({"id": "x", "image": "../outside.png", "task": "t"}) + "\n")
    pool = read_pool(man)
    with pytest.raises(PreselError, match="outside the image root"):
        pool.locator(pool.records[0])


def test_references_and_root_policy(tmp_path):
    assert sources.split_ref("tar:a/shards-000001.tar#000123.jpg") == ("tar", "a/shards-000001.tar", "000123.jpg")
    assert sources.split_ref("parquet:d/x.parquet#image/12") == ("parquet", "d/x.parquet", "image/12")
    assert sources.split_ref("coco/1.jpg") == (None, "coco/1.jpg", None)
    assert sources.split_ref("s3://b/1.jpg") == (None, "s3://b/1.jpg", None)
    assert sources.locate("tar:s.tar#k.png", tmp_path) == f"tar:{tmp_path}/s.tar#k.png"
    assert sources.locate("x/1.jpg", "s3://bucket/pre") == "s3://bucket/pre/x/1.jpg"
    from presel.errors import PreselError

    for bad in ("../x.jpg", "/etc/passwd", "tar:../s.tar#k"):
        with pytest.raises(PreselError, match="outside the image root"):
            sources.locate(bad, tmp_path)
    with pytest.raises(PreselError, match="outside the image root"):
        sources.locate("../other/x.jpg", "s3://bucket/pre")
    from presel.io.pools import expand_braces

    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]


def test_dataset_pools_are_hashed_in_the_workers(tmp_path, tiny_dinov2, monkeypatch):
    """No image is read before the plan (the driver's hashing pass is skipped); byte-identical members are
    still stored once, and a rerun finds everything done."""
    from presel.features import extract
    from presel.features.extract import EmbedConfig, embed_pool
    from presel.io.manifest import read_pool

    d = tmp_path / "wds"
    d.mkdir()
    a, b = png(1), png(2)
    write_tar(d / "s-000000.tar", [("k0", {"png": a}), ("k1", {"png": b}), ("k2", {"png": a})])
    write_tar(d / "s-000001.tar", [("k3", {"png": b}), ("k4", {"png": png(3)})])

    def no_driver_hashing(*args, **kwargs):
        raise AssertionError("the driver hashed images")

    monkeypatch.setattr(extract, "hash_keys", no_driver_hashing)
    pool = read_pool(str(d / "s-{000000..000001}.tar"), default_task="t")
    cfg = EmbedConfig(model=str(tiny_dinov2), workers=0, batch_size=2, shard_size=2, progress=False)
    st = embed_pool(pool, tmp_path / "f", cfg)
    assert st["distinct_images"] == 5 and st["distinct_contents"] == 3 and st["content_duplicates"] == 2
    assert st["store_vectors"] == 3 and st["store_keys"] == 5 and st["embedded_now"] == 3
    idx = {r["key"]: (r["shard"], r["row"]) for r in pq.read_table(tmp_path / "f" / "index.parquet").to_pylist()}
    assert idx["tar:s-000000.tar#k2.png"] == idx["tar:s-000000.tar#k0.png"]
    assert idx["tar:s-000001.tar#k3.png"] == idx["tar:s-000000.tar#k1.png"]
    st2 = embed_pool(pool, tmp_path / "f", cfg)
    assert st2["embedded_now"] == 0 and st2["shards_now"] == 0 and st2["store_keys"] == 5


def test_forked_workers_do_not_share_open_shards(tmp_path):
    """A tar shard opened by the parent (reading the pool) is reopened in each worker process: a shared file
    offset would hand one worker another worker's bytes."""
    import multiprocessing as mp

    images = [png(i) for i in range(6)]
    write_tar(tmp_path / "s.tar", [(f"k{i}", {"png": b}) for i, b in enumerate(images)])
    loc = [f"tar:{tmp_path}/s.tar#k{i}.png" for i in range(6)]
    parent = sources.tar_shard(f"{tmp_path}/s.tar")
    assert sources.read_bytes(loc[0]) == images[0]
    with mp.get_context("fork").Pool(2) as p:
        got = p.map(sources.read_bytes, loc * 20, chunksize=1)
        reopened = p.map(_reopened, [(f"{tmp_path}/s.tar", id(parent))] * 4, chunksize=1)
    assert got == images * 20
    assert reopened == [True] * 4
    assert sources.tar_shard(f"{tmp_path}/s.tar") is parent


def _reopened(arg) -> bool:
    path, parent_id = arg
    return id(sources.tar_shard(path)) != parent_id


def test_ray_executor_on_tar_shards_equals_local(tmp_path, tiny_dinov2):
    """Worker-side hashing through Ray Data gives the same store as the local executor (aliases included)."""
    ray = pytest.importorskip("ray")
    from presel.features.extract import EmbedConfig, embed_pool
    from presel.io.manifest import read_pool

    d = tmp_path / "wds"
    d.mkdir()
    a = png(1)
    write_tar(d / "s-000000.tar", [("k0", {"png": a}), ("k1", {"png": png(2)}), ("k2", {"png": a}),
                                   ("k3", {"jpg": b"not an image"})])
    pool = read_pool(str(d / "s-000000.tar"), default_task="t")
    kw = dict(model=str(tiny_dinov2), batch_size=2, workers=2, shard_size=2, progress=False)
    embed_pool(pool, tmp_path / "local", EmbedConfig(**kw))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        st = embed_pool(pool, tmp_path / "ray", EmbedConfig(executor="ray", **kw))
    finally:
        ray.shutdown()
    assert st["store_vectors"] == 2 and st["store_keys"] == 3 and st["rejected_images"] == 1
    files = lambda r: {p.relative_to(r).as_posix(): p.read_bytes() for p in sorted(r.rglob("*"))  # noqa: E731
                       if p.is_file() and p.name not in ("config.json", ".lock")}
    assert files(tmp_path / "local") == files(tmp_path / "ray")
