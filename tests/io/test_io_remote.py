"""Remote inputs never hang silently: a silent https server times out with progress lines and retries, a refused
or missing URL is named intact with its reason, a Ray address with nothing listening is one clear error."""

import http.server
import socket
import threading

import pytest

from presel.cli import main
from presel.errors import PreselError
from presel.executors.ray_guard import check_reachable


@pytest.fixture
def silent_server():
    """A server that accepts connections and never answers."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    conns, stop = [], threading.Event()

    def serve():
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(s.accept()[0])
            except OSError:
                continue

    threading.Thread(target=serve, daemon=True).start()
    yield s.getsockname()[1]
    stop.set()
    for c in conns:
        c.close()
    s.close()


@pytest.fixture
def web(tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "pool.jsonl").write_text('{"id": "a", "image": "a.png", "task": "t"}\n')

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path / "www"), **kw)

        def log_message(self, *a):
            pass

        def do_GET(self):
            if "boom" in self.path:
                self.send_error(500)
                return
            super().do_GET()

        do_HEAD = do_GET

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_silent_https_pool_times_out_with_progress_and_retries(silent_server, tmp_path, capsys, monkeypatch):
    pytest.importorskip("aiohttp")
    monkeypatch.setenv("PRESEL_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("PRESEL_HTTP_RETRIES", "1")
    url = f"http://127.0.0.1:{silent_server}/pool.parquet"
    assert main(["reference", "--pool", url, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"presel: waiting for {url}: no answer" in err and "try 2 of 2" in err
    assert f"{url}: the server accepted the connection but sent no answer within 1 s (2 tries)" in err
    assert "PRESEL_HTTP_TIMEOUT" in err and not (tmp_path / "r").exists()


def test_bad_http_settings(monkeypatch):
    from presel.io.sources import http_settings

    monkeypatch.setenv("PRESEL_HTTP_TIMEOUT", "soon")
    with pytest.raises(PreselError, match="PRESEL_HTTP_TIMEOUT='soon' must be a number of seconds > 0"):
        http_settings()


def test_refused_404_500_name_the_url_intact(web, tmp_path, capsys):
    pytest.importorskip("aiohttp")
    port = _closed_port()
    cases = [(f"https://127.0.0.1:{port}/pool.parquet", "cannot reach the storage (ClientConnectorError"),
             (f"{web}/missing.parquet", "HTTP 404 Not Found"),
             (f"{web}/boom.parquet", "HTTP 500"),
             (f"{web}/pool.jsonl", "is not read from a URL")]
    for url, needle in cases:
        assert main(["reference", "--pool", url, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert url in err and needle in err, err
        assert "https:/1" not in err and "http:/1" not in err and "pool manifest not found" not in err


def test_ray_address_with_nothing_listening(tmp_path, capsys):
    port = _closed_port()
    with pytest.raises(PreselError, match=rf"--ray-address 127.0.0.1:{port}: cannot reach a Ray cluster there"):
        check_reachable(f"127.0.0.1:{port}", 5)
    with pytest.raises(PreselError, match="expected HOST:PORT"):
        check_reachable("nonsense", 5)
    check_reachable("auto", 5)
    check_reachable(None, 5)


def test_embed_on_ray_with_nothing_listening(tiny_dinov2, tmp_path, capsys):
    pytest.importorskip("ray")
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "pool.jsonl").write_text('{"id": "a", "image": "imgs/a.png", "task": "t"}\n')
    port = _closed_port()
    rc = main(["embed", "--pool", str(tmp_path / "pool.jsonl"), "--model", str(tiny_dinov2), "--executor", "ray",
               "--ray-address", f"127.0.0.1:{port}", "--out", str(tmp_path / "feats")])
    err = capsys.readouterr().err
    assert rc == 2 and f"--ray-address 127.0.0.1:{port}: cannot reach a Ray cluster there" in err
    assert not (tmp_path / "feats").exists()


def test_ray_address_that_accepts_and_stays_silent(silent_server):
    with pytest.raises(PreselError, match=rf"127.0.0.1:{silent_server}: something accepts connections there but does "
                                          r"not answer as a Ray cluster \(no answer within 1 s\)"):
        check_reachable(f"127.0.0.1:{silent_server}", 1)


def test_ray_address_of_an_http_server(web):
    port = web.rsplit(":", 1)[1]
    with pytest.raises(PreselError, match="not a Ray cluster"):
        check_reachable(f"127.0.0.1:{port}", 5)


@pytest.mark.slow
def test_ray_address_of_a_real_cluster_passes():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        check_reachable(ray.get_runtime_context().gcs_address, 10)
    finally:
        ray.shutdown()
