"""Flags shared by several commands (pool reading, output directory)."""

from __future__ import annotations

import argparse

from presel.records import Pool


def add_pool_arguments(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = p.add_argument_group("pool manifest")
    g.add_argument("--pool", required=required,
                   help="pool manifest: LLaVA JSON/JSONL, Vision-FLAN JSON, ShareGPT/messages JSONL, CSV, Parquet, or an "
                        "image folder; or a dataset: Parquet/Arrow with image bytes, a save_to_disk folder, WebDataset "
                        "tar shards ('shards-{000000..000099}.tar'), a hub dataset as hf:ORG/NAME[:SPLIT] when reachable; local or s3://, gs://, "
                        "https:// through fsspec")
    g.add_argument("--image-root", default=None, help="folder that image paths are relative to (default: the manifest's folder)")
    g.add_argument("--image-column", dest="image_field", default="image",
                   help="record field / table column holding the image (path, bytes or {bytes, path}; default 'image')")
    g.add_argument("--task-field", "--task-column", dest="task_field", default=None, help="record field holding the task (default: 'task', then 'task_name')")
    g.add_argument("--task-map", default=None, help="file mapping id -> task (JSON object, or JSONL/CSV/Parquet with id,task)")
    g.add_argument("--task-rule", action="append", default=None, metavar="PREFIX=TASK",
                   help="task from the image path prefix, e.g. --task-rule gqa/=gqa (repeatable; first match wins), or a YAML file")
    g.add_argument("--default-task", default=None, help="task for records no other rule assigns")
    g.add_argument("--id-field", "--id-column", dest="id_field", default="id", help="record id field; '@index' keys records by their position")


def load_pool(args: argparse.Namespace, *, columnar: bool = False) -> Pool:
    """The pool named by the pool flags; ``columnar``: ids, images and tasks only, read column-wise
    (:mod:`presel.io.columnar`: records without conversations, for commands that never read them)."""
    from presel.io.columnar import read_pool_columns
    from presel.io.manifest import read_pool

    rules = args.task_rule
    if rules and len(rules) == 1 and rules[0].lower().endswith((".yaml", ".yml", ".json")):
        rules = rules[0]
    return (read_pool_columns if columnar else read_pool)(args.pool, image_root=args.image_root, task_field=args.task_field, task_map=args.task_map,
                     task_rules=rules, default_task=args.default_task, id_field=args.id_field,
                     image_field=getattr(args, "image_field", "image"))


def add_out_arguments(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--out", required=required, help="output directory (written to a temporary folder, renamed at the end)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
