"""``pydiff parallel-sample``: launched by itself, under torchrun, and with a dead rank. The
two stale modes' quality at two ranks on the shipped model is checked here (>= 30 dB against
one process): displaced through the CLI's own launch, partial under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from pydiff.distributed import free_port


def _run(argv: list[str], tmp_path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def _args(tmp_path, name: str, mode: str, nproc: tuple[str, ...] = ("--nproc", "2"),
          steps: str = "6") -> list[str]:
    # 6 steps: 2 synchronous warm-up steps and 4 stale ones, the two-rank counterpart of
    # tests/test_parallel.py's four-rank quality check
    return ["parallel-sample", *nproc, "--mode", mode, "--size", "64", "--steps", steps,
            "--seed", "3", "-o", str(tmp_path / f"{name}.png"), "--json",
            str(tmp_path / f"{name}.json")]


def _check_figures(path, mode: str) -> None:
    figures = json.loads(path.read_text())
    assert set(figures) == {"bytes_per_rank_per_step", "psnr_vs_single", "seconds_per_step",
                            "mode", "nproc"}
    assert figures["mode"] == mode and figures["nproc"] == 2
    psnr = figures["psnr_vs_single"]
    if mode == "sync":
        assert psnr is None or psnr > 100
    else:  # stale activations: close to the single-process sample, not equal
        assert psnr is not None and 30 <= psnr < 200, figures
    assert figures["bytes_per_rank_per_step"] > 0 and figures["seconds_per_step"] > 0


def test_launches_its_own_workers(tmp_path):
    proc = _run([sys.executable, "-m", "pydiff.apps.cli", *_args(tmp_path, "own", "displaced")],
                tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for text in ("time per step", "bytes per rank per step", "PSNR vs single process"):
        assert text in proc.stdout
    _check_figures(tmp_path / "own.json", "displaced")
    assert (tmp_path / "own.png").read_bytes()[:4] == b"\x89PNG"


def test_runs_under_torchrun(tmp_path):
    # no --nproc: torchrun's parser would take it for its own --nproc-per-node
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                 "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                 str(free_port()), "-m", "pydiff.apps.cli",
                 *_args(tmp_path, "torchrun", "partial", nproc=())], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("bytes per rank per step") == 1  # rank 0 reports
    _check_figures(tmp_path / "torchrun.json", "partial")


def test_a_dead_rank_gives_a_clear_error_within_the_timeout(tmp_path):
    start = time.monotonic()
    argv = _args(tmp_path, "dead", "sync", steps="2")
    proc = _run([sys.executable, "-m", "pydiff.apps.cli", *argv,
                 "--timeout", "5"], tmp_path, PYDIFF_PARALLEL_FAULT="1:die")
    assert time.monotonic() - start < 60
    assert proc.returncode == 1
    assert "rank 1: died (killed by signal 9)" in proc.stderr, proc.stderr[-3000:]
    assert "rank 0: DistributedError: rank 0 of 2: exchanging" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "dead.png").exists() and not (tmp_path / "dead.json").exists()
