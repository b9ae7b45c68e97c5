"""The HTTP service: every endpoint, every bad input, and the real server over loopback."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import planted
from test_cli import run_cli
from test_recommend import GROUPS, train_run, write_planted
from torchcf.serving.http import create_app
from torchcf.serving.recommender import Recommender


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    data = planted(num_users=60, num_items=32, groups=GROUPS, per_user=6)
    return train_run(write_planted(root / "data", data), root / "gmf", epochs=10)


@pytest.fixture(scope="module")
def rec(run) -> Recommender:
    return Recommender.load(run)


@pytest.fixture(scope="module")
def client(rec) -> TestClient:
    return TestClient(create_app(rec, max_k=50, max_batch=10, max_body_bytes=2000))


def test_health_model_card_and_docs(client, rec):
    assert client.get("/health").json() == {"status": "ok", "model": "gmf", "items": 32}
    card = client.get("/model").json()
    assert card["model"] == "gmf" and card["num_items"] == 32 and card["num_users"] == 60
    assert card["protocol"]["k"] == 10 and "hr@10" in card["metrics"]["selected"]["test"]
    assert card["train_config"]["model_config"]["embedding_dim"] == 8 and card["torchcf_version"]
    assert client.get("/docs").status_code == 200
    assert "/recommend" in client.get("/openapi.json").json()["paths"]


def test_get_recommend_matches_the_python_api(client, rec):
    body = client.get("/recommend", params={"user": 3, "k": 4}).json()
    ids, scores = rec.recommend(3, k=4)
    assert body["user"] == 3
    assert [row["item"] for row in body["items"]] == ids.tolist()
    np.testing.assert_allclose([row["score"] for row in body["items"]], scores, rtol=1e-6)
    assert body["items"][0]["title"].startswith(f"Movie {ids[0]} ")
    seen = client.get("/recommend", params={"user": 3, "k": 50, "exclude_seen": "false"}).json()
    assert len(seen["items"]) == 32  # k clamped to the catalogue; seen items allowed


def test_post_recommend_batch_equals_single_and_fold_in(client, rec):
    batch = client.post("/recommend", json={"users": [1, 2, 5], "k": 3}).json()
    for entry in batch:
        single = client.get("/recommend", params={"user": entry["user"], "k": 3}).json()
        assert entry["user"] == single["user"]
        assert [r["item"] for r in entry["items"]] == [r["item"] for r in single["items"]]
        np.testing.assert_allclose(  # a batched matmul may differ in the last float bits
            [r["score"] for r in entry["items"]], [r["score"] for r in single["items"]], rtol=1e-5
        )
    folded = client.post("/recommend", json={"items": [1, 5, 9], "k": 3}).json()
    assert len(folded) == 1 and folded[0]["user"] is None
    ids, _ = rec.recommend_for_items([1, 5, 9], k=3)
    assert [row["item"] for row in folded[0]["items"]] == ids.tolist()
    filtered = client.post(
        "/recommend", json={"users": [1], "k": 3, "filter_items": [batch[0]["items"][0]["item"]]}
    ).json()
    first, expected = filtered[0]["items"][0], batch[0]["items"][1]
    assert first["item"] == expected["item"] and first["title"] == expected["title"]
    assert first["score"] == pytest.approx(expected["score"], rel=1e-5)


def test_similar(client, rec):
    body = client.get("/similar", params={"item": 1, "k": 3}).json()
    ids, _ = rec.similar_items(1, k=3)
    assert body["item"] == 1 and [row["item"] for row in body["items"]] == ids.tolist()


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "fragment"),
    [
        ("get", "/recommend", {"params": {"user": 999}}, 404, "unknown user 999"),
        ("get", "/recommend", {"params": {"user": "abc"}}, 404, "unknown user"),
        ("get", "/recommend", {"params": {}}, 422, "user"),
        ("get", "/recommend", {"params": {"user": 1, "k": 0}}, 422, "k"),
        ("get", "/recommend", {"params": {"user": 1, "k": -3}}, 422, "k"),
        ("get", "/recommend", {"params": {"user": 1, "k": 51}}, 422, "k"),
        ("get", "/recommend", {"params": {"user": 1, "k": "ten"}}, 422, "k"),
        ("get", "/recommend", {"params": {"user": 1, "exclude_seen": "maybe"}}, 422, "exclude"),
        ("get", "/similar", {"params": {"item": 4242}}, 404, "unknown item 4242"),
        ("get", "/similar", {"params": {"item": 1, "k": 0}}, 422, "k"),
        (
            "post",
            "/recommend",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
            "json",
        ),
        ("post", "/recommend", {"json": {"k": 3}}, 422, "exactly one"),
        ("post", "/recommend", {"json": {"users": [1], "items": [2]}}, 422, "exactly one"),
        ("post", "/recommend", {"json": {"users": []}}, 422, "users"),
        ("post", "/recommend", {"json": {"users": [1], "k": 0}}, 422, "k"),
        ("post", "/recommend", {"json": {"users": [1], "k": 51}}, 422, "at most 50"),
        ("post", "/recommend", {"json": {"users": [1], "colour": "red"}}, 422, "colour"),
        ("post", "/recommend", {"json": {"users": [1, 999]}}, 404, "unknown user 999"),
        ("post", "/recommend", {"json": {"items": [1, 4242]}}, 404, "unknown item 4242"),
        ("post", "/recommend", {"json": {"users": list(range(1, 12))}}, 422, "at most 10"),
        ("post", "/recommend", {"json": {"users": [1], "filter_items": [4242]}}, 404, "4242"),
        ("post", "/recommend", {"json": {"users": [[1]]}}, 422, "users"),
        ("post", "/recommend", {"json": {"users": list(range(1000, 2000))}}, 413, "bytes"),
    ],
)
def test_bad_input_is_a_json_4xx_never_a_500(client, method, path, kwargs, status, fragment):
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert fragment.lower() in json.dumps(response.json()["detail"]).lower()


def test_popular_fallback_for_unknown_users(rec, run):
    client = TestClient(create_app(Recommender.load(run, unknown_user="popular")))
    body = client.get("/recommend", params={"user": 999, "k": 3}).json()
    assert body["user"] == "999" or body["user"] == 999
    assert len(body["items"]) == 3
    assert body["items"][0]["score"] == float(rec.popularity.max())


def test_api_cli_and_python_agree(client, rec, run):
    result = run_cli("recommend", str(run), "--user", "7", "-k", "5", "--json")
    assert result.returncode == 0, result.stderr
    cli = json.loads(result.stdout)
    http = client.get("/recommend", params={"user": 7, "k": 5}).json()
    ids, _ = rec.recommend(7, k=5)
    assert [row["item"] for row in cli["items"]] == [row["item"] for row in http["items"]]
    assert [row["item"] for row in cli["items"]] == ids.tolist()
    assert cli["user"] == http["user"] == 7
    table = run_cli("recommend", str(run), "--user", "7", "-k", "5")
    lines = table.stdout.splitlines()
    assert lines[0] == "user 7" and lines[1].split()[:3] == ["rank", "item", "score"]
    assert len(lines) == 7 and "Movie" in lines[2]
    similar = run_cli("similar", str(run), "--item", "1", "-k", "3", "--json")
    assert (
        json.loads(similar.stdout)["items"]
        == client.get("/similar", params={"item": 1, "k": 3}).json()["items"]
    )
    folded = run_cli("recommend", str(run), "--items", "1,5,9", "-k", "3", "--json")
    post = client.post("/recommend", json={"items": [1, 5, 9], "k": 3}).json()[0]
    assert json.loads(folded.stdout)["items"] == post["items"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["recommend", "{run}", "--user", "999"], "unknown user 999"),
        (["recommend", "{run}", "--user", "1", "-k", "0"], "k must be a positive integer"),
        (["recommend", "{run}", "--items", "1,4242"], "unknown item 4242"),
        (["recommend", "{run}", "--items", ","], "--items needs at least one id"),
        (["similar", "{run}", "--item", "4242"], "unknown item 4242"),
        (["recommend", "/nonexistent/run", "--user", "1"], "not a torchcf model directory"),
        (["serve", "{run}", "--port", "0"], "--port"),
    ],
)
def test_cli_errors_are_one_line(run, args, fragment):
    result = run_cli(*[a.format(run=run) for a in args])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(*runs: Path) -> Iterator[str]:
    """``torchcf serve RUN...`` on a free loopback port, up (``/health`` answers); its base URL."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "torchcf", "serve", *map(str, runs), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    assert json.load(response)["status"] == "ok"
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_real_server_over_http(run, rec):
    with running_server(run) as base:
        with urllib.request.urlopen(f"{base}/recommend?user=2&k=4", timeout=10) as response:
            body = json.load(response)
        assert [row["item"] for row in body["items"]] == rec.recommend(2, k=4)[0].tolist()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/recommend?user=999", timeout=10)
        assert missing.value.code == 404
        assert json.load(missing.value)["detail"] == "unknown user 999"


