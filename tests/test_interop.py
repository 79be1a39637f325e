"""diffusers interop against diffusers itself (installed here): configs, grids, models, loops.

The scheduler configs in tests/data/diffusers_configs were typed from the widely used pipelines'
``scheduler_config.json`` files (no downloads).
"""

import inspect
import json
import math
from pathlib import Path

import pytest
import torch

import pydiff
from pydiff.guidance import ClassifierFreeGuidance, ClipX0, DynamicThresholding
from pydiff.interop import SUPPORTED, DiffusersNet, from_diffusers_config
from pydiff.interop.diffusers_scheduler import DEFAULTS

diffusers = pytest.importorskip("diffusers")

CONFIGS = Path(__file__).parent / "data" / "diffusers_configs"
ALL = sorted(p.name for p in CONFIGS.glob("*.json"))
F64 = torch.float64


def _load(name):
    return json.loads((CONFIGS / name).read_text())


def _diffusers_scheduler(name):
    cfg = _load(name)
    return getattr(diffusers, cfg["_class_name"]).from_config(cfg)


def test_configs_are_present():
    assert len(ALL) >= 10


@pytest.mark.parametrize("cls", SUPPORTED)
def test_defaults_match_diffusers_signatures(cls):
    if not hasattr(diffusers, cls):
        pytest.skip(f"{cls} not in this diffusers")
    params = inspect.signature(getattr(diffusers, cls).__init__).parameters
    for key, value in DEFAULTS[cls].items():
        assert key in params, (cls, key)
        default = params[key].default
        if isinstance(value, float) and math.isinf(value):
            assert math.isinf(default) and default < 0
        else:
            assert default == value or (value == () and default == []), (cls, key, default)


def _reference_levels(name, steps):
    """diffusers' noise levels after set_timesteps: (kind, values)."""
    cfg = _load(name)
    sch = _diffusers_scheduler(name)
    if cfg.get("use_dynamic_shifting"):
        sch.set_timesteps(steps, mu=0.8)
    else:
        sch.set_timesteps(steps)
    cls = cfg["_class_name"]
    if cls in ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler"):
        ts = torch.unique(sch.timesteps).flip(0).to(F64)  # PLMS repeats one timestep
        return "timesteps", ts
    sig = sch.sigmas.to(F64)
    if cls == "HeunDiscreteScheduler":
        sig = torch.unique_consecutive(sig)
    return "sigmas", sig


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("steps", [4, 25, 50])
def test_grid_matches_diffusers_set_timesteps(name, steps):
    spec = from_diffusers_config(CONFIGS / name)
    mu = 0.8 if spec.config.get("use_dynamic_shifting") else None
    grid = spec.grid(steps, mu=mu)
    assert grid.shape == (steps + 1,) and grid.dtype == F64
    pydiff.grids.check_grid(spec.schedule, grid)  # valid, strictly decreasing
    kind, ref = _reference_levels(name, steps)
    n = spec.config["num_train_timesteps"]
    if kind == "timesteps":
        torch.testing.assert_close(grid[:-1] * n - 1, ref, atol=1e-9, rtol=0)
        final_alpha_one = spec.class_name == "DDPMScheduler" or spec.config["set_alpha_to_one"]
        assert float(grid[-1]) == (0.0 if final_alpha_one else 1 / n)
    else:
        torch.testing.assert_close(spec.sigmas(steps, mu=mu), ref, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_schedule_and_prediction_match_diffusers(name):
    spec = from_diffusers_config(CONFIGS / name)
    sch = _diffusers_scheduler(name)
    cfg = _load(name)
    if isinstance(spec.schedule, pydiff.EDMSchedule):
        assert (spec.prediction, spec.precond, spec.time_input) == ("x0", "edm", "log_sigma")
        assert spec.schedule.sigma_data == cfg["sigma_data"]
        return
    if isinstance(spec.schedule, pydiff.FlowSchedule):
        assert spec.prediction == "velocity" and spec.time_input == "scaled"
        assert spec.time_scale == cfg["num_train_timesteps"]
        assert spec.schedule.shift == cfg["shift"]
        return
    ours, theirs = spec.schedule.alphas_cumprod, sch.alphas_cumprod.to(F64)
    if cfg.get("rescale_betas_zero_snr"):
        # zero terminal SNR: diffusers' DDIM keeps alpha_T = 0, pydiff keeps 2^-24 (as Euler does)
        assert float(theirs[-1]) == 0 and float(ours[-1]) == 2.0**-24
        ours, theirs = ours[:-1], theirs[:-1]
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=1e-9)
    expected = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
    assert spec.prediction == expected[cfg.get("prediction_type", "epsilon")]
    assert spec.time_input == "index"


