"""``presel prepare``: the paper's public datasets -> pools; a final training set -> other trainers."""

from __future__ import annotations

import argparse

HELP = "prepare LLaVA-665K / Vision-FLAN as pools (tasks, unique ids), or export a training set for LLaVA / LLaMA-Factory"
DESCRIPTION = (HELP + ". Subcommands: llava665k, vision-flan, export. Outputs: pool.jsonl, annotations.json, "
               "tasks.json, summary.json, config.json (export: train file, images/, handoff.json).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from presel.commands._common import add_out_arguments

    sub = p.add_subparsers(dest="what", metavar="<dataset>", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    a = sub.add_parser("llava665k", formatter_class=fmt, help="llava_v1_5_mix665k.json -> pool with the paper's tasks",
                       description="Drop text-only records, number records by file position (orig id kept), assign "
                                   "tasks from --splits files or the built-in rules (image folder + prompt patterns).")
    a.add_argument("--annotations", required=True, help="llava_v1_5_mix665k.json (one JSON list)")
    a.add_argument("--image-root", required=True, help="folder holding coco/, gqa/, ocr_vqa/, textvqa/, vg/")
    a.add_argument("--splits", default=None, help="folder of per-task split files (file{i}_665.json: JSON lists of "
                                                  "records with unique_idx); task = file stem")
    a.add_argument("--tasks-config", default=None, help="YAML: image prefix -> source, source -> task "
                                                        "(default: the shipped 10-task table)")
    a.add_argument("--split-index", default="auto", choices=("auto", "original", "notext"),
                   help="what unique_idx in split files counts: position in the file, or after dropping text-only records")
    a.add_argument("--check-images", action="store_true", help="count image files missing under --image-root")
    a.add_argument("--reference-split", default=None, metavar="FILE",
                   help="the authors' released reference split (round1_665k_notext.json, records by unique_idx): "
                        "written as OUT/reference/ (as `presel reference --from-file`)")
    add_out_arguments(a)

    v = sub.add_parser("vision-flan", formatter_class=fmt, help="annotation_191-task_1k.json -> pool, task = task_name",
                       description="Number records by list position (ids are not unique in the file; orig id kept), "
                                   "task = task_name; empty answers are kept and counted.")
    v.add_argument("--annotations", required=True, help="annotation_191-task_1k.json (one JSON list)")
    v.add_argument("--image-root", required=True, help="the unpacked images_191task_1k/ folder")
    v.add_argument("--check-images", action="store_true", help="count image files missing under --image-root")
    add_out_arguments(v)

    e = sub.add_parser("export", formatter_class=fmt, help="export a training set for the LLaVA repo or LLaMA-Factory",
                       description="LLaVA: train.json + images/ (--data_path/--image_folder). LLaMA-Factory: ShareGPT "
                                   "JSON + dataset_info.json + images/ (dataset_dir: OUT).")
    from presel.config import add_config_arguments
    from presel.handoff import IMAGE_MODES, TARGETS, ExportConfig
    from presel.io.export import SYSTEM_TURNS

    add_config_arguments(e, ExportConfig, choices={"to": TARGETS, "image_mode": IMAGE_MODES,
                                                   "system_turns": SYSTEM_TURNS}, helps={
        "train": "training set: LLaVA JSON/JSONL (id, image, conversations, task), e.g. gen/train.json",
        "image_root": "folder the training set's image paths are relative to",
        "to": "target trainer (hf-datasets: a datasets save_to_disk folder, images embedded)",
        "system_turns": "LLaVA target: merge system turns into the first human turn, or drop them (LLaVA's train.py "
                        "knows only human/gpt)",
        "image_mode": "how images/ is filled; none = no folder (LLaVA: --image_folder IMAGE_ROOT; LLaMA-Factory: "
                      "absolute paths)",
        "name": "dataset name (LLaMA-Factory dataset: key and file name)"})
    add_out_arguments(e)


def run(args: argparse.Namespace) -> int:
    from presel.prepare.common import format_counts

    if args.what == "export":
        from presel.config import config_from_args
        from presel.handoff import ExportConfig, export_training_set

        ec = config_from_args(ExportConfig, args)
        info = export_training_set(ec.train, ec.image_root, args.out, to=ec.to, image_mode=ec.image_mode,
                                   name=ec.name, overwrite=args.overwrite, system_turns=ec.system_turns)
        print(f"exported {info['records']:,} records ({info['images']:,} images, {info['text_only']:,} text-only) "
              f"for {info['format']} to {args.out}")
        print("trainer settings:\n" + info["trainer_args"])
        return 0
    if args.what == "llava665k":
        from presel.prepare import prepare_llava665k

        s = prepare_llava665k(args.annotations, args.image_root, args.out, splits=args.splits,
                              tasks_config=args.tasks_config, split_index=args.split_index,
                              check_images=args.check_images, overwrite=args.overwrite,
                              reference_split=args.reference_split)
        print(f"{s['records_in_file']:,} records: {s['text_only_dropped']:,} text-only dropped, "
              f"{s['image_records']:,} image records, {s['distinct_images']:,} distinct images")
        print(format_counts(f"task ({s['task_source']})", s["tasks"], s["image_records"]))
        if "splits" in s:
            agr = s["splits"]["agreement"]
            print(f"rules vs split files (unique_idx numbering: {s['splits']['index']}): "
                  f"{agr['records_agreeing']:,} of {agr['records']:,} records agree ({100 * agr['rate']:.2f}%) "
                  "with each split task mapped to its majority rule task")
            for task, row in agr["confusion"].items():
                cells = ", ".join(f"{k} {v:,}" for k, v in row.items())
                print(f"  {task}: {cells}")
        else:
            chk = s["check_702"]
            print("per-source counts equal haotian-liu/LLaVA#702: " + ("yes" if chk["match"] else
                  "no (expected on a subset or a modified file): " + ", ".join(
                      f"{k} {v['found']:,}/{v['expected']:,}" for k, v in chk["by_source"].items()
                      if v["found"] != v["expected"])))
    else:
        from presel.prepare import prepare_vision_flan

        s = prepare_vision_flan(args.annotations, args.image_root, args.out, check_images=args.check_images,
                                overwrite=args.overwrite)
        print(f"{s['records_in_file']:,} records, {s['n_tasks']} tasks, {s['distinct_images']:,} distinct images, "
              f"{s['empty_answers']['count']:,} empty answers (kept), {s['no_image_dropped']:,} without image (dropped)")
        print(format_counts("task", s["tasks"], s["image_records"]))
    if "missing_images" in s:
        m = s["missing_images"]
        print(f"missing images under {s['image_root']}: {m['count']:,}" + (f" (first: {m['first'][0]})" if m["first"] else ""))
    print(f"wrote {args.out}/pool.jsonl, annotations.json, tasks.json, summary.json, config.json")
    return 0
