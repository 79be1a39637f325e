"""Procedural anatomy-like 2D images: training data for image priors, made on the spot.

Each image is a cross-section drawn from a random recipe: a body outline (an ellipse with a
wobbly boundary and a skin/fat or skull rim), organs painted inside it (filled ellipses, rings
such as bones and vessels, dark air pockets, small lesions), a smooth multiplicative intensity
field (coil shading, beam hardening, tissue drift) and a fine band-limited texture. Edges are
anti-aliased over about one pixel. Values lie in ``[0, 1]`` with the background at 0.

Geometry is in relative units (the body spans the image at any size), so one recipe serves
any ``H x W``; texture has a minimum grain of about one pixel. Everything is drawn from a
``torch.Generator``: a seed fixes the images exactly.

- :func:`procedural_images`: ``n`` images ``[n, 1, H, W]`` from one generator.
- :class:`ProceduralImages`: a fixed, indexable data set (image ``i`` depends only on
  ``(seed, i)``), for ``torch.utils.data``, for :class:`pydiff.training.BatchLoader` via
  :meth:`ProceduralImages.tensor`, and endless resumable batches for the
  :class:`pydiff.training.Trainer` via :meth:`ProceduralImages.batches`.

Nothing here resembles a specific phantom (Shepp-Logan) or scan: priors trained on these images
can be evaluated on those.

Example:
    >>> import torch
    >>> from pydiff.training.procedural import ProceduralImages, procedural_images
    >>> x = procedural_images(4, 48, torch.Generator().manual_seed(0))
    >>> x.shape, bool(x.min() >= 0), bool(x.max() <= 1)
    (torch.Size([4, 1, 48, 48]), True, True)
    >>> data = ProceduralImages(100, size=(32, 40), seed=1)
    >>> torch.equal(data[7], ProceduralImages(100, size=(32, 40), seed=1)[7])
    True
    >>> next(iter(data.batches(8))).shape
    torch.Size([8, 1, 32, 40])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .data import SampledBatches

Tensor = torch.Tensor

__all__ = ["procedural_image", "procedural_images", "ProceduralImages"]


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        hw = (size, size)
    else:
        hw = tuple(int(s) for s in size)
        if len(hw) != 2:
            raise ValueError(f"size={size!r}; expected an int or (height, width)")
    if min(hw) < 8:
        raise ValueError(f"size={size!r}; images need at least 8 pixels per side")
    return hw  # type: ignore[return-value]


def _uniform(g: torch.Generator, lo: float, hi: float, n: int | None = None) -> Tensor | float:
    u = torch.rand(n if n is not None else 1, generator=g, dtype=torch.float64)
    v = lo + (hi - lo) * u
    return v if n is not None else float(v)


def _smooth_noise(g: torch.Generator, hw: tuple[int, int], cells: int) -> Tensor:
    """Zero-mean, unit-std noise varying over ``cells`` cells per side (bicubic upsampling)."""
    coarse = torch.randn(1, 1, cells + 3, cells + 3, generator=g)
    field = F.interpolate(coarse, size=(hw[0] + 2 * (hw[0] // cells + 1),
                                        hw[1] + 2 * (hw[1] // cells + 1)),
                          mode="bicubic", align_corners=False)
    oy, ox = (field.shape[2] - hw[0]) // 2, (field.shape[3] - hw[1]) // 2
    field = field[0, 0, oy:oy + hw[0], ox:ox + hw[1]]
    return (field - field.mean()) / field.std().clamp_min(1e-6)


def _texture(g: torch.Generator, hw: tuple[int, int], grain: float) -> Tensor:
    """Band-limited noise with a correlation length of ``grain`` pixels (Gaussian blur)."""
    noise = torch.randn(1, 1, *hw, generator=g)
    radius = max(1, int(math.ceil(2.5 * grain)))
    k = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (k / grain) ** 2)
    k = k / k.sum()
    noise = F.conv2d(F.pad(noise, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    noise = F.conv2d(F.pad(noise, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
    noise = noise[0, 0]
    return noise / noise.std().clamp_min(1e-6)


class _Canvas:
    """Pixel-centre coordinates in relative units: the shorter side spans ``[-1, 1]``."""

    def __init__(self, hw: tuple[int, int]):
        h, w = hw
        scale = min(h, w) / 2
        ys = (torch.arange(h, dtype=torch.float32) + 0.5 - h / 2) / scale
        xs = (torch.arange(w, dtype=torch.float32) + 0.5 - w / 2) / scale
        self.y, self.x = torch.meshgrid(ys, xs, indexing="ij")
        self.pixel = 1.0 / scale  # one pixel in relative units: the anti-aliasing width

    def ellipse(self, cx: float, cy: float, a: float, b: float, theta: float,
                wobble: Tensor | None = None) -> Tensor:
        """Soft indicator (``[0, 1]``, ramps over one pixel) of a rotated ellipse.

        ``wobble``: Fourier coefficients ``[K, 2]`` that perturb the radius with the angle.
        """
        c, s = math.cos(theta), math.sin(theta)
        u = (self.x - cx) * c + (self.y - cy) * s
        v = -(self.x - cx) * s + (self.y - cy) * c
        rho = torch.sqrt((u / a) ** 2 + (v / b) ** 2)
        boundary = torch.ones_like(rho)
        if wobble is not None:
            phi = torch.atan2(v / b, u / a)
            for k, (ca, sa) in enumerate(wobble.tolist(), start=2):
                boundary = boundary + ca * torch.cos(k * phi) + sa * torch.sin(k * phi)
        # distance to the boundary, approximately, in relative units along the minor axis
        dist = (boundary - rho) * min(a, b)
        return (0.5 + dist / self.pixel).clamp(0.0, 1.0)


def procedural_image(size: int | Sequence[int], generator: torch.Generator | None = None
                     ) -> Tensor:
    """One anatomy-like image ``[1, H, W]`` in ``[0, 1]`` (see the module docstring).

    Args:
        size: ``H`` (square) or ``(H, W)``, at least 8.
        generator: the random stream (default: a fresh unseeded one).

    Example:
        >>> img = procedural_image(64, torch.Generator().manual_seed(3))
        >>> img.shape, float(img[0, 0, 0])          # the corners are background
        (torch.Size([1, 64, 64]), 0.0)
    """
    hw = _size(size)
    g = generator if generator is not None else torch.Generator().manual_seed(
        int(torch.randint(0, 2**62, (1,))))
    canvas = _Canvas(hw)
    aspect_x, aspect_y = hw[1] / min(hw), hw[0] / min(hw)

    # Body: a large ellipse with a wobbly outline, a soft-tissue base and a rim.
    head = _uniform(g, 0, 1) < 0.3  # round with a bright skull rim, else a trunk with fat
    a = _uniform(g, 0.72, 0.92) * aspect_x
    b = (a * _uniform(g, 0.85, 1.0)) if head else _uniform(g, 0.5, 0.8) * aspect_y
    theta = _uniform(g, -0.25, 0.25)
    cx, cy = _uniform(g, -0.05, 0.05), _uniform(g, -0.05, 0.05)
    wobble = torch.randn(3, 2, generator=g) * torch.tensor([[0.02], [0.015], [0.01]])
    body = canvas.ellipse(cx, cy, a, b, theta, wobble)
    thickness = _uniform(g, 0.06, 0.12) if head else _uniform(g, 0.03, 0.1)
    inner = canvas.ellipse(cx, cy, a - thickness, b - thickness, theta, wobble)
    tissue = _uniform(g, 0.3, 0.55)
    rim = _uniform(g, 0.8, 1.0) if head else _uniform(g, 0.1, 0.3)
    img = body * (rim * (1 - inner) + tissue * inner)

    # Organs inside the body, painted back to front (later ones cover earlier ones).
    organs = int(torch.randint(3, 11, (1,), generator=g))
    for _ in range(organs):
        kind = _uniform(g, 0, 1)
        r = math.sqrt(_uniform(g, 0, 1)) * 0.65
        phi = _uniform(g, 0, 2 * math.pi)
        ox, oy = cx + r * (a - thickness) * math.cos(phi), cy + r * (b - thickness) * math.sin(phi)
        oa = _uniform(g, 0.04, 0.3) * min(a, b)
        ob = oa * _uniform(g, 0.4, 1.0)
        ot = _uniform(g, 0, math.pi)
        shape = canvas.ellipse(ox, oy, oa, ob, ot,
                               torch.randn(2, 2, generator=g) * 0.04) * inner
        if kind < 0.15:  # air pocket (lung, bowel gas)
            value = _uniform(g, 0.0, 0.1)
        elif kind < 0.3:  # ring: bone cortex or vessel wall around marrow/lumen
            value = _uniform(g, 0.75, 1.0)
            core = canvas.ellipse(ox, oy, oa * _uniform(g, 0.5, 0.8), ob * _uniform(g, 0.5, 0.8),
                                  ot)
            img = img * (1 - shape) + value * shape
            shape, value = core * shape, _uniform(g, 0.2, 0.6)
        else:  # soft-tissue organ
            value = min(1.0, max(0.0, tissue + _uniform(g, -0.3, 0.35)))
        img = img * (1 - shape) + value * shape

    lesions = int(torch.randint(0, 4, (1,), generator=g))
    for _ in range(lesions):  # small, low-contrast features the prior must not erase
        r = math.sqrt(_uniform(g, 0, 1)) * 0.7
        phi = _uniform(g, 0, 2 * math.pi)
        la = _uniform(g, 0.015, 0.06)
        spot = canvas.ellipse(cx + r * a * math.cos(phi), cy + r * b * math.sin(phi), la,
                              la * _uniform(g, 0.6, 1.0), _uniform(g, 0, math.pi)) * inner
        img = img + _uniform(g, -0.12, 0.12) * spot

    # Smooth intensity field and fine texture, inside the body only.
    shading = 1 + _uniform(g, 0.0, 0.15) * _smooth_noise(g, hw, int(torch.randint(2, 5, (1,),
                                                                                   generator=g)))
    grain = max(0.7, _uniform(g, 0.005, 0.02) * min(hw))
    texture = _uniform(g, 0.0, 0.04) * _texture(g, hw, grain)
    img = (img * shading + texture * body) * body
    return img.clamp(0.0, 1.0).unsqueeze(0)


def procedural_images(n: int, size: int | Sequence[int],
                      generator: torch.Generator | None = None) -> Tensor:
    """``n`` procedural images ``[n, 1, H, W]`` drawn one after another from ``generator``.

    Example:
        >>> procedural_images(2, (16, 24), torch.Generator().manual_seed(0)).shape
        torch.Size([2, 1, 16, 24])
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return torch.stack([procedural_image(size, generator) for _ in range(n)])


