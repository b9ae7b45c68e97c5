"""Several processes, one run (torch.distributed, gloo over loopback, 2 ranks on this CPU): a
2-rank run takes the steps of one process with the same global batch, its sharded evaluation
counts what one process counts, torchrun's runs are ordinary run directories, and a dead rank
ends the job with an error instead of a hang."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import tiny_rows, write_ml1m
from test_cli import run_cli
from torchcf import distributed
from torchcf.data.sources import DataSpec, load_split
from torchcf.data.split import SplitConfig
from torchcf.errors import ConfigError
from torchcf.evaluation.protocols import full_ranks, holdout_ranks
from torchcf.models.registry import build_model
from torchcf.training.config import TrainConfig
from torchcf.training.trainer import Trainer

# the tower models as in the kernels' tests, no dropout (the issue's equivalence setting)
SHAPES = {
    "mf": {"embedding_dim": 8, "init_std": 0.1},
    "gmf": {"embedding_dim": 8, "init_std": 0.1},
    "mlp": {"embedding_dim": 4, "layers": 3, "dropout": 0.0, "init_std": 0.1},
    "neumf": {"embedding_dim": 4, "layers": 3, "dropout": 0.0, "init_std": 0.1},
    "ials": {"embedding_dim": 8},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train(name: str, data: str, config: TrainConfig, shape: dict | None = None) -> Trainer:
    split, _ = load_split(DataSpec(path=data), SplitConfig(eval_negatives=20), progress=False)
    model = build_model(name, split.num_users, split.num_items, seed=0, **(shape or SHAPES[name]))
    trainer = Trainer(model, split, config)
    trainer.fit()
    return trainer


def _rank(
    rank: int, world_size: int, port: int, name: str, data: str, out: str, config, shape: dict
) -> None:
    """One rank of a 2-process run: train, evaluate sharded, rank 0 saves what it got."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    world = distributed.setup("gloo", timeout=60)
    try:
        _rank_run(world, name, data, out, config, shape)  # its trainer gone before teardown
    finally:
        distributed.teardown()


def _rank_run(world, name: str, data: str, out: str, config, shape: dict) -> None:
    trainer = _train(name, data, config, shape)
    metrics = trainer.evaluate()
    lo, hi = world.span(len(trainer.split.test))
    if world.main:
        torch.save(
            {
                "state": trainer.model.state_dict(),
                "metrics": metrics,
                "history": [r.loss for r in trainer.history],
                "span": (lo, hi),
            },
            out,
        )


def _two_ranks(
    name: str, data: str, config: TrainConfig, out: Path, shape: dict | None = None
) -> dict:
    shape = shape or SHAPES[name]
    mp.spawn(
        _rank, args=(2, _free_port(), name, data, str(out), config, shape), nprocs=2, join=True
    )
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("dist") / "ratings.dat"
    write_ml1m(path, tiny_rows(num_users=40, num_items=30, per_user=12))
    return str(path)


@pytest.mark.parametrize(
    ("name", "optimizer"),
    [("mf", "adam"), ("gmf", "adam"), ("mlp", "adam"), ("neumf", "adam"), ("gmf", "lazy-adam"),
     ("mlp", "sgd"), ("mf", "adagrad")],
)  # fmt: skip
def test_two_ranks_take_one_process_steps(name, optimizer, data, tmp_path):
    """200+ steps of global batch 37 (odd: the ranks' shares differ by one) on 2 ranks give the
    parameters of one process with the same global batch (relative error < 1e-5), and the
    sharded evaluation exactly its metrics."""
    config = TrainConfig(
        epochs=6, batch_size=37, learning_rate=0.01, step="autograd", optimizer=optimizer
    )
    got = _two_ranks(name, data, config, tmp_path / "rank0.pt")
    one = _train(name, data, config)
    steps = one.step.forward_loss.keys.taken  # type: ignore[union-attr]
    assert steps >= 200
    for key, want in one.model.state_dict().items():
        rel = float((got["state"][key] - want).norm() / want.norm())
        assert rel < 1e-5, (key, rel)
    assert got["history"] == pytest.approx([r.loss for r in one.history], rel=1e-5)
    assert got["metrics"] == one.evaluate()  # the same ranks, counted once each
    # one process's default step (the compiled kernel: torch.optim.Adam's formula) is close too
    default = _train(name, data, config.replace(step="auto"))
    for key, want in default.model.state_dict().items():
        rel = float((got["state"][key] - want).norm() / want.norm())
        assert rel < 1e-4, (key, rel)


