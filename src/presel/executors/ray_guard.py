"""Ray runs that never hang silently: check the cluster can run the plan before starting it, and stop with
a clear error when nothing has progressed for a long time (used by ``embed`` and ``score`` on Ray)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from presel.errors import PreselError

T = TypeVar("T")

DEFAULT_PROGRESS_TIMEOUT = 600.0


def check_resources(resources: dict[str, Any], *, actors: int, actor_cpus: float, actor_gpus: float,
                    decode_cpus: float, actors_flag: str) -> None:
    """Refuse a plan the cluster cannot schedule: ``actors`` model actors (``actor_cpus``/``actor_gpus`` each)
    plus ``decode_cpus`` CPUs left for the CPU tasks that feed them. ``resources``: ``ray.cluster_resources()``."""
    cpus = float(resources.get("CPU", 0))
    gpus = float(resources.get("GPU", 0))
    need_gpus = actors * actor_gpus
    if need_gpus > gpus:
        raise PreselError(f"the Ray cluster has {gpus:g} GPU(s) but {actors_flag} {actors} needs {need_gpus:g} (one per "
                          f"model actor); pass {actors_flag} {max(1, int(gpus))} or fewer, add GPU nodes, or use --device cpu")
    need_cpus = actors * actor_cpus + decode_cpus
    if need_cpus > cpus:
        fit = int((cpus - decode_cpus) // actor_cpus) if actor_cpus else actors
        what = f" plus {decode_cpus:g} for decoding images" if decode_cpus else ""
        fix = f"pass {actors_flag} {fit} or add CPUs" if fit >= 1 else "add CPUs"
        raise PreselError(f"the Ray cluster has {cpus:g} CPU(s) but {actors_flag} {actors} needs "
                          f"{actors * actor_cpus:g} for the model actors{what}, so nothing could make progress; "
                          f"{fix} to the cluster (ray start --num-cpus N)")


def with_progress_timeout(items: Iterable[T], timeout: float, what: str) -> Iterator[T]:
    """Yield from ``items`` (consumed in a daemon thread); raise PreselError when none arrives for ``timeout`` s."""
    q: queue.Queue = queue.Queue(maxsize=4)
    done = object()
    stop = threading.Event()

    def pump() -> None:
        try:
            for x in items:
                if stop.is_set():
                    return
                q.put((None, x))
        except BaseException as e:  # handed to the consumer
            q.put((e, None))
            return
        q.put((None, done))

    threading.Thread(target=pump, name="presel-ray-results", daemon=True).start()
    try:
        while True:
            try:
                err, x = q.get(timeout=timeout)
            except queue.Empty:
                raise PreselError(f"{what}: no progress for {timeout:g} s on the Ray cluster; check it (`ray status`: are "
                                  "there free CPUs/GPUs for every task?), or raise --ray-progress-timeout if one batch "
                                  "really takes that long") from None
            if err is not None:
                raise err
            if x is done:
                return
            yield x
    finally:
        stop.set()


def check_reachable(address: str | None, timeout: float) -> None:
    """Refuse a ``--ray-address HOST:PORT`` (or ``ray://HOST:PORT``) with nothing listening, within ``timeout``
    seconds, before ``ray.init`` would wait on it for the whole run. ``auto``, ``local`` and None are Ray's own."""
    import socket

    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port_s = hostport.rpartition(":")
    if not sep or not port_s.isdigit():
        raise PreselError(f"--ray-address {address!r}: expected HOST:PORT (e.g. 10.0.0.5:6379), ray://HOST:PORT or "
                          "'auto'")
    host = host.strip("[]") or "127.0.0.1"
    wait = max(0.1, min(timeout, 30.0))
    fix = (f"start it (`ray start --head --port {port_s}` on {host}), fix the address, or drop --executor ray to run "
           "locally")
    try:
        conn = socket.create_connection((host, int(port_s)), timeout=wait)
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError | socket.timeout) else (e.strerror or str(e))
        raise PreselError(f"--ray-address {address}: cannot reach a Ray cluster there ({why}); {fix}") from None
    # Ray's GCS (and its client server) speak gRPC: an HTTP/2 server answers the client preface with SETTINGS at
    # once. Something that accepts and stays silent would keep ray.init waiting for minutes.
    with conn:
        try:
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            head = conn.recv(9)
        except OSError as e:
            silent = isinstance(e, TimeoutError | socket.timeout)
            why = f"no answer within {wait:g} s" if silent else (e.strerror or str(e))
            raise PreselError(f"--ray-address {address}: something accepts connections there but does not answer as a "
                              f"Ray cluster ({why}); {fix}") from None
    if len(head) < 9 or head[3] != 0x04:
        raise PreselError(f"--ray-address {address}: the server there is not a Ray cluster (no gRPC reply); {fix}")
