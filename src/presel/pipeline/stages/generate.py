"""``generate``: instructions for the selected images, in every mode ``presel generate`` has.

* oracle: ``from_annotations`` (+ ``match``, ``format``): take them from an annotated file;
* ``mode: online`` (default): chat-completions requests to ``base_url``;
* ``mode: batch-file``: write batch request files and stop the run; run them (``vllm run-batch`` or a
  provider's batch API), list the result files under ``collect`` and rerun to collect them;
* ``mode: batch-api``: upload, submit, poll and collect through the server's batch API.

The keys are the ``GenerateConfig`` and ``BatchConfig`` fields (the ``presel generate`` flags).
"""

from __future__ import annotations

import dataclasses

from presel.errors import PreselError
from presel.generate.batch import BatchConfig
from presel.generate.online import GenerateConfig
from presel.pipeline.base import Stage, Waiting

MODES = ("online", "batch-file", "batch-api")
ORACLE_KEYS = ("from_annotations", "match", "format", "protocol")
RUN_KEYS = ("mode", "collect", "allow_partial")
BATCH_KEYS = tuple(f.name for f in dataclasses.fields(BatchConfig))
# how requests are sent, retried, batched and accounted for in estimates: the instructions stay the same
NEUTRAL = frozenset({"concurrency", "timeout", "max_retries", "backoff_base", "backoff_max", "stop_after_failures",
                     "retry_failed", "api_key_env", *RUN_KEYS, *BATCH_KEYS})


class Generate(Stage):
    name = "generate"
    dir = "generate"
    # protocol: oracle mode takes exactly the picked records under `official`; online writes one per item
    extra = ("from_annotations", "match", "protocol", *RUN_KEYS, *BATCH_KEYS)
    paths = ("from_annotations", "templates")
    needs = ("select", "annotate")
    neutral = NEUTRAL
    resumable = True
    outputs = {"train_json": "train.json"}

    @property
    def oracle(self) -> bool:
        return bool(self.section.get("from_annotations"))

    def known_keys(self) -> set[str]:
        return set(ORACLE_KEYS) if self.oracle else {f.name for f in dataclasses.fields(GenerateConfig)} | set(self.extra)

    def validate(self) -> None:
        from presel.config import from_dict

        self.config = None if self.oracle else GenerateConfig  # type: ignore[misc]
        super().validate()
        if self.oracle:
            from presel.generate.oracle import OracleConfig

            from_dict(OracleConfig, {"annotations": str(self.section["from_annotations"]),
                                     **{k: v for k, v in self.section.items() if k != "from_annotations"}},
                      source=self.source)
            from presel.generate.store import load_annotations

            load_annotations(self.cfg.path(self.section["from_annotations"]))  # malformed: now, not after embed
            return
        if self.conf.templates:  # relative to the config, like every path in it
            self.conf = dataclasses.replace(self.conf, templates=str(self.cfg.path(self.conf.templates)))
        mode = self.section.get("mode", "online")
        if mode not in MODES:
            raise PreselError(f"{self.cfg.source}: generate.mode={mode!r} must be one of {', '.join(MODES)}")
        self.batch = from_dict(BatchConfig, {k: v for k, v in self.section.items() if k in BATCH_KEYS}, source=self.source)
        collect = self.section.get("collect")
        if collect is not None and (not isinstance(collect, list) or not all(isinstance(c, str) for c in collect)):
            raise PreselError(f"{self.cfg.source}: generate.collect={collect!r} must be a list of result files")
        if mode != "batch-file" and not collect:
            try:
                self.conf.require_online()
            except PreselError as e:
                raise PreselError(f"{self.source}: {e} (or set from_annotations for oracle mode)") from None

    def wire(self) -> bool:
        self.need("selection", "needs a 'select' section")
        given = self.ctx.outputs.get("annotated_given")
        self.files = {"annotations": self.cfg.path(self.section.get("from_annotations")),
                      # a user-given annotated reference file is an input too (the annotate stage's key covers its own)
                      "reference_annotations": given}
        if self.section.get("templates"):  # relative to the config, like every path in it
            self.files["templates"] = self.cfg.path(self.section["templates"])
        return True

    def run(self) -> Waiting | None:
        if self.oracle:
            return self._oracle()
        if self.section.get("collect"):
            return self._collect()
        common = {"reference_annotations": self.ctx.outputs.get("annotated"),
                  "image_root": self.ctx.pool().image_root}
        selection = self.ctx.outputs["selection"]
        mode = self.section.get("mode", "online")
        from presel.generate.usable import check_usable

        partial = bool(self.section.get("allow_partial"))
        if mode == "online":
            from presel.generate.online import generate_to_dir

            check_usable(generate_to_dir(selection, self.out_dir, self.conf, **common), self.out_dir,
                         allow_partial=partial)  # every request failed: stop the run, exit 3
        elif mode == "batch-api":
            from presel.generate.batch import batch_api_to_dir

            check_usable(batch_api_to_dir(selection, self.out_dir, self.conf, self.batch, allow_partial=partial,
                                          **common), self.out_dir, allow_partial=partial)
        else:
            from presel.generate.batch import batch_files_to_dir

            r = batch_files_to_dir(selection, self.out_dir, self.conf, self.batch, **common)
            return Waiting(f"{len(r['files'])} batch request file(s) written to {self.out_dir}; run them (vllm run-batch "
                           "-i FILE -o RESULT, or a provider's batch API), list the result files under "
                           "generate.collect and rerun `presel run` to collect them")
        return None

    def _oracle(self) -> None:
        from presel.generate.oracle import oracle_to_dir

        s = {k: v for k, v in self.section.items() if k != "from_annotations"}
        oracle_to_dir(self.ctx.outputs["selection"], self.files["annotations"], self.out_dir,
                      reference_annotations=self.ctx.outputs.get("annotated"), overwrite=True, **s)

    def _collect(self) -> Waiting | None:
        from presel.generate.batch import collect_to_dir

        files = [str(self.cfg.path(f)) for f in self.section["collect"]]
        summary = collect_to_dir(self.out_dir, files, reference_annotations=self.ctx.outputs.get("annotated"),
                                 allow_partial=bool(self.section.get("allow_partial")),
                                 price_in=self.conf.price_in, price_out=self.conf.price_out)
        from presel.generate.usable import check_usable

        check_usable(summary, self.out_dir, allow_partial=bool(self.section.get("allow_partial")))
        if not (self.out_dir / "train.json").exists():
            return Waiting(f"{summary.get('pending', '?')} selected item(s) have no result yet: add their result files "
                           "to generate.collect (or set allow_partial: true) and rerun")
        return None