HUGE = "99999999999999999999999"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("get", "/recommend", {"params": {"user": HUGE}}, 404),  # was a 500 (OverflowError)
        ("get", "/similar", {"params": {"item": HUGE}}, 404),
        ("get", "/recommend", {"params": {"user": "-" + HUGE}}, 404),
        ("get", "/recommend", {"params": {"user": "1e400"}}, 404),
        ("post", "/recommend", {"json": {"users": [10**30]}}, 404),
        ("post", "/recommend", {"json": {"items": [2**64]}}, 404),
        # NaN in a JSON body: the validation error itself could not be serialised (a 500)
        ("post", "/recommend", {"content": '{"users": [0], "k": NaN}'}, 422),
        ("post", "/recommend", {"content": '{"users": [1], "k": Infinity}'}, 422),
        ("post", "/recommend", {"content": '{"users": [NaN]}'}, 422),
        ("post", "/recommend", {"content": "[" * 900 + "]" * 900}, 422),
        ("post", "/recommend", {"content": "not json"}, 422),
        ("post", "/recommend", {"content": b"\xff\xfe\x00"}, 422),
        ("post", "/recommend", {"data": {"users": "1"}}, 422),  # a form, not JSON
    ],
)
def test_hostile_input_regressions(client, method, path, kwargs, status):
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert "detail" in response.json()


def test_deep_nesting_and_chunked_bodies_are_refused_not_crashed(rec):
    app = TestClient(create_app(rec, max_body_bytes=1_000_000))
    deep = app.post(
        "/recommend",
        content=b"[" * 200_000 + b"]" * 200_000,
        headers={"content-type": "application/json"},
    )
    assert 400 <= deep.status_code < 500 and "detail" in deep.json()

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(100):
            yield b" " * 20_000

    chunked = app.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "bytes" in chunked.json()["detail"]
    assert app.get("/health").status_code == 200  # and it still answers


def test_cli_huge_ids_are_one_line_errors(run):
    for args in (["recommend", str(run), "--user", HUGE], ["similar", str(run), "--item", HUGE]):
        result = run_cli(*args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "unknown" in result.stderr and "Traceback" not in result.stderr
