import os
from pathlib import Path

import pytest
from ft_data import make_train_set


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """The tiny LLaVA of presel.vlm.build, built once per session in a session-tmp PRESEL_CACHE."""
    from presel.cache import offline_model

    cache = tmp_path_factory.mktemp("presel_cache")
    old = os.environ.get("PRESEL_CACHE")
    os.environ["PRESEL_CACHE"] = str(cache)
    try:
        path = offline_model("tiny-llava")
    finally:
        if old is None:
            os.environ.pop("PRESEL_CACHE", None)
        else:
            os.environ["PRESEL_CACHE"] = old
    return Path(path)


@pytest.fixture
def train_set(tmp_path) -> Path:
    return make_train_set(tmp_path / "data")
