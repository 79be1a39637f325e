"""Medical image reconstruction (CT and MRI): forward operators with exact adjoints.

This first part of the domain holds the imaging physics, one object per operator in the deepinv
style (``A``, ``A_adjoint``, and ``fbp`` for CT): :class:`CTProjector` (parallel and fan beam,
any angles), :class:`MRIMask` and :class:`MRIOperator` (masked centred FFT, multi-coil),
the noise models :class:`GaussianNoise` and :class:`PoissonNoise`, and the modified
Shepp-Logan phantom; the classical baselines :func:`tv_reconstruct` (TV-PDHG, CS-TV),
:func:`cg_sense` and :func:`estimate_sensitivities`; and :class:`Reconstructor`, reconstruction
with the shipped diffusion prior (``dps``, ``projection``, ``dds``) or a baseline.

Example:
    >>> from pydiff.domains.medical import CTProjector, shepp_logan
    >>> ct = CTProjector(angles=180, size=64)
    >>> ct.fbp(ct.A(shepp_logan(64)[None, None])).shape
    torch.Size([1, 1, 64, 64])
"""

from .classical import cg_sense, estimate_sensitivities, tv_reconstruct
from .operators import (
    CTProjector,
    GaussianNoise,
    MRIMask,
    MRIOperator,
    PoissonNoise,
    coil_sensitivities,
    shepp_logan,
)
from .reconstructor import Reconstruction, Reconstructor

__all__ = ["CTProjector", "MRIMask", "MRIOperator", "GaussianNoise", "PoissonNoise",
           "coil_sensitivities", "shepp_logan", "Reconstructor", "Reconstruction",
           "tv_reconstruct", "cg_sense", "estimate_sensitivities"]
