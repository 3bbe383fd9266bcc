"""Feature store: sharded ``.npy`` arrays + per-shard completion markers + an image index.

Layout of a store directory::

    identity.json            what the vectors mean (model, backend, pooling, image size, dtypes); a rerun
                             with other settings is refused
    shards/shard-000000.npy  N x d vectors (float16 by default, float32 on request), one row per distinct
                             image content
    shards/shard-000000.json completion marker, written (fsynced) after the array: keys and content hashes
                             of the rows, plus the images of this shard that could not be used
    index.parquet            key, hash, shard, row for every embedded image key (content duplicates point
                             to the row of the first key with that content)
    manifest.json            shards, counts, dim, dtype: written when a run finishes
    rejects.jsonl            id, image, reason for the records of the last pool whose image was rejected
    summary.json, config.json

A killed run leaves finished shards (array + marker) behind; the rerun loads them and embeds the rest.
``load_feature_matrix`` memory-maps the shards; its ids are image keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from presel.errors import PreselError
from presel.io.atomic import atomic_file, write_json
from presel.io.digest import file_sha256

FORMAT = "presel-feature-store"
VERSION = 1
STORE_DTYPES = ("float16", "float32")


def shard_name(i: int) -> str:
    return f"shard-{i:06d}"


@dataclass
class ShardInfo:
    index: int
    keys: list[str]
    hashes: list[str]
    rejects: list[dict[str, str]]  # {"key", "hash", "reason"}
    dim: int
    dtype: str
    aliases: list[dict[str, str]] = field(default_factory=list)  # {"key", "hash"}: content stored by an earlier row
    sha256: str | None = None  # of the .npy file (stores written before checksums have none)


@dataclass
class FeatureStore:
    root: Path
    identity: dict[str, Any]
    shards: dict[int, ShardInfo] = field(default_factory=dict)

    # ---------------------------------------------------------------- open / create
    @classmethod
    def open(cls, root: str | os.PathLike, identity: dict[str, Any], *, overwrite: bool = False,
             repair: bool = False) -> FeatureStore:
        """Open (resume) or create a store at ``root`` for vectors described by ``identity``.

        ``overwrite`` empties a store presel wrote, after taking its lock (a store another embed is writing
        is never deleted); a folder that is not a feature store is never deleted. A damaged store (see
        :func:`check_store`) is an error naming the damaged files, unless ``repair``: then the damaged shards are
        removed (their images are embedded again) and the damaged index, manifest and rejects are rewritten."""
        from presel.config import same_identity
        from presel.io.owned import check_deletable, remove_owned

        root = Path(root)
        if root.exists() and not root.is_dir():
            raise PreselError(f"--out {root} exists and is not a directory; choose another path")
        ident_path = root / "identity.json"
        fix = "remove it yourself or choose another --out"
        if root.is_dir() and any(root.iterdir()):
            if not ident_path.is_file() and _proves_store(root / "manifest.json"):
                raise damaged_error(root, [Damage(ident_path, "missing (manifest.json says this is a feature store)")])
            if not ident_path.is_file():
                raise PreselError(f"--out {root} exists, is not empty and is not a presel feature store (no "
                                  f"identity.json); {'refusing to delete it with --overwrite, ' if overwrite else ''}"
                                  f"presel deletes only what it wrote: {fix}")
            if overwrite:
                check_deletable(root, only=("identity.json", "manifest.json"), fix=fix)
        identity = {"format": FORMAT, "version": VERSION, **identity}
        store = cls(root, identity)
        root.mkdir(parents=True, exist_ok=True)
        store._lock()
        try:
            if overwrite and ident_path.is_file():
                remove_owned(root, only=("identity.json", "manifest.json"), keep=(".lock",), fix=fix)
            if ident_path.is_file():
                old = _read_identity(ident_path)
                # keys only one side holds are settings another presel version did not record (presel.config)
                diff = sorted(k for k in set(old) & set(identity) if old.get(k) != identity.get(k))
                if diff or not same_identity(old, identity, required=("format", "model")):
                    diff = diff or sorted(set(old) ^ set(identity))
                    what = ", ".join(f"{k}={old.get(k)!r} (now {identity.get(k)!r})" for k in diff)
                    raise PreselError(f"{root}: this feature store was built with {what}; rerun with the same settings "
                                      "to resume or add images, or use another --out (or --overwrite)")
                if old != identity:  # written by an older presel: record what the vectors mean now
                    write_json(ident_path, identity)
            else:
                (root / "shards").mkdir(parents=True, exist_ok=True)
                write_json(ident_path, identity)
            store._repair_or_refuse(repair)
            store._load_shards()
        except BaseException:
            store.close()
            raise
        return store

    def _lock(self) -> None:
        """One writer per store: a second ``presel embed`` on the same --out fails instead of corrupting it."""
        import fcntl

        f = open(self.root / ".lock", "a+")  # noqa: SIM115 - held for the life of the store object
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise PreselError(f"{self.root}: another `presel embed` is writing to this feature store; wait for it "
                              "to finish or use another --out") from None
        self._lock_file = f

    def close(self) -> None:
        f = getattr(self, "_lock_file", None)
        if f is not None:
            f.close()
            self._lock_file = None

    def _repair_or_refuse(self, repair: bool) -> None:
        """Stop on a damaged store (naming every damaged file and the fix), or with ``repair`` remove what is
        damaged so that this run embeds it again."""
        damage = check_store(self.root, finished=False)
        if not damage:
            return
        if not repair:
            raise damaged_error(self.root, damage)
        for d in damage:
            for f in d.remove:
                f.unlink(missing_ok=True)
        print(f"presel embed --repair: {self.root}: removed {len(damage)} damaged file(s) "
              f"({', '.join(d.path.name for d in damage[:5])}{' ...' if len(damage) > 5 else ''}); their images are "
              "embedded again", file=sys.stderr)

    def _load_shards(self) -> None:
        d = self.root / "shards"
        d.mkdir(parents=True, exist_ok=True)
        for p in d.iterdir():  # leftovers of a killed atomic write
            if p.name.startswith(".") and ".tmp-" in p.name:
                p.unlink(missing_ok=True)
        for marker in sorted(d.glob("shard-*.json")):
            info = read_marker(marker)
            npy = marker.with_suffix(".npy")
            if info.keys:
                if not npy.is_file():
                    raise PreselError(f"{marker}: completion marker without its array {npy.name}; delete the marker "
                                      "and rerun to recompute that shard")
                arr = np.load(npy, mmap_mode="r")
                if arr.shape != (len(info.keys), info.dim):
                    raise PreselError(f"{npy}: shape {arr.shape} does not match its marker ({len(info.keys)} x "
                                      f"{info.dim}); delete both files and rerun to recompute that shard")
            self.shards[info.index] = info

    # ---------------------------------------------------------------- queries
    def next_shard_index(self) -> int:
        return max(self.shards) + 1 if self.shards else 0

    def embedded(self) -> dict[str, tuple[int, int]]:
        """content hash -> (shard, row) of its vector."""
        out: dict[str, tuple[int, int]] = {}
        for i in sorted(self.shards):
            for r, h in enumerate(self.shards[i].hashes):
                out.setdefault(h, (i, r))
        return out

    def rejected(self) -> dict[str, str]:
        """content hash -> reason, for contents that failed to decode in an earlier shard."""
        return {r["hash"]: r["reason"] for i in sorted(self.shards) for r in self.shards[i].rejects}

    def known_keys(self) -> dict[str, str]:
        """image key -> content hash for every key seen by a finished shard or a finished run."""
        out: dict[str, str] = {}
        idx = self.root / "index.parquet"
        if idx.is_file():
            import pyarrow.parquet as pq

            t = pq.read_table(idx, columns=["key", "hash"])
            out.update(zip(t.column("key").to_pylist(), t.column("hash").to_pylist()))
        for i in sorted(self.shards):
            out.update(zip(self.shards[i].keys, self.shards[i].hashes))
            out.update((r["key"], r["hash"]) for r in self.shards[i].rejects)
            out.update((r["key"], r["hash"]) for r in self.shards[i].aliases)
        return out

    # ---------------------------------------------------------------- writing
    def write_shard(self, index: int, keys: list[str], hashes: list[str], vectors: np.ndarray,
                    rejects: list[dict[str, str]], aliases: list[dict[str, str]] | None = None) -> ShardInfo:
        """Write one shard: the array first (fsynced, renamed), then its completion marker."""
        dtype = self.identity["store_dtype"]
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(keys):
            raise ValueError(f"shard {index}: {vectors.shape} vectors for {len(keys)} keys")
        if not np.isfinite(vectors).all():
            bad = keys[int(np.nonzero(~np.isfinite(vectors).all(axis=1))[0][0])]
            raise PreselError(f"{bad}: the model produced non-finite features; check the model and --dtype")
        dim = int(vectors.shape[1])
        base = self.root / "shards" / shard_name(index)
        digest = None
        if keys:
            import io

            buf = io.BytesIO()
            np.save(buf, vectors.astype(dtype), allow_pickle=False)
            data = buf.getbuffer()
            digest = hashlib.sha256(data).hexdigest()
            with atomic_file(base.with_suffix(".npy"), "wb") as f:
                f.write(data)
        info = ShardInfo(index, list(keys), list(hashes), list(rejects), dim, dtype, list(aliases or []), digest)
        marker = {"index": index, "rows": len(keys), "keys": info.keys, "hashes": info.hashes,
                  "rejects": info.rejects, "dim": dim, "dtype": dtype}
        if digest:
            marker["sha256"] = digest
        if info.aliases:
            marker["aliases"] = info.aliases
        write_json(base.with_suffix(".json"), marker)
        self.shards[index] = info
        return info

    def write_index(self, rows: list[tuple[str, str, int, int]]) -> None:
        import pyarrow as pa

        from presel.io.atomic import write_parquet

        rows = sorted(rows)
        write_parquet(self.root / "index.parquet", pa.table({
            "key": pa.array([r[0] for r in rows], pa.string()),
            "hash": pa.array([r[1] for r in rows], pa.string()),
            "shard": pa.array([r[2] for r in rows], pa.int32()),
            "row": pa.array([r[3] for r in rows], pa.int64()),
        }))

    def dim(self) -> int | None:
        dims = {s.dim for s in self.shards.values() if s.keys}
        if len(dims) > 1:
            raise PreselError(f"{self.root}: shards have different dimensions {sorted(dims)}; the store is corrupt")
        return dims.pop() if dims else None


def read_marker(path: Path) -> ShardInfo:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        info = ShardInfo(int(d["index"]), list(d["keys"]), list(d["hashes"]), list(d["rejects"]), int(d["dim"]),
                         str(d["dtype"]), list(d.get("aliases", [])), d.get("sha256"))
        if len(info.hashes) != len(info.keys) or not all(isinstance(k, str) for k in info.keys):
            raise ValueError("keys and hashes do not match")
        return info
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OSError) as e:
        raise PreselError(f"{path}: unreadable shard marker ({str(e)[:160]}); rerun `presel embed` with the same "
                          "flags and --repair to embed that shard again") from None


# ---------------------------------------------------------------- damage
REPAIR_FIX = ("rerun `presel embed` with the same flags and --repair (re-embeds only what is damaged), or with "
              "--overwrite to start over")


@dataclass
class Damage:
    """One damaged file of a store: what is wrong, and the files --repair removes for it."""

    path: Path
    problem: str
    remove: tuple[Path, ...] = ()


def damaged_error(root: Path, damage: list[Damage]) -> PreselError:
    head = "; ".join(f"{d.path}: {d.problem}" for d in damage[:3])
    more = f" (and {len(damage) - 3} more damaged file(s))" if len(damage) > 3 else ""
    fix = REPAIR_FIX if not any(d.path.name == "identity.json" for d in damage) else \
        "identity.json says which model made the vectors and cannot be rebuilt: rerun `presel embed` with --overwrite"
    return PreselError(f"feature store {root} is damaged: {head}{more}; {fix}")


def _read_identity(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} identity")
        return d
    except (ValueError, OSError, RecursionError) as e:
        raise damaged_error(path.parent, [Damage(path, f"unreadable ({str(e)[:120]})")]) from None


def _proves_store(manifest: Path) -> bool:
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def _check_array(npy: Path, info: ShardInfo) -> str | None:
    """What is wrong with a shard's array given its marker (None: nothing)."""
    if not npy.is_file():
        return "missing (its completion marker is there)"
    try:
        arr = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        return f"truncated or not a .npy array ({str(e)[:100]})"
    if arr.shape != (len(info.keys), info.dim) or str(arr.dtype) != info.dtype:
        return f"shape {arr.shape} {arr.dtype} does not match its marker ({len(info.keys)} x {info.dim} {info.dtype})"
    if info.sha256 and file_sha256(npy) != info.sha256:  # every read checks (marker bytes stay deterministic)
        return "checksum differs from the one recorded when it was written (replaced or corrupted)"
    return None


