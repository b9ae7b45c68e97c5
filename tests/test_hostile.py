"""Hostile input, generated: every HTTP request gets a 2xx or a 4xx with a JSON ``detail`` (never
a 5xx, and the server answers afterwards); every CLI command given hostile arguments prints one
line and exits with status 2 (or succeeds where the input happens to be valid)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_rows, write_ml1m
from test_cli import run_cli
from torchcf.cli.flags import flag_of, setting_fields
from torchcf.cli.main import main
from torchcf.serving.http import create_app
from torchcf.serving.recommender import Recommender

HYPOTHESIS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    write_ml1m(root / "ratings.dat", tiny_rows(num_users=12, num_items=20, per_user=6))
    out = root / "run"
    result = run_cli(
        "train", "--data", str(root / "ratings.dat"), "--out", str(out), "--epochs", "1",
        "--factors", "4", "--eval-negatives", "5", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def client(run) -> TestClient:
    return TestClient(create_app(Recommender.load(run), max_k=50, max_batch=20))


ids = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.integers(min_value=-3, max_value=25),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.booleans(),
    st.none(),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "users": st.lists(ids, max_size=5) | ids,
            "items": st.lists(ids, max_size=5) | ids,
            "k": ids | json_values,
            "exclude_seen": ids | json_values,
            "filter_items": st.lists(ids, max_size=5) | ids,
            "extra": json_values,
        },
    ),
)
query_values = st.one_of(ids.map(str), st.text(max_size=40))


def _ok(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert "detail" in response.json(), response.text


@HYPOTHESIS
@given(body=bodies, raw=st.booleans())
def test_post_recommend_never_fails_on_the_server(client, body, raw):
    text = json.dumps(body, allow_nan=True)  # NaN and Infinity included, as clients send them
    content = text.encode("utf-8") if raw else text.encode("utf-16")  # odd encodings too
    _ok(client.post("/recommend", content=content, headers={"content-type": "application/json"}))


@HYPOTHESIS
@given(
    path=st.sampled_from(["/recommend", "/similar", "/model", "/health", "/nowhere"]),
    params=st.dictionaries(
        st.sampled_from(["user", "item", "k", "exclude_seen", "x"]), query_values, max_size=4
    ),
    content_type=st.sampled_from([None, "text/plain", "application/json", "multipart/form-data"]),
)
def test_get_requests_never_fail_on_the_server(client, path, params, content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    _ok(client.get(path, params=params, headers=headers))


def test_the_server_answers_after_the_barrage(client):
    assert client.get("/health").status_code == 200


def _cli(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's own errors
            code = int(exit_.code or 0)
    torch.set_flush_denormal(False)  # the CLI sets it for its process; this is the test's
    return code, err.getvalue()


def _one_line_or_ok(code: int, err: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err


hostile_numbers = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-1e30", "NaN", "", " ", "abc", "0x1f"]),
    st.integers(min_value=10**20, max_value=10**40).map(str),
    st.integers(min_value=-(10**40), max_value=-1).map(str),
    st.text(alphabet="xyz€é;,'\"", min_size=1, max_size=10),
)
numeric = sorted(
    name for name, f in setting_fields().items() if not isinstance(f.default, bool | str)
)


@HYPOTHESIS
@given(name=st.sampled_from(numeric), value=hostile_numbers)
def test_train_refuses_hostile_settings_before_any_work(run, tmp_path_factory, name, value):
    data = Path(run).parent / "ratings.dat"
    out = tmp_path_factory.mktemp("never")
    code, err = _cli("train", "--data", str(data), "--out", str(out / "o"), flag_of(name), value)
    assert code == 2, (name, value, err)
    _one_line_or_ok(code, err)
    assert not (out / "o").exists()  # refused before anything was written


@HYPOTHESIS
@given(who=query_values, k=query_values, items=query_values)
def test_recommend_and_similar_take_any_ids(run, who, k, items):
    for args in (
        ("recommend", str(run), "--user", who, "-k", k),
        ("recommend", str(run), "--items", items, "--json"),
        ("recommend", str(run), "--user", "1", "--filter", items),
        ("similar", str(run), "--item", who, "-k", k),
    ):
        _one_line_or_ok(*_cli(*args))


@HYPOTHESIS
@given(weights=st.lists(hostile_numbers, min_size=1, max_size=3), protocol=query_values)
def test_blend_and_evaluate_take_any_arguments(run, tmp_path_factory, weights, protocol):
    out = tmp_path_factory.mktemp("blend") / "b"
    code, err = _cli("blend", str(run), str(run), "--weights", ",".join(weights), "--out", str(out))
    _one_line_or_ok(code, err)
    numbers = [
        float(w) if w.strip().lstrip("-").replace(".", "", 1).isdigit() else -1.0 for w in weights
    ]
    valid = len(weights) == 2 and all(0 <= w < float("inf") for w in numbers) and sum(numbers) > 0
    assert (code == 0) == valid and out.exists() == valid, (weights, err)  # relative weights
    _one_line_or_ok(*_cli("evaluate", str(run), "--protocol", protocol))
    _one_line_or_ok(*_cli("evaluate", str(run / "nothing" / protocol)))
