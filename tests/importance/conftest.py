import pytest


@pytest.fixture(scope="session")
def tiny_loaded(tiny_llava):
    from presel.vlm.load import load_vlm

    return load_vlm(tiny_llava, dtype="fp32", device="cpu")