def check_store(root: str | os.PathLike, *, finished: bool = True) -> list[Damage]:
    """Every damaged file of the store at ``root``: identity.json, shard markers and arrays (shape, dtype,
    checksum), and, when ``finished`` (a store select reads) or present, manifest.json, index.parquet and
    rejects.jsonl. Cheap except for the checksums, which read each shard once."""
    root = Path(root)
    out: list[Damage] = []
    ident = root / "identity.json"
    if finished and not ident.is_file() and _proves_store(root / "manifest.json"):
        out.append(Damage(ident, "missing (manifest.json says this is a feature store)"))
        return out
    if ident.is_file():
        try:
            _read_identity(ident)
        except PreselError as e:
            out.append(Damage(ident, str(e).split(": ", 2)[-1].split(";")[0]))
            return out
    shards = root / "shards"
    markers = sorted(shards.glob("shard-*.json")) if shards.is_dir() else []
    infos: dict[int, ShardInfo] = {}
    for m in markers:
        npy = m.with_suffix(".npy")
        try:
            info = read_marker(m)
        except PreselError as e:
            out.append(Damage(m, str(e).split(": ", 1)[-1].split(";")[0], (m, npy)))
            continue
        if m.stem != shard_name(info.index):
            out.append(Damage(m, f"marker of shard {info.index} under the name {m.name}", (m, npy)))
            continue
        why = _check_array(npy, info) if info.keys else None
        if why:
            out.append(Damage(npy, why, (m, npy)))
            continue
        infos[info.index] = info
    man_path = root / "manifest.json"
    man_shards: list[Any] = []
    if man_path.is_file() or (finished and not out):
        try:
            man = json.loads(man_path.read_text(encoding="utf-8"))
            if not isinstance(man, dict) or man.get("format") != FORMAT or not isinstance(man.get("shards"), list):
                raise ValueError(f"not a {FORMAT} manifest")
            man_shards = [(int(x["index"]), x.get("sha256")) for x in man["shards"]]
        except FileNotFoundError:
            pass  # an unfinished store: load_feature_matrix says so
        except (ValueError, KeyError, TypeError, OSError, RecursionError) as e:
            out.append(Damage(man_path, f"unreadable ({str(e)[:120]})", (man_path,)))
    damaged_shards = {int(d.path.stem.split("-")[-1]) for d in out if d.path.parent == shards
                      and d.path.stem.split("-")[-1].isdigit()}
    for i, digest in man_shards:
        if i in damaged_shards:
            continue
        if i not in infos:
            npy = shards / f"{shard_name(i)}.npy"
            out.append(Damage(npy, "listed in manifest.json but deleted (no array or marker)", (npy, npy.with_suffix(".json"))))
        elif digest and infos[i].sha256 and digest != infos[i].sha256:
            npy = shards / f"{shard_name(i)}.npy"
            out.append(Damage(npy, "checksum differs from the one in manifest.json (replaced)", (npy, npy.with_suffix(".json"))))
    idx = root / "index.parquet"
    if idx.is_file() or (finished and man_path.is_file()):
        try:
            import pyarrow.parquet as pq

            t = pq.read_table(idx)
            if not {"key", "hash", "shard", "row"} <= set(t.column_names):
                raise ValueError("columns key, hash, shard, row missing")
        except Exception as e:  # noqa: BLE001 - arrow raises many types for a damaged file
            out.append(Damage(idx, f"unreadable ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})",
                              (idx,)))
    rej = root / "rejects.jsonl"
    if rej.is_file():
        try:
            from presel.io.manifest import iter_jsonl

            for n, r in iter_jsonl(rej):
                if not isinstance(r.get("image"), str) or not isinstance(r.get("reason"), str):
                    raise PreselError(f"line {n}: needs image and reason strings")
        except PreselError as e:
            out.append(Damage(rej, f"unreadable ({str(e).replace(str(rej), '').strip(': ')[:160]})", (rej,)))
    return out


