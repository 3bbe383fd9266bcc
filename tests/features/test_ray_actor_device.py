"""The Ray embedding actor uses the GPU Ray gave it: ``cuda:N`` on the driver is ``cuda`` inside the actor."""

import pytest

from presel.features.backends import BackendSpec


@pytest.mark.parametrize("device,expected", [("cuda:3", "cuda"), ("cuda", "cuda"), ("cpu", "cpu")])
def test_embed_actor_device(monkeypatch, device, expected):
    import presel.features.backends as backends
    from presel.executors.ray import EmbedActor

    seen = []
    monkeypatch.setattr(backends, "load_backend", lambda spec: seen.append(spec) or object())
    EmbedActor(BackendSpec(backend="hf", model="m", dtype="bf16", device=device))
    assert seen[0].device == expected and seen[0].dtype == "bf16" and seen[0].model == "m"