@pytest.mark.parametrize("solver", ["cg", "exact"])
def test_two_ranks_ials_sweeps_equal_one_process(solver, data, tmp_path):
    """iALS on 2 ranks: each solves its share of the users, then of the items, the shares
    all-gathered between: the factors of a one-process fit (relative error < 1e-5)."""
    shape = {**SHAPES["ials"], "solver": solver}
    config = TrainConfig(epochs=3)
    got = _two_ranks("ials", data, config, tmp_path / "rank0.pt", shape)
    one = _train("ials", data, config, shape)
    for key, want in one.model.state_dict().items():
        rel = float((got["state"][key] - want).norm() / want.norm())
        assert rel < 1e-5, (key, rel)
    assert got["metrics"] == one.evaluate()


def test_sharded_ranks_are_the_one_process_ranks(data):
    """Each rank's share of the users (contiguous, in rank order) gathered back is the
    one-process ranking, user for user (sampled candidates and full ranking with its top-k
    lists), also when the users do not divide evenly."""
    split, _ = load_split(DataSpec(path=data), SplitConfig(eval_negatives=20), progress=False)
    model = build_model("gmf", split.num_users, split.num_items, seed=3)
    whole = holdout_ranks(model, split.test)
    known = split.known_items()
    full, lists = full_ranks(model, split.test, known, top_k=5)
    for size in (2, 3, 7):
        parts, full_parts, list_parts = [], [], []
        for rank in range(size):
            lo, hi = distributed.World(rank, size).span(len(split.test))
            parts.append(holdout_ranks(model, split.test, share=slice(lo, hi)))
            ranks, shown = full_ranks(model, split.test, known, top_k=5, share=slice(lo, hi))
            full_parts.append(ranks)
            list_parts.append(shown)
        assert sum(len(p) for p in parts) == len(split.test)
        assert torch.equal(torch.cat(parts), whole)
        assert torch.equal(torch.cat(full_parts), full)
        assert np.array_equal(np.concatenate(list_parts), lists)


