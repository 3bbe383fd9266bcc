"""``presel generate``: instructions for the selected images (online, oracle)."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "generate instructions for the selected images through an OpenAI-compatible server, or take them from annotations"
DESCRIPTION = (
    "PreSel step 3. Online (--mode online): one chat-completions request per selected image (--base-url, --model), "
    "bounded concurrency, retries with backoff, resumable (rerun the same command after a crash or Ctrl-C). "
    "Batch files (--mode batch-file): OpenAI batch request files for a provider's batch API or `vllm run-batch`; "
    "then --collect RESULT_FILES --out DIR parses them. Batch API (--mode batch-api): upload, submit, poll, "
    "download, collect; resumable. Oracle (--from-annotations): instructions of the selected images from an "
    "annotated LLaVA JSON/JSONL. Writes train.json (reference annotations + generated ones, LLaVA format), "
    "results.jsonl, failures.jsonl, summary.json and config.json to --out. The API key is read from the "
    "environment variable named by --api-key-env.")


# flags whose command-line default differs from the field's: None means "not given" (collect keeps the prices and
# result shapes stored with the requests; online and batch use the dataclass defaults)
UNSET = ("price_in", "price_out", "provider")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from presel.config import add_config_arguments, add_deprecated_alias
    from presel.generate.batch import MODES, TRANSPORTS, BatchConfig
    from presel.generate.image_tokens import RULES
    from presel.generate.online import FORMATS, GenerateConfig
    from presel.generate.oracle import MATCHES, OracleConfig
    from presel.generate.providers import PROVIDERS
    from presel.protocol import add_protocol_argument

    g = p.add_argument_group("inputs")
    g.add_argument("--selection", default=None,
                   help="selection.parquet or .jsonl from presel select (id, image, task, source); not needed with --collect")
    add_config_arguments(g, OracleConfig, only=("reference_annotations",), helps={
        "reference_annotations": "annotated reference set (LLaVA JSON/JSONL); its records for the reference rows go "
                                 "into train.json"})
    g.add_argument("--image-root", default=None,
                   help="folder the selection's image paths are relative to (default: --pool's folder, else the selection's folder)")
    g.add_argument("--pool", default=None, help="the pool manifest; only used to default --image-root to its folder")
    g = p.add_argument_group("oracle mode")
    g.add_argument("--from-annotations", default=None, dest="annotations",
                   help="take the selected images' instructions from this annotated LLaVA JSON/JSONL (no server)")
    add_config_arguments(g, OracleConfig, only=("match",), choices={"match": MATCHES}, helps={
        "match": "how selection rows find their annotations: by id, by image path, or id then image"})
    add_protocol_argument(g)
    g = p.add_argument_group("mode, batch files and batch API (the keys of a run's generate section)")
    add_config_arguments(g, BatchConfig, choices={"mode": MODES, "provider": PROVIDERS, "image_transport": TRANSPORTS,
                                                  "image_token_rule": RULES}, helps=BATCH_HELPS)
    g = p.add_argument_group("server, sampling, accounting and output (the keys of a run's generate section)")
    add_config_arguments(g, GenerateConfig, choices={"format": FORMATS, "image_detail": ("auto", "low", "high"),
                                                     "max_tokens_field": ("max_tokens", "max_completion_tokens")},
                         helps=GENERATE_HELPS)
    add_deprecated_alias(g, "--stop-after", "stop_after_failures", type=int)
    p.set_defaults(**{k: None for k in UNSET})
    p.add_argument("--out", required=True, help="output directory (resumable: rerun the same command to continue)")
    p.add_argument("--overwrite", action="store_true", help="discard what --out holds and start over")


BATCH_HELPS = {
    "collect": "collect batch result files (vllm run-batch / provider output and error files) into --out",
    "provider": "request and result shapes and batch API of this provider (default openai; with --collect: any known "
                "result shape)",
    "max_enqueued_tokens": "batch-api: submit request files only while the estimated input tokens of unfinished "
                           "batches stay under this (the provider's enqueued-token limit); waits for batches to finish",
    "image_transport": "images in request files: base64 data URLs, file:// paths (a local server), or URLs",
    "image_url_prefix": "for --image-transport url: URL the image paths are relative to",
    "max_lines": "requests per request file",
    "max_bytes": "bytes per request file",
    "poll_interval": "first wait between batch polls (s), grows x1.5",
    "poll_max": "longest wait between batch polls (s)",
    "max_wait": "stop polling after this many seconds (rerun resumes)",
    "batch_discount": "batch price = online price x this (estimate)",
    "batch_price_in": "batch price per 1M input tokens (instead of the discount)",
    "batch_price_out": "batch price per 1M output tokens",
    "image_tokens": "tokens per image for the estimate (default: from the image size)",
    "image_token_rule": "how the estimate turns an image size into tokens (auto: from --model; openai = gpt-4o)",
    "output_fraction": "expected share of max_tokens an answer uses (estimate)",
}
GENERATE_HELPS = {
    "base_url": "OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1",
    "model": "model name the server serves",
    "templates": "prompt templates YAML (tried before the shipped defaults)",
    "api_key_env": "NAME of the environment variable holding the API key",
    "concurrency": "requests in flight",
    "max_retries": "retries per request on 429/5xx/timeouts/dropped connections",
    "backoff_base": "first backoff wait in seconds (doubles per retry, jittered)",
    "backoff_max": "longest backoff wait in seconds",
    "stop_after_failures": "stop the run after this many failed items in a row (0: never)",
    "price_in": "online price per 1M input tokens (default 0)",
    "price_out": "online price per 1M output tokens (default 0)",
    "format": "train.json is always LLaVA; sharegpt also writes train_sharegpt.json (messages/images), hf-datasets a "
              "datasets folder train_hf/ (save_to_disk, images embedded)",
    "max_tokens_field": "request field for the answer length (newer OpenAI models want max_completion_tokens)",
    "temperature": "override the templates' temperature; 'none' sends no temperature (reasoning models)",
    "image_detail": "OpenAI image detail sent with each image (auto: not sent) and used by the estimate",
    "retry_failed": "retry the items recorded in failures.jsonl",
    "extra_body": "more request fields as JSON, e.g. '{\"top_p\": 0.9}'",
}


def _print_summary(s: dict) -> None:
    tasks = s.get("tasks", {})
    print(f"{'task':24} {'items':>7} {'ok':>7} {'failed':>7} {'requests':>9} {'tok in':>10} {'tok out':>10} {'cost':>10}")
    for name, t in tasks.items():
        print(f"{name:24} {t.get('items', 0):>7} {t.get('ok', 0):>7} {t.get('failed', 0):>7} {t.get('requests', 0):>9} "
              f"{t.get('tokens_in', 0):>10} {t.get('tokens_out', 0):>10} {t.get('cost', 0.0):>10.4f}")
    tot = s.get("total", {})
    print(f"{'total':24} {tot.get('items', 0):>7} {tot.get('ok', 0):>7} {tot.get('failed', 0):>7} "
          f"{tot.get('requests', 0):>9} {tot.get('tokens_in', 0):>10} {tot.get('tokens_out', 0):>10} {tot.get('cost', 0.0):>10.4f}")
    ref = s.get("reference", {})
    if ref.get("note"):
        print(f"note: {ref['note']}")
    elif ref.get("missing"):
        print(f"note: {ref['missing']} reference row(s) have no annotation (e.g. {', '.join(ref['missing_ids'][:3])})")
    if s.get("failed"):
        print(f"{s['failed']} selected item(s) failed: see failures.jsonl (rerun with --retry-failed to retry them)")


def _expand(patterns: list[str]) -> list[str]:
    """Result files; a pattern the shell did not expand (quoted) is globbed here."""
    import glob
    import os

    out: list[str] = []
    for p in patterns:
        out.extend(sorted(glob.glob(p)) if any(c in p for c in "*?[") and not os.path.exists(p) else [p])
    return out


def _configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """GenerateConfig and BatchConfig from the flags, with the same checks as a run's generate section."""
    from presel.config import config_from_args
    from presel.generate.batch import BatchConfig
    from presel.generate.online import GenerateConfig

    given = argparse.Namespace(**vars(args))
    for k in UNSET:  # not given: the dataclass default
        if getattr(given, k) is None:
            delattr(given, k)
    given.mode = args.mode or "online"
    return config_from_args(GenerateConfig, given), config_from_args(BatchConfig, given)


