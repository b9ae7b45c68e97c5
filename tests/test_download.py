"""Dataset download against a local HTTP server on 127.0.0.1 serving a zip the test builds."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

from torchcf.data.datasets import DatasetSpec, fetch_dataset
from torchcf.errors import DataError


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("toy/ratings.dat", "1::1::5::1\n1::2::4::2\n2::1::3::3\n2::3::5::4\n")
        zf.writestr("toy/movies.dat", "1::A (1999)::Drama\n")
    return buffer.getvalue()


class _Server:
    """Serves ``routes`` (path → bytes); ``/short`` lies about its Content-Length."""

    def __init__(self, routes: dict[str, bytes]) -> None:
        routes_ = routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = routes_.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                declared = len(body) + (1000 if self.path == "/short" else 0)
                self.send_header("Content-Length", str(declared))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _spec(url: str, body: bytes, md5: str | None = None) -> DatasetSpec:
    return DatasetSpec(
        name="toy",
        url=url,
        md5=md5 or hashlib.md5(body).hexdigest(),
        sha256=hashlib.sha256(body).hexdigest(),
        ratings="toy/ratings.dat",
        titles="toy/movies.dat",
    )


def test_download_verify_extract(tmp_path: Path):
    body = _zip_bytes()
    with _Server({"/toy.zip": body}) as server:
        directory = fetch_dataset(_spec(server.url + "/toy.zip", body), tmp_path, progress=False)
    assert (directory / "ratings.dat").read_text().startswith("1::1::5::1")
    assert (tmp_path / "toy.zip").exists()
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".toy.extract"))
    # second call: no server needed, the extracted copy is used
    assert fetch_dataset(_spec("http://127.0.0.1:9/none", body), tmp_path) == directory


def test_corrupt_download_is_removed_and_reported(tmp_path: Path):
    body = _zip_bytes()
    with _Server({"/toy.zip": body}) as server:
        spec = _spec(server.url + "/toy.zip", body, md5="0" * 32)
        with pytest.raises(DataError, match="corrupt or incomplete .*removed"):
            fetch_dataset(spec, tmp_path, progress=False)
    assert not (tmp_path / "toy.zip").exists() and not (tmp_path / "toy").exists()


def test_partial_download_is_detected(tmp_path: Path):
    body = _zip_bytes()
    with _Server({"/short": body}) as server:
        with pytest.raises(DataError, match="cut short|cannot download"):
            fetch_dataset(_spec(server.url + "/short", body), tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


def test_offline_gives_one_line_with_where_to_put_the_file(tmp_path: Path):
    body = _zip_bytes()
    with _Server({}) as server:
        url = server.url + "/missing.zip"
    # the server is gone: connection refused, as offline
    with pytest.raises(DataError) as info:
        fetch_dataset(_spec(url, body), tmp_path, progress=False)
    message = str(info.value)
    assert "cannot download toy" in message and str(tmp_path) in message and "\n" not in message


def test_not_a_zip(tmp_path: Path):
    body = b"not a zip at all"
    with _Server({"/toy.zip": body}) as server:
        with pytest.raises(DataError, match="not a valid zip"):
            fetch_dataset(_spec(server.url + "/toy.zip", body), tmp_path, progress=False)


def test_unknown_dataset_name(tmp_path: Path):
    with pytest.raises(DataError, match="unknown dataset 'ml-2m'"):
        fetch_dataset("ml-2m", tmp_path)
