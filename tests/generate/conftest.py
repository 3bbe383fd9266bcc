import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gen_fake_server import FakeOpenAI  # noqa: E402


@pytest.fixture
def server():
    s = FakeOpenAI()
    s.base_url = s.start()
    yield s
    s.stop()
    assert not s.server_errors, s.server_errors


@pytest.fixture
def fast_cfg():
    from presel.generate.online import GenerateConfig

    def make(base_url: str, **kw):
        kw.setdefault("backoff_base", 0.01)
        kw.setdefault("backoff_max", 0.05)
        kw.setdefault("timeout", 5.0)
        kw.setdefault("concurrency", 4)
        return GenerateConfig(base_url=base_url, model="fake-vlm", **kw)

    return make
