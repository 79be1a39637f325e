"""Data parallel training: 2 gloo processes under torchrun equal 1 process with both shards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path

    import torch

    import pydiff
    from pydiff.testing import GaussianMixture
    from pydiff.training import BatchLoader, Trainer, diffusion_loss, init_distributed
    from pydiff.training.toy import ToyMLP

    torch.set_num_threads(1)
    out, batch_size, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    info = init_distributed()  # gloo on CPU

    # fixed data with its noise and times, so every process layout sees the same problem
    g = torch.Generator().manual_seed(0)
    n = 256
    data = {"x0": GaussianMixture.ring().sample(n, g).float(),
            "t": torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01,
            "noise": torch.randn(n, 2, generator=g)}

    def loss_fn(model, batch, generator):
        return diffusion_loss(model, batch["x0"], t=batch["t"], noise=batch["noise"]).loss

    torch.manual_seed(100 + info.rank)  # different inits: the trainer broadcasts rank 0's
    model = pydiff.Denoiser(ToyMLP(hidden=32, depth=2), pydiff.VPSchedule(), prediction="eps")
    loader = BatchLoader(data, batch_size, seed=1)
    trainer = Trainer(model, loader, loss_fn=loss_fn, max_steps=steps, lr=1e-2, ema=0.9,
                      grad_clip=1.0, lr_scheduler="cosine", warmup_steps=2, progress=False,
                      checkpoint_dir=out / "ckpt", checkpoint_every=10)
    init = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    trainer.fit()
    torch.save({"init": init, "params": trainer.module.state_dict(),
                "ema": trainer.ema.module.state_dict(), "world_size": info.world_size,
                "loader_rank": loader.rank, "loss": trainer.history[-1]["loss"]},
               out / f"rank{info.rank}.pt")
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], tmp) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_gloo_ranks_match_one_process_with_the_combined_batch(tmp_path):
    script = tmp_path / "dp_train.py"
    script.write_text(SCRIPT)
    (tmp_path / "dp").mkdir()
    (tmp_path / "single").mkdir()
    steps = 20
    run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         str(script), str(tmp_path / "dp"), "16", str(steps)], tmp_path)
    run([sys.executable, str(script), str(tmp_path / "single"), "32", str(steps)], tmp_path)

    r0, r1 = (torch.load(tmp_path / "dp" / f"rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single" / "rank0.pt")
    assert (r0["world_size"], r1["world_size"], single["world_size"]) == (2, 2, 1)
    assert (r0["loader_rank"], r1["loader_rank"]) == (0, 1)
    for key in ("params", "ema"):
        for name, p in r0[key].items():
            assert torch.equal(p, r1[key][name]), (key, name)  # ranks stay in lockstep
            torch.testing.assert_close(p, single[key][name], rtol=1e-4, atol=1e-5)
    assert abs(r0["loss"] - single["loss"]) < 1e-4
    # rank 1 started from rank 0's broadcast weights, and training moved them
    for name, p in r0["init"].items():
        assert torch.equal(p, r1["init"][name]) and torch.equal(p, single["init"][name])
    assert (single["params"]["inp.weight"] - single["init"]["inp.weight"]).abs().max() > 1e-2
    assert (tmp_path / "dp" / "ckpt" / "step_00000020" / "rank1.pt").is_file()
