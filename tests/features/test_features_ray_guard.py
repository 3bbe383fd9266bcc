"""Ray runs never hang silently: a plan the cluster cannot schedule is refused, a stalled run stops."""

import json
import time

import pytest

from presel.errors import PreselError
from presel.executors.ray_guard import check_resources, with_progress_timeout


def test_check_resources_refuses_actors_that_leave_no_cpu_for_decoding():
    res = {"CPU": 2.0}
    with pytest.raises(PreselError, match=r"has 2 CPU\(s\) but --ray-actors 2 needs 2 for the model actors plus 1 "
                                          r"for decoding images.*pass --ray-actors 1"):
        check_resources(res, actors=2, actor_cpus=1, actor_gpus=0, decode_cpus=1, actors_flag="--ray-actors")
    check_resources(res, actors=1, actor_cpus=1, actor_gpus=0, decode_cpus=1, actors_flag="--ray-actors")
    with pytest.raises(PreselError, match=r"has 0 GPU\(s\) but --workers 1 needs 1"):
        check_resources(res, actors=1, actor_cpus=0, actor_gpus=1, decode_cpus=0, actors_flag="--workers")
    with pytest.raises(PreselError, match="--workers 3 needs 3"):  # scoring: no decode tasks
        check_resources(res, actors=3, actor_cpus=1, actor_gpus=0, decode_cpus=0, actors_flag="--workers")


def test_progress_timeout_stops_a_stalled_stream():
    def stalls():
        yield 1
        time.sleep(30)
        yield 2

    got = []
    t0 = time.monotonic()
    with pytest.raises(PreselError, match="embed: no progress for 0.5 s on the Ray cluster"):
        for x in with_progress_timeout(stalls(), 0.5, "embed"):
            got.append(x)
    assert got == [1] and time.monotonic() - t0 < 5
    assert list(with_progress_timeout(iter(range(5)), 5, "x")) == [0, 1, 2, 3, 4]

    def breaks():
        yield 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(with_progress_timeout(breaks(), 5, "x"))


@pytest.mark.slow
def test_two_node_cluster_refuses_too_many_actors_and_runs_with_one(tiny_dinov2, tmp_path, write_pool, capsys):
    """The issue's cluster: a head and a worker node with 1 CPU each."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from presel.cli import main
    from presel.features.extract import EmbedConfig, embed_pool
    from presel.io.manifest import read_pool

    pool_path = write_pool(tmp_path, [f"i{i}.png" for i in range(5)])
    kw = dict(model=str(tiny_dinov2), batch_size=2, workers=0, shard_size=3, progress=False)
    embed_pool(read_pool(pool_path), tmp_path / "local", EmbedConfig(**kw))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        t0 = time.monotonic()
        rc = main(["embed", "--pool", str(pool_path), "--model", str(tiny_dinov2), "--executor", "ray",
                   "--ray-actors", "2", "--out", str(tmp_path / "ray2"), "--no-progress"])
        assert rc == 2 and time.monotonic() - t0 < 60
        err = capsys.readouterr().err
        assert "has 2 CPU(s) but --ray-actors 2 needs 2 for the model actors plus 1 for decoding" in err
        assert "pass --ray-actors 1" in err
        st = embed_pool(read_pool(pool_path), tmp_path / "ray1", EmbedConfig(executor="ray", ray_actors=1, **kw))
        assert st["embedded_now"] == 5
    finally:
        ray.shutdown()
        cluster.shutdown()
    local = json.loads((tmp_path / "local" / "summary.json").read_text())
    assert json.loads((tmp_path / "ray1" / "summary.json").read_text()) == local
    for f in sorted((tmp_path / "local" / "shards").iterdir()):
        assert (tmp_path / "ray1" / "shards" / f.name).read_bytes() == f.read_bytes(), f.name