def test_one_process_world_and_refusals():
    world = distributed.current()
    assert (world.rank, world.size, world.main) == (0, 1, True)
    assert world.span(10) == (0, 10)
    assert [distributed.World(r, 3).span(10) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert not distributed.launched()
    with pytest.raises(ConfigError, match="unknown backend"):
        os.environ["WORLD_SIZE"] = "2"
        try:
            distributed.setup("mpi")
        finally:
            del os.environ["WORLD_SIZE"]


def _torchrun(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "torchcf", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )  # fmt: skip


def test_torchrun_writes_a_run_that_evaluate_and_recommend_take(data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", data, "--model", "gmf", "--epochs", "2", "--factors", "4"]
    done = _torchrun(*args, "--batch-size", "64", "--no-progress", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch   1/2") == 1  # rank 0 alone prints
    assert (out / "model").is_dir() and (out / "metrics.json").is_file()
    assert not list(out.glob("*.tmp*"))
    evaluated = run_cli("evaluate", str(out))
    assert evaluated.returncode == 0, evaluated.stderr
    recommended = run_cli("recommend", str(out), "--user", "1", "-k", "3")
    assert recommended.returncode == 0, recommended.stderr
    # --nproc 2 starts the same through torch.distributed.run: the same run, number for number
    again = run_cli(*args, "--batch-size", "64", "--no-progress", "--out", str(tmp_path / "b"),
                    "--nproc", "2")  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    first = (out / "metrics.csv").read_text()
    assert (tmp_path / "b" / "metrics.csv").read_text().split("\n")[1].split(",")[:6] == (
        first.split("\n")[1].split(",")[:6]
    )


def test_nproc_refusals(data, tmp_path):
    base = ["train", "--data", data, "--out", str(tmp_path / "x"), "--no-progress"]
    for extra, fragment in (
        (["--nproc", "0"], "--nproc must be in [1, 1024]"),
        (["--nproc", "2", "--seeds", "2"], "--nproc trains one run"),
        (["--nproc", "2", "--dist-timeout", "-1"], "--dist-timeout must be in"),
        (["--nproc", "2", "--lr", "nan"], "learning_rate must be finite"),
    ):
        done = run_cli(*base, *extra)
        assert done.returncode == 2 and fragment in done.stderr, (extra, done.stderr)
        assert "Traceback" not in done.stderr
    done = run_cli(*base, "--model", "ease", "--nproc", "2")  # refused before processes start
    assert done.returncode == 2 and "fits in one process" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks through /proc")
def test_a_killed_rank_ends_the_job_and_resume_reaches_the_same_metrics(tmp_path):
    """A rank killed mid-run: the job stops with a one-line error within 60 s; --resume then
    finishes with the metrics of an uninterrupted run."""
    path = tmp_path / "ratings.dat"
    write_ml1m(path, tiny_rows(num_users=200, num_items=100, per_user=25, seed=2))
    args = ["train", "--data", str(path), "--model", "gmf", "--epochs", "4", "--factors", "8",
            "--batch-size", "32", "--no-progress", "--nproc", "2", "--threads", "1"]  # fmt: skip
    whole = run_cli(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    job = subprocess.Popen(
        [sys.executable, "-m", "torchcf", *args, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    deadline = time.monotonic() + 120
    while not (out / "metrics.csv").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)  # the first epoch is written: the checkpoint exists
    ranks = _children(job.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[1], signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = job.communicate(timeout=90)
    assert time.monotonic() - killed < 60
    assert job.returncode == 2 and "the distributed run failed" in stderr, stderr[-2000:]
    assert "Traceback" not in stderr.strip().splitlines()[-1]
    resumed = run_cli(*args, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want = np.loadtxt(tmp_path / "whole" / "metrics.csv", delimiter=",", skiprows=1)[:, :6]
    got = np.loadtxt(out / "metrics.csv", delimiter=",", skiprows=1)[:, :6]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_a_restarted_job_resumes_from_its_checkpoint(tmp_path):
    """torchrun --max-restarts restarts a failed job with TORCHELASTIC_RESTART_COUNT > 0: the
    command then continues from the run's checkpoint by itself, to the uninterrupted metrics."""
    path = tmp_path / "ratings.dat"
    write_ml1m(path, tiny_rows(num_users=150, num_items=120, per_user=30, seed=4))
    args = ["train", "--data", str(path), "--model", "gmf", "--epochs", "5", "--factors", "8",
            "--batch-size", "16", "--no-progress", "--step", "autograd"]  # fmt: skip
    whole = run_cli(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    job = subprocess.Popen([sys.executable, "-m", "torchcf", *args, "--out", str(out)])
    deadline = time.monotonic() + 120
    # killed once an epoch's checkpoint is whole (metrics.csv is written just before it)
    while not (out / "checkpoint.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    job.kill()
    job.wait(timeout=30)
    assert (out / "checkpoint.pt").is_file()
    again = run_cli(*args, "--out", str(out), env={"TORCHELASTIC_RESTART_COUNT": "1"})
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed after epoch" in again.stdout
    want = np.loadtxt(tmp_path / "whole" / "metrics.csv", delimiter=",", skiprows=1)[:, :6]
    got = np.loadtxt(out / "metrics.csv", delimiter=",", skiprows=1)[:, :6]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks through /proc")
def test_a_hung_rank_ends_the_job_within_the_timeout(tmp_path):
    """A rank that stops answering (SIGSTOP): the other's collective gives up after
    --dist-timeout and the job ends with the one-line error, nothing half-written."""
    path = tmp_path / "ratings.dat"
    write_ml1m(path, tiny_rows(num_users=120, num_items=80, per_user=20, seed=3))
    out = tmp_path / "hung"
    job = subprocess.Popen(
        [sys.executable, "-m", "torchcf", "train", "--data", str(path), "--model", "gmf",
         "--epochs", "50", "--factors", "8", "--batch-size", "32", "--no-progress", "--nproc",
         "2", "--threads", "1", "--dist-timeout", "5", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "metrics.csv").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    ranks = _children(job.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[1], signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        _, stderr = job.communicate(timeout=90)
    finally:
        for pid in ranks:  # never leave a stopped process behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert time.monotonic() - stopped < 60
    assert job.returncode == 2 and "the distributed run failed" in stderr, stderr[-2000:]
    assert not list(out.glob("*.tmp*")) and not (out / "metrics.json").exists()
