"""presel.generate: instructions for the selected images.

* :func:`generate_to_dir` (online, any OpenAI-compatible server; resumable) with :class:`GenerateConfig`;
* :func:`oracle_to_dir` (the paper's protocol: instructions from an existing annotated dataset);
* batch: :func:`batch_files_to_dir` (OpenAI batch request files), :func:`collect_to_dir` (result files),
  :func:`batch_api_to_dir` (upload, submit, poll, download, collect; resumable) with :class:`BatchConfig`;
* templates (:func:`load_templates`), answer parsing/validation (:mod:`presel.generate.parse`).

Heavy imports (httpx, jsonschema, tqdm) happen inside the functions that use them.
"""

from __future__ import annotations

from presel.generate.batch import BatchConfig, batch_files_to_dir, collect_to_dir
from presel.generate.batch_api import batch_api_to_dir
from presel.generate.online import GenerateConfig, generate_to_dir
from presel.generate.oracle import OracleConfig, oracle_to_dir
from presel.generate.templates import Template, TemplateSet, load_templates

__all__ = ["BatchConfig", "batch_api_to_dir", "batch_files_to_dir", "collect_to_dir", "GenerateConfig", "generate_to_dir", "OracleConfig", "oracle_to_dir", "Template", "TemplateSet",
           "load_templates"]
