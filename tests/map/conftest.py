import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "report"))  # report_run: the report tests' tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llava, tiny_dinov2) -> Path:
    """The report tests' real tiny `presel run` (every stage with tiny models, a demo pool)."""
    from report_run import build_tiny_run

    return build_tiny_run(tmp_path_factory.mktemp("map_run"), tiny_llava, tiny_dinov2)