@pytest.mark.parametrize("name", ALL)
def test_round_trip_through_to_config(name):
    cfg = _load(name)
    spec = from_diffusers_config(cfg)
    back = spec.to_config()
    for key, value in cfg.items():
        if key.startswith("_") and key != "_class_name":
            continue
        if key in spec.ignored:
            assert key not in back
            continue
        assert back[key] == value or (value is None and back.get(key) is None), key
    again = from_diffusers_config(back)
    mu = 0.8 if spec.config.get("use_dynamic_shifting") else None
    assert torch.equal(again.grid(20, mu=mu), spec.grid(20, mu=mu))
    assert (again.prediction, again.solver_name, again.solver_options) == (
        spec.prediction, spec.solver_name, spec.solver_options)
    # and diffusers accepts what we wrote
    getattr(diffusers, back["_class_name"]).from_config(back)


def test_solvers_and_wrappers_for_each_config():
    expected = {
        "sd15_pndm.json": "plms", "sd15_dpmpp_2m_karras.json": "dpmpp_2m",
        "sdxl_euler.json": "euler", "sdxl_turbo_euler_ancestral.json": "euler_ancestral",
        "sd2_v_ddim.json": "ddim", "pixart_alpha_dpm.json": "dpmpp_2m",
        "sd3_flow.json": "flow_euler", "flux_flow_dynamic.json": "flow_euler",
        "sd15_unipc.json": "unipc", "playground_v25_edm_dpm.json": "dpmpp_2m",
        "edm_euler_exponential.json": "euler",
    }
    for name, solver in expected.items():
        spec = from_diffusers_config(CONFIGS / name)
        assert spec.solver().name == solver, name
    # variance types pydiff cannot reproduce fail clearly, and can be overridden
    for name in ("ddpm_cifar10.json", "kandinsky22_decoder_ddpm.json", "deepfloyd_if_ddpm.json"):
        spec = from_diffusers_config(CONFIGS / name)
        with pytest.raises(ValueError, match="variance_type"):
            spec.solver()
        assert spec.solver("ddpm").name == "ddpm"
    net = lambda x, t: x  # noqa: E731
    assert isinstance(from_diffusers_config(CONFIGS / "ddpm_cifar10.json").denoiser(net), ClipX0)
    thr = from_diffusers_config(CONFIGS / "deepfloyd_if_ddpm.json").denoiser(net)
    assert isinstance(thr, DynamicThresholding)
    assert (thr.percentile, thr.max_value) == (0.95, 1.5)


def test_unknown_configs_fail_clearly():
    with pytest.raises(ValueError, match="_class_name='RePaintScheduler'"):
        from_diffusers_config({"_class_name": "RePaintScheduler"})
    with pytest.raises(ValueError, match="beta_schedule='exotic'"):
        from_diffusers_config({"_class_name": "DDIMScheduler", "beta_schedule": "exotic"})
    with pytest.raises(ValueError, match="timestep_spacing"):
        from_diffusers_config({"_class_name": "DDIMScheduler", "timestep_spacing": "odd"})
    spec = from_diffusers_config({"_class_name": "DPMSolverMultistepScheduler",
                                  "algorithm_type": "dpmsolver++", "solver_order": 3})
    assert spec.solver().name in ("dpm_multistep", "dpmpp_3m")
    with pytest.raises(ValueError, match="mu"):
        from_diffusers_config(CONFIGS / "flux_flow_dynamic.json").grid(10)


# -- models and whole loops -------------------------------------------------------------------