class ProceduralImages(torch.utils.data.Dataset):
    """A fixed set of ``length`` procedural images; image ``i`` depends only on ``(seed, i)``.

    Args:
        length: number of images.
        size: ``H`` or ``(H, W)``.
        seed: the set's seed (different seeds give disjoint-looking sets).

    Example:
        >>> data = ProceduralImages(10, size=32, seed=0)
        >>> len(data), data[3].shape, data.tensor().shape
        (10, torch.Size([1, 32, 32]), torch.Size([10, 1, 32, 32]))
    """

    def __init__(self, length: int, size: int | Sequence[int] = 64, seed: int = 0):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.length, self.size, self.seed = int(length), _size(size), int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tensor:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        index %= self.length
        # a large odd multiplier keeps (seed, index) pairs from colliding for any sane sizes
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return procedural_image(self.size, g)

    def tensor(self) -> Tensor:
        """All images stacked ``[length, 1, H, W]`` (for :class:`pydiff.training.BatchLoader`)."""
        return torch.stack([self[i] for i in range(self.length)])

    def batches(self, batch_size: int, rank: int | None = None) -> SampledBatches:
        """Endless fresh batches ``[batch_size, 1, H, W]`` for the Trainer (resumable).

        The images are new draws (not the ``length`` indexed ones): an unlimited training
        stream, seeded by ``seed`` and the data-parallel rank.
        """
        size = self.size
        return SampledBatches(lambda n, g: procedural_images(n, size, g), batch_size,
                              seed=self.seed, rank=rank)

    def __repr__(self) -> str:
        return f"ProceduralImages(length={self.length}, size={self.size}, seed={self.seed})"
