from pathlib import Path

import pytest
from ft_data import make_train_set


@pytest.fixture
def train_set(tmp_path) -> Path:
    return make_train_set(tmp_path / "data")
