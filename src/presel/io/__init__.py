"""Readers and writers: pool manifests, features, atomic outputs."""

from presel.io.atomic import atomic_dir, atomic_file, dumps_json, write_json, write_jsonl, write_parquet
from presel.io.manifest import iter_raw_records, load_task_map, parse_task_rules, read_id_list, read_pool

__all__ = [
    "atomic_dir", "atomic_file", "dumps_json", "write_json", "write_jsonl", "write_parquet",
    "iter_raw_records", "load_task_map", "parse_task_rules", "read_id_list", "read_pool",
]
