"""``generate``: instructions for the selected images, in every mode ``presel generate`` has.

* oracle: ``from_annotations`` (+ ``match``, ``format``): take them from an annotated file;
* ``mode: online`` (default): chat-completions requests to ``base_url``;
* ``mode: batch-file``: write batch request files and stop the run; run them (``vllm run-batch`` or a
  provider's batch API), list the result files under ``collect`` and rerun to collect them;
* ``mode: batch-api``: upload, submit, poll and collect through the server's batch API.

The keys are the ``GenerateConfig`` and ``BatchConfig`` fields (the ``presel generate`` flags); which of them
are result-neutral, and which (``format``) only change the output's form, is declared in those fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from presel.errors import PreselError
from presel.generate.batch import BatchConfig
from presel.generate.online import GenerateConfig
from presel.pipeline.base import Estimate, Sizes, Stage, Waiting, require_path

ORACLE_KEYS = ("from_annotations", "match", "format", "protocol")


class Generate(Stage):
    name = "generate"
    config = GenerateConfig
    also = (BatchConfig,)  # mode, collect, allow_partial and the batch settings: all result-neutral
    # protocol: oracle mode takes exactly the picked records under `official`; online writes one per item
    extra = ("from_annotations", "match", "protocol")
    paths = ("from_annotations", "templates")
    needs = ("select", "annotate")
    resumable = True
    outputs = {"train_json": "train.json"}

    def estimate(self, sizes: Sizes) -> Estimate:
        from presel.assumed import TOKENS, prompt_tokens

        g = self.section
        if self.oracle:
            return Estimate(f"oracle: {sizes.new:,} instructions taken from {g['from_annotations']} (no cost)")
        pin, pout = float(g.get("price_in", 0.0)), float(g.get("price_out", 0.0))
        tin = prompt_tokens(g)
        cost = sizes.new * (tin * pin + TOKENS["response"] * pout) / 1e6
        return Estimate(f"{sizes.new:,} instructions with {g.get('model')} (~{tin} in / {TOKENS['response']} out tokens "
                        f"each): ${cost:,.2f} at ${pin}/{pout} per 1M tokens",
                        sizes.hours(sizes.new, "generate_samples_per_s"), cost)

    @property
    def oracle(self) -> bool:
        return bool(self.section.get("from_annotations"))

    @classmethod
    def accepts(cls, section: dict[str, Any]) -> set[str]:
        return set(ORACLE_KEYS) if section.get("from_annotations") else cls.takes()

    def build_config(self) -> Any:
        from presel.config import from_dict

        if self.oracle:
            from presel.generate.oracle import OracleConfig

            from_dict(OracleConfig, {"annotations": str(self.section["from_annotations"]),
                                     **{k: v for k, v in self.section.items() if k != "from_annotations"}},
                      source=self.source)
            from presel.generate.store import load_annotations

            load_annotations(self.cfg.path(self.section["from_annotations"]))  # malformed: now, not after embed
            return None
        conf = super().build_config()
        if conf.templates:  # relative to the config, like every path in it
            conf = dataclasses.replace(conf, templates=str(self.cfg.path(conf.templates)))
        self.batch = from_dict(BatchConfig, {"mode": "online", **self.config_section(BatchConfig)}, source=self.source)
        if (self.batch.mode or "online") != "batch-file" and not self.batch.collect:
            try:
                conf.require_online()
            except PreselError as e:
                raise PreselError(f"{self.source}: {e} (or set from_annotations for oracle mode)") from None
        return conf

    def wire(self) -> bool:
        self.need("selection", "needs a 'select' section")
        given = self.ctx.outputs.get("annotated_given")
        self.files = {"annotations": self.cfg.path(self.section.get("from_annotations")),
                      # a user-given annotated reference file is an input too (the annotate stage's key covers its own)
                      "reference_annotations": given}
        if self.section.get("templates"):  # relative to the config, like every path in it (checked here: it is a file)
            self.files["templates"] = require_path(self.cfg, self.name, "templates", self.section["templates"])
        return True

    def run(self) -> Waiting | None:
        if self.oracle:
            return self._oracle()
        if self.batch.collect:
            return self._collect()
        common = {"reference_annotations": self.ctx.outputs.get("annotated"),
                  "image_root": self.ctx.pool().image_root}
        selection = self.ctx.outputs["selection"]
        mode = self.batch.mode or "online"
        from presel.generate.usable import check_usable

        partial = self.batch.allow_partial
        if mode == "online":
            from presel.generate.online import generate_to_dir

            check_usable(generate_to_dir(selection, self.out_dir, self.conf, **common), self.out_dir,
                         allow_partial=partial)  # every request failed: stop the run, exit 3
        elif mode == "batch-api":
            from presel.generate.batch_api import batch_api_to_dir

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

        files = [str(self.cfg.path(f)) for f in self.batch.collect or ()]
        summary = collect_to_dir(self.out_dir, files, reference_annotations=self.ctx.outputs.get("annotated"),
                                 allow_partial=self.batch.allow_partial,
                                 price_in=self.conf.price_in, price_out=self.conf.price_out)
        from presel.generate.usable import check_usable

        check_usable(summary, self.out_dir, allow_partial=self.batch.allow_partial)
        if not (self.out_dir / "train.json").exists():
            return Waiting(f"{summary.get('pending', '?')} selected item(s) have no result yet: add their result files "
                           "to generate.collect (or set allow_partial: true) and rerun")
        return None
