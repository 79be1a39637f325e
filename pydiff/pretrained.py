"""``save_pretrained`` / ``from_pretrained``: a model as a folder of safetensors weights + JSON.

A pretrained folder holds

- ``model.safetensors``: the network's ``state_dict`` (shared tensors handled by safetensors);
- ``config.json``: ``{"format": "pydiff", "format_version": 1, "net": {"class": "module:Name",
  "config": {...}}, "denoiser": {prediction, precond, time_input, ...}, "schedule": {...},
  "metadata": {...}}``: what rebuilds the network (``Class(**config)``), the Denoiser and its
  schedule without any code from the user.

Networks carry their constructor kwargs in a ``config`` dict (every top-level network in
:mod:`pydiff.nn` does) or the caller passes ``net_config``. Loading imports the class only from
trusted module prefixes (``pydiff`` by default, which includes ``pydiff.domains``); anything
else needs ``trust_modules`` or a ``factory(class_path, config) -> nn.Module``.

Loading fails clearly on a folder written by a newer pydiff (higher format version) and on
folders that are not pydiff checkpoints (e.g. a diffusers model).

Example:
    >>> import tempfile, torch, pydiff
    >>> from pydiff.pretrained import from_pretrained, save_pretrained
    >>> from pydiff.training.toy import ToyMLP
    >>> model = pydiff.Denoiser(ToyMLP(dim=2, hidden=16), pydiff.VPSchedule(), prediction="eps")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = save_pretrained(model, d)
    ...     loaded = from_pretrained(d)
    >>> loaded.prediction, type(loaded.net).__name__
    ('eps', 'ToyMLP')
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from .denoiser import Denoiser
from .errors import InputError
from .files import atomic_output_dir
from .schedules import schedule_from_config

FORMAT = "pydiff"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
           "float16": torch.float16}


class CheckpointError(InputError):
    """A folder that is not a loadable pydiff checkpoint (foreign, newer, or incomplete)."""


def _class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _net_config(net: nn.Module, net_config: dict[str, Any] | None) -> dict[str, Any]:
    config = net_config if net_config is not None else getattr(net, "config", None)
    if not isinstance(config, dict):
        raise ValueError(f"cannot save {type(net).__name__}: it has no `config` dict of its "
                         "constructor kwargs; pass net_config={...} so from_pretrained can "
                         "rebuild it as Class(**net_config)")
    try:
        json.dumps(config)
    except TypeError as e:
        raise ValueError(f"net_config of {type(net).__name__} is not JSON-serializable: {e}") from e
    return config


def save_pretrained(model: Denoiser | nn.Module, path: str | os.PathLike, *,
                    net_config: dict[str, Any] | None = None,
                    metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a Denoiser around an ``nn.Module``, or a bare module) to folder ``path``.

    The files are written to a temporary folder and moved into place once both are complete
    (:func:`pydiff.files.atomic_output_dir`), so an interrupted save never leaves a half-written
    checkpoint; other files in ``path`` stay. Conditioning bound with ``Denoiser.bind`` is not
    saved. Returns the folder.
    """
    path = Path(path)
    net = model.net if isinstance(model, Denoiser) else model
    if not isinstance(net, nn.Module):
        raise TypeError(f"save_pretrained needs an nn.Module network, got {type(net).__name__} "
                        "(a plain function has no weights to save)")
    config: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "pydiff_version": _version(),
        "net": {"class": _class_path(net), "config": _net_config(net, net_config)},
        "metadata": dict(metadata or {}),
    }
    if isinstance(model, Denoiser):
        if callable(model.time_input):
            raise ValueError("cannot save a Denoiser with a callable time_input: use one of "
                             "'t', 'index', 'scaled', 'log_sigma', 'sigma'")
        config["denoiser"] = {
            "prediction": model.prediction, "precond": model.precond,
            "time_input": model.time_input, "time_scale": model.time_scale,
            "sigma_data": model.sigma_data, "mean_key": model.mean_key,
            "dtype": None if model.dtype is None else str(model.dtype).removeprefix("torch."),
        }
        config["schedule"] = model.schedule.config()
    with atomic_output_dir(path, "checkpoint folder") as tmp:
        save_model(net, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return path


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``config.json`` of a pretrained folder (see the module docstring)."""
    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        found = sorted(p.name for p in path.iterdir())[:10] if path.is_dir() else []
        raise CheckpointError(f"{path} is not a pydiff checkpoint: no {CONFIG_NAME} "
                              f"(found {found if path.is_dir() else 'no such folder'})")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        hint = ""
        if isinstance(config, dict) and "_class_name" in config:
            hint = (f" (it looks like a diffusers {config['_class_name']} config; wrap diffusers "
                    "models with pydiff's interop instead)")
        raise CheckpointError(f"{cfg_file} is not a pydiff checkpoint: expected "
                              f"\"format\": \"{FORMAT}\", got "
                              f"{config.get('format') if isinstance(config, dict) else config!r}"
                              f"{hint}")
    version = config.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{cfg_file} has format_version={version!r}; expected an int >= 1")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written with pydiff checkpoint format_version={version} (by pydiff "
            f"{config.get('pydiff_version', '?')}), newer than the format_version="
            f"{FORMAT_VERSION} this pydiff {_version()} reads: upgrade pydiff")
    if "net" not in config or "class" not in config["net"]:
        raise CheckpointError(f"{cfg_file} lacks the net class (\"net\": {{\"class\": ...}})")
    return config


def _import_class(class_path: str, trust_modules: Sequence[str]) -> type:
    module_name, _, qualname = class_path.partition(":")
    if not any(module_name == m or module_name.startswith(m + ".") for m in trust_modules):
        raise CheckpointError(
            f"the checkpoint's net class {class_path!r} is outside the trusted modules "
            f"{list(trust_modules)}: pass trust_modules=[..., {module_name.split('.')[0]!r}] "
            "or factory=lambda class_path, config: MyNet(**config)")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(f"cannot import the checkpoint's net class {class_path!r}: {e}") \
            from e
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise CheckpointError(f"{class_path!r} is not an nn.Module class")
    return obj


def from_pretrained(path: str | os.PathLike, *,
                    factory: Callable[[str, dict[str, Any]], nn.Module] | None = None,
                    trust_modules: Sequence[str] = ("pydiff",),
                    device: torch.device | str = "cpu") -> Denoiser | nn.Module:
    """Rebuild what :func:`save_pretrained` wrote: a Denoiser (or the bare module).

    Args:
        path: the folder.
        factory: ``factory(class_path, config) -> nn.Module`` instead of importing the class.
        trust_modules: module prefixes whose classes may be imported from the config.
        device: where the weights go.
    """
    path = Path(path)
    config = load_config(path)
    net_cfg = config["net"]
    kwargs = net_cfg.get("config", {})
    if factory is not None:
        net = factory(net_cfg["class"], dict(kwargs))
        if not isinstance(net, nn.Module):
            raise TypeError(f"factory returned {type(net).__name__}, expected an nn.Module")
    else:
        net = _import_class(net_cfg["class"], trust_modules)(**kwargs)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{path} has {CONFIG_NAME} but no {WEIGHTS_NAME}")
    missing, unexpected = load_model(net, weights, strict=False, device=str(device))
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match {net_cfg['class']}: missing "
                              f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    net.to(device).eval()
    if "denoiser" not in config:
        return net
    d = dict(config["denoiser"])
    dtype = d.pop("dtype", None)
    if dtype is not None and dtype not in _DTYPES:
        raise CheckpointError(f"unknown denoiser dtype {dtype!r} in {path / CONFIG_NAME}")
    return Denoiser(net, schedule_from_config(config["schedule"]),
                    dtype=None if dtype is None else _DTYPES[dtype], **d)


def _version() -> str:
    from . import __version__
    return __version__


__all__ = ["save_pretrained", "from_pretrained", "load_config", "CheckpointError",
           "FORMAT_VERSION"]