def _unet(channels=2, classes=None, out_channels=None):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = diffusers.UNet2DModel(
            sample_size=8, in_channels=channels, out_channels=out_channels or channels,
            layers_per_block=1,
            block_out_channels=(8, 16), norm_num_groups=4, num_class_embeds=classes,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"))
    return unet.eval()


def _x_T(shape=(2, 2, 8, 8)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def _diffusers_loop(name, unet, x, steps, **set_kw):
    sch = _diffusers_scheduler(name)
    sch.set_timesteps(steps, **set_kw)
    for t in sch.timesteps:
        inp = sch.scale_model_input(x, t) if hasattr(sch, "scale_model_input") else x
        x = sch.step(unet(inp, t).sample, t, x).prev_sample
    return x, sch


@pytest.mark.parametrize("name,steps", [
    ("sd2_v_ddim.json", 10), ("pixart_alpha_dpm.json", 8), ("sdxl_euler.json", 10),
    ("sd3_flow.json", 6), ("sd15_pndm.json", 10), ("sd15_unipc.json", 8),
    ("playground_v25_edm_dpm.json", 8), ("edm_euler_exponential.json", 8),
    ("zero_snr_v_ddim_trailing.json", 10),
])
def test_pydiff_loop_reproduces_the_diffusers_loop(name, steps):
    unet = _unet()
    spec = from_diffusers_config(CONFIGS / name)
    model = spec.denoiser(DiffusersNet(unet))
    grid = spec.grid(steps)
    x_T = _x_T()
    ref, sch = _diffusers_loop(name, unet, x_T.clone(), steps)
    # diffusers' sigma-based schedulers keep x / alpha (VE coordinates); pydiff keeps x
    start = x_T
    if spec.class_name == "EulerDiscreteScheduler":
        start = x_T * spec.schedule.alpha(grid[0]).float()
    with torch.no_grad():
        out = pydiff.sample(model, start, spec.solver(), grid=grid)
    if float(grid[-1]) > 0 and spec.class_name == "EulerDiscreteScheduler":
        out = out / spec.schedule.alpha(grid[-1]).float()
    assert out.abs().max() > 1e-3
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)


def test_class_conditional_unet_under_classifier_free_guidance():
    unet = _unet(classes=3)
    spec = from_diffusers_config(CONFIGS / "sd2_v_ddim.json")
    base = spec.denoiser(DiffusersNet(unet))
    labels = torch.tensor([1, 2])
    cfg = ClassifierFreeGuidance(base, scale=torch.tensor([2.0, 5.0]),
                                 uncond={"class_labels": torch.zeros(1, dtype=torch.long)})
    x, t = _x_T(), 0.7
    with torch.no_grad():
        v = cfg.v(x, t, class_labels=labels)
        v_c = base.v(x, t, class_labels=labels)
        v_u = base.v(x, t, class_labels=torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(v, v_u + torch.tensor([2.0, 5.0])[:, None, None, None] * (v_c - v_u),
                               atol=1e-5, rtol=1e-5)


def test_diffusers_net_learned_variance_and_errors():
    unet = _unet(channels=1, out_channels=2)  # mean and variance channels
    x = _x_T((1, 1, 8, 8))
    out = DiffusersNet(unet, learned_variance=True)(x, torch.tensor([10.0]))
    with torch.no_grad():
        torch.testing.assert_close(out, unet(x, 10.0).sample[:, :1])
    with pytest.raises(ValueError, match="learned_variance"):
        DiffusersNet(_unet(channels=2), learned_variance=True)(_x_T(), torch.tensor([1.0, 2.0]))
    unet = _unet(channels=2)
    with pytest.raises(ValueError, match="per-position"):
        DiffusersNet(unet)(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8))


def test_cross_attention_unet_conditioning_under_cfg():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = diffusers.UNet2DConditionModel(
            sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
            block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=8,
            attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    spec = from_diffusers_config(CONFIGS / "sdxl_euler.json")
    base = spec.denoiser(DiffusersNet(unet, rename={"context": "encoder_hidden_states"}))
    text = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    null = torch.zeros(1, 5, 8)
    cfg = ClassifierFreeGuidance(base, 7.5, uncond={"context": null}).bind(context=text)
    x = _x_T()
    with torch.no_grad():
        eps = cfg.eps(x, 0.6)
        e_c = base.eps(x, 0.6, context=text)
        e_u = base.eps(x, 0.6, context=null.expand(2, 5, 8))
        torch.testing.assert_close(eps, e_u + 7.5 * (e_c - e_u), atol=1e-5, rtol=1e-5)
        out = pydiff.sample(cfg, x, spec.solver(), grid=spec.grid(3))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("config,name,options", [
    ({"_class_name": "LMSDiscreteScheduler"}, "lms", {}),
    ({"_class_name": "KDPM2DiscreteScheduler"}, "dpm2", {"eta": 0.0}),
    ({"_class_name": "KDPM2AncestralDiscreteScheduler"}, "dpm2_ancestral", {"eta": 1.0}),
    ({"_class_name": "DEISMultistepScheduler", "solver_order": 3}, "deis", {"order": 3}),
    ({"_class_name": "PNDMScheduler"}, "plms", {"warmup": "prk"}),
    ({"_class_name": "PNDMScheduler", "skip_prk_steps": True}, "plms", {"warmup": "pseudo_heun"}),
])
def test_every_mapped_solver_exists(config, name, options):
    solver = from_diffusers_config(config).solver()
    assert solver.name == name
    for key, value in options.items():
        assert getattr(solver, key) == value, key


def test_pndm_with_runge_kutta_warmup_reproduces_the_diffusers_loop():
    # SD 1.5's PNDM config with the Runge-Kutta warm-up diffusers defaults to
    cfg = {**_load("sd15_pndm.json"), "skip_prk_steps": False}
    unet, x_T, steps = _unet(), _x_T(), 10
    sch = diffusers.PNDMScheduler.from_config(cfg)
    sch.set_timesteps(steps)
    ref = x_T.clone()
    with torch.no_grad():
        for t in sch.timesteps:
            ref = sch.step(unet(ref, t).sample, t, ref).prev_sample
        spec = from_diffusers_config(cfg)
        out = pydiff.sample(spec.denoiser(DiffusersNet(unet)), x_T, spec.solver(),
                            grid=spec.grid(steps))
    assert out.abs().max() > 1e-3
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)
