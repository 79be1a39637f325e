"""Medical image reconstruction (CT and MRI): forward operators with exact adjoints.

This first part of the domain holds the imaging physics, one object per operator in the deepinv
style (``A``, ``A_adjoint``, and ``fbp`` for CT): :class:`CTProjector` (parallel and fan beam,
any angles), :class:`MRIMask` and :class:`MRIOperator` (masked centred FFT, multi-coil),
the noise models :class:`GaussianNoise` and :class:`PoissonNoise`, and the modified
Shepp-Logan phantom. Reconstruction methods, priors and the batch command come next.

Example:
    >>> from pydiff.domains.medical import CTProjector, shepp_logan
    >>> ct = CTProjector(angles=180, size=64)
    >>> ct.fbp(ct.A(shepp_logan(64)[None, None])).shape
    torch.Size([1, 1, 64, 64])
"""

from .operators import (
    CTProjector,
    GaussianNoise,
    MRIMask,
    MRIOperator,
    PoissonNoise,
    coil_sensitivities,
    shepp_logan,
)

__all__ = ["CTProjector", "MRIMask", "MRIOperator", "GaussianNoise", "PoissonNoise",
           "coil_sensitivities", "shepp_logan"]