def load_feature_matrix(path: str | os.PathLike):
    """Open a feature store as a ``FeatureMatrix`` whose ids are image keys (memory-mapped shards)."""
    import pyarrow.parquet as pq

    from presel.io.feature_matrix import FeatureMatrix

    root = Path(path)
    man_path = root / "manifest.json"
    if not man_path.is_file():
        if (root / "identity.json").is_file():
            raise PreselError(f"{root}: feature store is incomplete (no manifest.json: the embed run did not finish); "
                              "rerun the same `presel embed` command to resume it")
        raise PreselError(f"{root}: not a presel feature store (no manifest.json); pass a store written by "
                          "`presel embed`, a .npy (+ --feature-ids) or a .parquet file")
    damage = check_store(root)
    if damage:
        raise damaged_error(root, damage)
    man = json.loads(man_path.read_text(encoding="utf-8"))
    idx = pq.read_table(root / "index.parquet")
    keys = idx.column("key").to_pylist()
    shard_col = np.asarray(idx.column("shard").to_numpy(), dtype=np.int64)
    row_col = np.asarray(idx.column("row").to_numpy(), dtype=np.int64)
    parts: list[tuple[list[str], np.ndarray]] = []
    arrays: dict[int, np.ndarray] = {}
    for s in man["shards"]:
        i = int(s["index"])
        npy = root / "shards" / f"{shard_name(i)}.npy"
        info = read_marker(npy.with_suffix(".json"))
        if not info.keys:
            continue
        arr = np.load(npy, mmap_mode="r")
        arrays[i] = arr
        parts.append((info.keys, arr))
    # keys whose vector is another key's row (same content) get their own row, gathered in memory
    shard_keys = {k for ks, _ in parts for k in ks}
    alias = [(k, int(s), int(r)) for k, s, r in zip(keys, shard_col, row_col) if k not in shard_keys]
    if alias:
        dim = next(iter(arrays.values())).shape[1]
        arr = np.empty((len(alias), dim), dtype=next(iter(arrays.values())).dtype)
        for j, (_, s, r) in enumerate(alias):
            if s not in arrays:
                raise PreselError(f"{root}: index row for '{alias[j][0]}' points to missing shard {s}; rerun embed")
            arr[j] = arrays[s][r]
        parts.append(([a[0] for a in alias], arr))
    if not parts:
        raise PreselError(f"{root}: the feature store holds no vectors (every image was rejected; see rejects.jsonl)")
    fm = FeatureMatrix(parts, source=str(root))
    fm.content_hashes = dict(zip(keys, idx.column("hash").to_pylist()))  # exact duplicates: one image in select
    return fm


def rejected_images(path: str | os.PathLike) -> dict[str, str]:
    """image key -> reason for the images the last ``presel embed`` into this store could not use
    (from ``rejects.jsonl``); selection can leave these records out instead of failing on missing features."""
    from presel.records import image_key

    p = Path(path) / "rejects.jsonl"
    if not p.is_file():
        return {}
    from presel.io.manifest import iter_jsonl

    out: dict[str, str] = {}
    for n, r in iter_jsonl(p, fix=REPAIR_FIX):
        if not isinstance(r.get("image"), str) or not isinstance(r.get("reason"), str):
            raise PreselError(f"{p} line {n}: a reject needs 'image' and 'reason' strings; {REPAIR_FIX}")
        out[image_key(r["image"])] = r["reason"]
    return out
