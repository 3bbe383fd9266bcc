"""``presel generate``: instructions for the selected images (online, oracle)."""

from __future__ import annotations

import argparse

HELP = "generate instructions for the selected images through an OpenAI-compatible server, or take them from annotations"
DESCRIPTION = (
    "PreSel step 3. Online: one chat-completions request per selected image (--base-url, --model), bounded "
    "concurrency, retries with backoff, resumable (rerun the same command after a crash or Ctrl-C). Oracle "
    "(--from-annotations): instructions of the selected images from an annotated LLaVA JSON/JSONL. Writes "
    "train.json (reference annotations + generated ones, LLaVA format), results.jsonl, failures.jsonl, "
    "summary.json and config.json to --out. The API key is read from the variable named by --api-key-env.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inputs")
    g.add_argument("--selection", required=True, help="selection.parquet or .jsonl from presel select (id, image, task, source)")
    g.add_argument("--reference-annotations", default=None,
                   help="annotated reference set (LLaVA JSON/JSONL); its records for the reference rows go into train.json")
    g.add_argument("--image-root", default=None,
                   help="folder the selection's image paths are relative to (default: --pool's folder, else the selection's folder)")
    g.add_argument("--pool", default=None, help="the pool manifest; only used to default --image-root to its folder")
    g.add_argument("--templates", default=None, help="prompt templates YAML (tried before the shipped defaults)")
    g = p.add_argument_group("oracle mode")
    g.add_argument("--from-annotations", default=None,
                   help="take the selected images' instructions from this annotated LLaVA JSON/JSONL (no server)")
    g.add_argument("--match", default="auto", choices=["auto", "id", "image"],
                   help="how selection rows find their annotations: by id, by image path, or id then image")
    g = p.add_argument_group("server")
    g.add_argument("--base-url", default=None, help="OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--model", default=None, help="model name the server serves")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="NAME of the environment variable holding the API key")
    g.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    g.add_argument("--max-retries", type=int, default=5, help="retries per request on 429/5xx/timeouts/dropped connections")
    g.add_argument("--backoff-base", type=float, default=1.0, help="first backoff wait in seconds (doubles per retry, jittered)")
    g.add_argument("--backoff-max", type=float, default=60.0, help="longest backoff wait in seconds")
    g.add_argument("--parse-retries", type=int, default=2, help="extra requests when an answer is malformed")
    g.add_argument("--stop-after", type=int, default=20, help="stop the run after this many failed items in a row (0: never)")
    g.add_argument("--max-tokens", type=int, default=None, help="override the templates' max_tokens")
    g.add_argument("--temperature", type=float, default=None, help="override the templates' temperature")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--retry-failed", action="store_true", help="retry the items recorded in failures.jsonl")
    g = p.add_argument_group("accounting and output")
    g.add_argument("--price-in", type=float, default=0.0, help="price per 1M input tokens")
    g.add_argument("--price-out", type=float, default=0.0, help="price per 1M output tokens")
    g.add_argument("--format", default="llava", choices=["llava", "sharegpt"],
                   help="train.json is always LLaVA; sharegpt also writes train_sharegpt.json (messages/images)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output directory (resumable: rerun the same command to continue)")
    p.add_argument("--overwrite", action="store_true", help="discard what --out holds and start over")


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


def run(args: argparse.Namespace) -> int:
    if args.from_annotations:
        from presel.generate.oracle import oracle_to_dir

        summary = oracle_to_dir(args.selection, args.from_annotations, args.out,
                                reference_annotations=args.reference_annotations, match=args.match,
                                format=args.format, overwrite=args.overwrite)
    else:
        from presel.generate.online import GenerateConfig, generate_to_dir

        cfg = GenerateConfig(
            base_url=args.base_url, model=args.model, templates=args.templates, api_key_env=args.api_key_env,
            concurrency=args.concurrency, timeout=args.timeout, max_retries=args.max_retries,
            backoff_base=args.backoff_base, backoff_max=args.backoff_max, parse_retries=args.parse_retries,
            stop_after_failures=args.stop_after, price_in=args.price_in, price_out=args.price_out, format=args.format,
            max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed, retry_failed=args.retry_failed)
        summary = generate_to_dir(args.selection, args.out, cfg, reference_annotations=args.reference_annotations,
                                  image_root=args.image_root, pool=args.pool, overwrite=args.overwrite,
                                  progress=not args.no_progress)
    _print_summary(summary)
    print(f"wrote {args.out} ({summary.get('train_records')} training records in {', '.join(summary.get('outputs', []))})")
    return 0