def run(args: argparse.Namespace) -> int:
    from presel.errors import PreselError

    if args.collect:
        from presel.generate.batch import collect_to_dir

        summary = collect_to_dir(args.out, _expand(args.collect), reference_annotations=args.reference_annotations,
                                 allow_partial=args.allow_partial, price_in=args.price_in, price_out=args.price_out,
                                 provider=args.provider)
        c = summary.get("collect", {})
        print(f"collected {c.get('files', 0)} file(s): {c.get('ok', 0)} new result(s), {c.get('failed', 0)} new "
              f"failure(s), {c.get('repeated', 0)} repeated line(s), {c.get('unknown_ids', 0)} unknown id(s), "
              f"{c.get('bad_lines', 0)} unreadable line(s)")
        _print_summary(summary)
        if summary.get("pending"):
            print(f"{summary['pending']} selected item(s) have no result yet: collect more result files, or write "
                  "request files for them with --mode batch-file")
        print(f"wrote {args.out}" + (f" ({summary['train_records']} training records)" if summary.get("train_records") else ""))
        from presel.generate.usable import check_usable

        check_usable(summary, args.out, allow_partial=args.allow_partial)  # every line an error: exit 3
        return 0
    if not args.selection:
        raise PreselError("--selection is required (the selection.parquet of presel select), except with --collect")
    if args.annotations:
        from presel.generate.oracle import oracle_to_dir

        summary = oracle_to_dir(args.selection, args.annotations, args.out,
                                reference_annotations=args.reference_annotations, match=args.match,
                                format=args.format, overwrite=args.overwrite, protocol=args.protocol)
        _print_summary(summary)
        print(f"wrote {args.out} ({summary.get('train_records')} training records in {', '.join(summary.get('outputs', []))})")
        return 0
    from presel.generate.online import generate_to_dir

    cfg, batch = _configs(args)
    common = {"reference_annotations": args.reference_annotations, "image_root": args.image_root, "pool": args.pool,
              "overwrite": args.overwrite}
    if batch.mode == "online":
        summary = generate_to_dir(args.selection, args.out, cfg, progress=cfg.progress, **common)
    else:
        from presel.generate.batch import batch_files_to_dir
        from presel.generate.batch_api import batch_api_to_dir

        if batch.mode == "batch-file":
            r = batch_files_to_dir(args.selection, args.out, cfg, batch, **common)
            _print_estimate(r["estimate"])
            for f in r["files"]:
                print(f"  {f['name']}: {f['lines']} requests, {f['bytes'] / 2**20:.1f} MiB")
            if not r["files"]:
                print("nothing to request: every selected item has a result (or a recorded failure: --retry-failed)")
            print(f"wrote {len(r['files'])} request file(s) to {args.out}; run them (vllm run-batch -i FILE -o RESULT "
                  f"--model {args.model}, or the {batch.provider} batch API), then: presel generate --collect RESULT... "
                  f"--out {args.out}")
            return 0
        summary = batch_api_to_dir(args.selection, args.out, cfg, batch, allow_partial=batch.allow_partial, **common)
    _print_summary(summary)
    print(f"wrote {args.out} ({summary.get('train_records')} training records in {', '.join(summary.get('outputs', []))})")
    from presel.generate.usable import check_usable

    check_usable(summary, args.out, allow_partial=args.allow_partial)  # every request failed: exit 3
    return 0


def _print_estimate(e: dict) -> None:
    print(f"estimate for {e['items']} request(s): ~{e['tokens_in']} tokens in, ~{e['tokens_out']} tokens out "
          f"({e['image_token_rule']} image tokens); online cost {e['online_cost']:.4f}, batch cost {e['batch_cost']:.4f}, "
          f"saving {e['saving']:.4f}" + (f" ({e['saving_fraction']:.0%})" if e.get("saving_fraction") is not None else ""))
