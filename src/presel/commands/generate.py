"""``presel generate``: instructions for the selected images (online, oracle)."""

from __future__ import annotations

import argparse

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inputs")
    g.add_argument("--selection", default=None,
                   help="selection.parquet or .jsonl from presel select (id, image, task, source); not needed with --collect")
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
    from presel.protocol import add_protocol_argument

    add_protocol_argument(g)
    g = p.add_argument_group("mode")
    g.add_argument("--mode", default="online", choices=["online", "batch-file", "batch-api"],
                   help="online requests; batch-file: write request files only; batch-api: submit them to --base-url")
    g.add_argument("--collect", nargs="+", default=None, metavar="RESULT_FILE",
                   help="collect batch result files (vllm run-batch / provider output and error files) into --out")
    g.add_argument("--allow-partial", action="store_true",
                   help="write train.json even when some selected items have neither a result nor a recorded failure")
    g = p.add_argument_group("batch files and batch API")
    g.add_argument("--provider", default=None, choices=["openai", "anthropic", "gemini", "vllm"],
                   help="request and result shapes and batch API of this provider (default openai; with --collect: "
                        "any known result shape)")
    g.add_argument("--max-enqueued-tokens", type=int, default=None,
                   help="batch-api: submit request files only while the estimated input tokens of unfinished batches "
                        "stay under this (the provider's enqueued-token limit); waits for batches to finish")
    g.add_argument("--image-transport", default="base64", choices=["base64", "path", "url"],
                   help="images in request files: base64 data URLs, file:// paths (a local server), or URLs")
    g.add_argument("--image-url-prefix", default=None, help="for --image-transport url: URL the image paths are relative to")
    g.add_argument("--max-lines", type=int, default=50_000, help="requests per request file")
    g.add_argument("--max-bytes", type=int, default=190 * 2**20, help="bytes per request file")
    g.add_argument("--completion-window", default="24h")
    g.add_argument("--poll-interval", type=float, default=30.0, help="first wait between batch polls (s), grows x1.5")
    g.add_argument("--poll-max", type=float, default=600.0, help="longest wait between batch polls (s)")
    g.add_argument("--max-wait", type=float, default=None, help="stop polling after this many seconds (rerun resumes)")
    g.add_argument("--batch-discount", type=float, default=0.5, help="batch price = online price x this (estimate)")
    g.add_argument("--batch-price-in", type=float, default=None, help="batch price per 1M input tokens (instead of the discount)")
    g.add_argument("--batch-price-out", type=float, default=None, help="batch price per 1M output tokens")
    g.add_argument("--image-tokens", type=int, default=None, help="tokens per image for the estimate (default: from the image size)")
    g.add_argument("--image-token-rule", default="auto",
                   choices=["auto", "gpt-4o", "gpt-4o-mini", "o-series", "patch32", "claude", "gemini", "qwen2vl",
                            "openai"],
                   help="how the estimate turns an image size into tokens (auto: from --model; openai = gpt-4o)")
    g.add_argument("--output-fraction", type=float, default=0.5, help="expected share of max_tokens an answer uses (estimate)")
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
    g.add_argument("--stop-after-failures", type=int, default=20, dest="stop_after_failures",
                   help="stop the run after this many failed items in a row (0: never)")
    g.add_argument("--stop-after", type=int, dest="stop_after_failures", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    g.add_argument("--max-tokens", type=int, default=None, help="override the templates' max_tokens")
    g.add_argument("--max-tokens-field", default="max_tokens", choices=["max_tokens", "max_completion_tokens"],
                   help="request field for the answer length (newer OpenAI models want max_completion_tokens)")
    g.add_argument("--temperature", default=None,
                   help="override the templates' temperature; 'none' sends no temperature (reasoning models)")
    g.add_argument("--image-detail", default="auto", choices=["auto", "low", "high"],
                   help="OpenAI image detail sent with each image (auto: not sent) and used by the estimate")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--retry-failed", action="store_true", help="retry the items recorded in failures.jsonl")
    g = p.add_argument_group("accounting and output")
    g.add_argument("--price-in", type=float, default=None, help="online price per 1M input tokens (default 0)")
    g.add_argument("--price-out", type=float, default=None, help="online price per 1M output tokens (default 0)")
    g.add_argument("--format", default="llava", choices=["llava", "sharegpt", "hf-datasets"],
                   help="train.json is always LLaVA; sharegpt also writes train_sharegpt.json (messages/images), hf-datasets a datasets folder train_hf/ (save_to_disk, images embedded)")
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


def _expand(patterns: list[str]) -> list[str]:
    """Result files; a pattern the shell did not expand (quoted) is globbed here."""
    import glob
    import os

    out: list[str] = []
    for p in patterns:
        out.extend(sorted(glob.glob(p)) if any(c in p for c in "*?[") and not os.path.exists(p) else [p])
    return out


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
    if args.from_annotations:
        from presel.generate.oracle import oracle_to_dir

        summary = oracle_to_dir(args.selection, args.from_annotations, args.out,
                                reference_annotations=args.reference_annotations, match=args.match,
                                format=args.format, overwrite=args.overwrite, protocol=args.protocol)
        _print_summary(summary)
        print(f"wrote {args.out} ({summary.get('train_records')} training records in {', '.join(summary.get('outputs', []))})")
        return 0
    from presel.generate.online import GenerateConfig, generate_to_dir

    cfg = GenerateConfig(
        base_url=args.base_url, model=args.model, templates=args.templates, api_key_env=args.api_key_env,
        concurrency=args.concurrency, timeout=args.timeout, max_retries=args.max_retries,
        backoff_base=args.backoff_base, backoff_max=args.backoff_max, parse_retries=args.parse_retries,
        stop_after_failures=args.stop_after_failures, price_in=args.price_in or 0.0, price_out=args.price_out or 0.0,
        format=args.format, max_tokens=args.max_tokens, max_tokens_field=args.max_tokens_field,
        temperature=args.temperature, image_detail=args.image_detail, seed=args.seed,
        retry_failed=args.retry_failed)
    common = {"reference_annotations": args.reference_annotations, "image_root": args.image_root, "pool": args.pool,
              "overwrite": args.overwrite}
    if args.mode == "online" and args.provider in ("anthropic", "gemini"):
        raise PreselError(f"--provider {args.provider} is for --mode batch-file/batch-api and --collect; online mode "
                          "speaks OpenAI chat completions, which both offer: --base-url https://api.anthropic.com/v1 or "
                          "https://generativelanguage.googleapis.com/v1beta/openai, without --provider")
    if args.mode == "online":
        summary = generate_to_dir(args.selection, args.out, cfg, progress=not args.no_progress, **common)
    else:
        from presel.generate.batch import BatchConfig, batch_api_to_dir, batch_files_to_dir

        batch = BatchConfig(
            image_transport=args.image_transport, image_url_prefix=args.image_url_prefix, max_lines=args.max_lines,
            max_bytes=args.max_bytes, completion_window=args.completion_window, poll_interval=args.poll_interval,
            poll_max=args.poll_max, max_wait=args.max_wait, batch_discount=args.batch_discount,
            batch_price_in=args.batch_price_in, batch_price_out=args.batch_price_out, image_tokens=args.image_tokens,
            image_token_rule=args.image_token_rule, output_fraction=args.output_fraction,
            provider=args.provider or "openai", max_enqueued_tokens=args.max_enqueued_tokens)
        if args.mode == "batch-file":
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
        summary = batch_api_to_dir(args.selection, args.out, cfg, batch, allow_partial=args.allow_partial, **common)
    _print_summary(summary)
    print(f"wrote {args.out} ({summary.get('train_records')} training records in {', '.join(summary.get('outputs', []))})")
    from presel.generate.usable import check_usable

    check_usable(summary, args.out, allow_partial=args.allow_partial)  # every request failed: exit 3
    return 0


def _print_estimate(e: dict) -> None:
    print(f"estimate for {e['items']} request(s): ~{e['tokens_in']} tokens in, ~{e['tokens_out']} tokens out "
          f"({e['image_token_rule']} image tokens); online cost {e['online_cost']:.4f}, batch cost {e['batch_cost']:.4f}, "
          f"saving {e['saving']:.4f}" + (f" ({e['saving_fraction']:.0%})" if e.get("saving_fraction") is not None else ""))
