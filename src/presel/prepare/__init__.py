"""Dataset preparation: the paper's public datasets -> presel pools (``presel prepare``).

* :func:`prepare_llava665k` - ``llava_v1_5_mix665k.json`` with tasks from split files or built-in rules.
* :func:`prepare_vision_flan` - ``annotation_191-task_1k.json`` with task = ``task_name``.
* :mod:`presel.prepare.synthetic` - record-shape-exact fake files for tests and demos.
"""

from __future__ import annotations

from presel.prepare.llava665k import Llava665kConfig, prepare_llava665k
from presel.prepare.rules import TaskTable, coco_source, load_task_table
from presel.prepare.vision_flan import VisionFlanConfig, prepare_vision_flan

__all__ = ["Llava665kConfig", "TaskTable", "VisionFlanConfig", "coco_source", "load_task_table",
           "prepare_llava665k", "prepare_vision_flan"]
