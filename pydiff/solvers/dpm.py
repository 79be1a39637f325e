"""DPM-Solver family: exponential integrators in log-SNR (Lu et al. 2022; Gonzalez et al.).

With ``lambda = log(alpha / sigma)`` and ``h = lambda_s - lambda_t > 0`` for a step from ``t`` to
``s``, the probability-flow ODE has the exact solutions

- data prediction ``D``:  ``x_s = (sigma_s/sigma_t) x_t + sigma_s int e^{lambda} D dlambda``,
- noise prediction ``eps``: ``x_s = (alpha_s/alpha_t) x_t - alpha_s int e^{-lambda} eps dlambda``,

and a Taylor expansion of the model output in ``lambda`` leaves the integrals of
``e^{+-u} u^k / k!``, the functions ``E_k`` of :func:`phi` (computed with ``expm1``, exact for
small h). The SDE variants (``eta > 0``) add the exactly integrated noise of the reverse SDE:
for data prediction ``x_s = (sigma_s/sigma_t) e^{-eta h} x_t + ... + sigma_s sqrt(1 - e^{-2 eta h})
z`` (DPM-Solver++(2M) SDE, k-diffusion's ``eta``), for noise prediction the factor ``1 + eta^2``
on the model terms and noise ``eta sigma_s sqrt(e^{2h} - 1) z`` (SDE-DPM-Solver).

Multistep solvers replace derivatives by divided differences of stored outputs (diffusers'
``DPMSolverMultistepScheduler``: "midpoint" or "heun" second-order forms, its third order);
singlestep solvers evaluate the model at intermediate log-SNRs (DPM-Solver-2/3).
The mean-reverting sampler (MR Sampler) is the same integrator in the shifted coordinate
``x - y`` of a :class:`~pydiff.schedules.MeanRevertingSchedule`.
"""

from __future__ import annotations

import torch

from ..schedules import Schedule
from .base import Solver, SolverState, check_noise, combine, step_index

Tensor = torch.Tensor
ALGORITHMS = ("dpmsolver++", "dpmsolver")


def phi(h: Tensor, k: int, algorithm: str) -> Tensor:
    """``E_k(h)``: the integral of ``u^k / k!`` against the integrator's exponential weight.

    Data prediction (``dpmsolver++``): ``E_0 = 1 - e^{-h}``, ``E_1 = h - E_0``,
    ``E_2 = h^2/2 - E_1``. Noise prediction (``dpmsolver``): ``E_k = e^h - sum_{j<=k} h^j/j!``.
    """
    data = algorithm == "dpmsolver++"
    e = -torch.expm1(-h) if data else torch.expm1(h)
    fact = 1.0
    for j in range(1, k + 1):
        fact *= j
        e = h**j / fact - e if data else e - h**j / fact
    return e


def _check(algorithm: str, order: int, max_order: int) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if order not in range(1, max_order + 1):
        raise ValueError(f"order must be 1..{max_order}, got {order!r}")


class _ExpIntegrator(Solver):
    """Shared pieces: the model output in the solver's parameterization, step transfer terms."""

    algorithm: str = "dpmsolver++"

    def output(self, model, state: SolverState, x=None, at=None):
        """``D`` (data prediction) or ``eps`` (noise prediction) at ``x`` and ``at``."""
        if self.algorithm == "dpmsolver++":
            return self.evaluate(model, state, x, at)
        return self.predict(model, state, x, at)[1]

    def transfer(self, a_t: Tensor, s_t: Tensor, a_s: Tensor, s_s: Tensor, h: Tensor):
        """``(base, scale)``: ``x_s = base x_t + scale * sum_k E_k(h) m^(k)`` (ODE)."""
        if self.algorithm == "dpmsolver++":
            return s_s / s_t, a_s
        return a_s / a_t, -s_s


class DPMSolverMultistep(_ExpIntegrator):
    """Multistep DPM-Solver / DPM-Solver++ of order 1-3, ODE or SDE (``eta``).

    Args:
        order: 1, 2 or 3 (the first steps use lower orders until enough history exists).
        algorithm: ``"dpmsolver++"`` (data prediction) or ``"dpmsolver"`` (noise prediction).
        solver_type: ``"midpoint"`` or ``"heun"`` form of the second-order term (diffusers).
        eta: SDE strength; 0 is the ODE. Noise prediction supports 0 and 1 only.
        lower_order_final: first order on the last step and at most second order on the one
            before in runs shorter than 15 steps (diffusers' default). A step to ``sigma = 0``
            is first order anyway (``D`` itself for data prediction).
        noise: ``"gaussian"`` or ``"brownian"`` (see :mod:`pydiff.solvers.brownian`).

    Example:
        >>> solver = DPMSolverMultistep(order=3)
    """

    name = "dpm_multistep"
    order = 2
    default_spacing = "logsnr"

    def __init__(self, order: int = 2, algorithm: str = "dpmsolver++",
                 solver_type: str = "midpoint", eta: float = 0.0,
                 lower_order_final: bool = True, noise: str = "gaussian"):
        _check(algorithm, order, 3)
        if solver_type not in ("midpoint", "heun"):
            raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
        if eta < 0 or (algorithm == "dpmsolver" and eta not in (0, 1)):
            raise ValueError(f"eta must be >= 0 (0 or 1 for algorithm='dpmsolver'), got {eta}")
        self.order = int(order)  # type: ignore[misc]
        self.algorithm, self.solver_type = algorithm, solver_type
        self.eta = float(eta)
        self.lower_order_final = bool(lower_order_final)
        self.brownian = check_noise(noise) and self.eta > 0
        self._freeze()

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta > 0

    def step_orders(self, sigma: Tensor) -> Tensor:
        """``[N, 1, ...]`` order used by each step (warm-up, final and zero-sigma steps lower)."""
        n = sigma.shape[0] - 1
        i = step_index(sigma[1:])
        o = torch.clamp(i + 1, max=self.order)
        if self.lower_order_final and n < 15:
            o = torch.where(i == n - 1, 1.0, o)
            o = torch.where(i == n - 2, torch.clamp(o, max=2), o)
        return torch.where(sigma[1:] == 0, 1.0, o)

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        a_t, s_t, a_s, s_s = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
        lam = torch.log(alpha) - torch.log(sigma)
        h = lam[1:] - lam[:-1]
        nan = torch.full_like(h[:1], float("nan"))
        r0 = torch.cat([nan, h[:-1]]) / h
        r1 = torch.cat([nan, nan, h[:-2]])[: h.shape[0]] / h
        eta, data = self.eta, self.algorithm == "dpmsolver++"
        if data and eta == 0:  # the ODE; kept apart because 0 * inf is NaN where alpha_t = 0
            hh, base, scale, z = h, s_s / s_t, a_s, torch.zeros_like(h)
        elif data:
            hh = (1 + eta) * h  # the SDE's exact linear part shortens the step
            base, scale = s_s / s_t * torch.exp(-eta * h), a_s
            z = s_s * torch.sqrt(-torch.expm1(-2 * eta * h))
        else:
            hh = h
            base, scale = a_s / a_t, -(1 + eta**2) * s_s
            z = eta * s_s * torch.sqrt(torch.expm1(2 * h))
        c0 = scale * phi(hh, 0, self.algorithm)
        c1 = scale * phi(hh, 1, self.algorithm) / hh
        c2 = scale * phi(hh, 2, self.algorithm) / hh**2
        if self.solver_type == "midpoint":
            c1_2 = 0.5 * c0  # diffusers' "midpoint" second-order term
        else:
            c1_2 = c1
        o = self.step_orders(sigma)
        # second order: D1 = (m0 - m1) / r0
        w2 = (c0 + c1_2 / r0, -c1_2 / r0, torch.zeros_like(h))
        # third order (diffusers' DPMSolverMultistepScheduler): D1, D2 from two differences
        big_a = c1 * (1 + r0 / (r0 + r1)) + c2 / (r0 + r1)
        big_b = -c1 * r0 / (r0 + r1) - c2 / (r0 + r1)
        w3 = (c0 + big_a / r0, -big_a / r0 + big_b / r1, -big_b / r1)
        zero = torch.zeros_like(h)
        w = [torch.where(o == 1, c0 if k == 0 else zero, torch.where(o == 2, w2[k], w3[k]))
             for k in range(3)]
        final = s_s == 0  # a step to clean data: x_s = D (first-order limit, no noise)
        if data:
            base = torch.where(final, 0.0, base)
            w[0] = torch.where(final, a_s, w[0])
        else:
            base = torch.where(final, a_s / a_t, base)
            w[0] = torch.where(final, -a_s * s_t / a_t, w[0])
        w[1], w[2] = torch.where(final, 0.0, w[1]), torch.where(final, 0.0, w[2])
        return {"x": base, "m0": w[0], "m1": w[1], "m2": w[2], "z": torch.where(final, 0.0, z)}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        m = self.output(model, state)
        old = state.history
        prev = [old[k] if k < len(old) else m for k in (0, 1)]  # unused slots weigh 0
        terms, coeffs = [state.x, m], [c["x"], c["m0"]]
        if self.order >= 2:
            terms.append(prev[0])
            coeffs.append(c["m1"])
        if self.order >= 3:
            terms.append(prev[1])
            coeffs.append(c["m2"])
        # m (x0 or eps) is written for the history in the same pass as the step
        if self.eta > 0:
            x, m = combine(terms, coeffs, self.noise(state), c["z"], keep=m)
        else:
            x, m = combine(terms, coeffs, keep=m)
        return self.advance(state, x, history=(m, *old)[: self.order])


class DPMSolverPP2M(DPMSolverMultistep):
    """DPM-Solver++(2M) (diffusers' default ``DPMSolverMultistepScheduler``).

    Step 0 is first order (no history yet); a step to ``sigma = 0``, and the last step of runs
    shorter than 15 steps when ``lower_order_final`` (diffusers' default), are first order too.

    Example:
        >>> solver = DPMSolverPP2M()
    """

    name = "dpmpp_2m"

    def __init__(self, lower_order_final: bool = True, solver_type: str = "midpoint"):
        super().__init__(order=2, solver_type=solver_type, lower_order_final=lower_order_final)


class DPMSolverPP3M(DPMSolverMultistep):
    """DPM-Solver++(3M): third-order multistep in data prediction.

    Example:
        >>> solver = DPMSolverPP3M()
    """

    name = "dpmpp_3m"
    order = 3

    def __init__(self, lower_order_final: bool = True):
        super().__init__(order=3, lower_order_final=lower_order_final)


class DPMSolverPP2MSDE(DPMSolverMultistep):
    """DPM-Solver++(2M) SDE (diffusers' ``sde-dpmsolver++``, k-diffusion's ``dpmpp_2m_sde``).

    Example:
        >>> solver = DPMSolverPP2MSDE(eta=1.0, noise="brownian")
    """

    name = "dpmpp_2m_sde"

    def __init__(self, eta: float = 1.0, solver_type: str = "midpoint",
                 lower_order_final: bool = True, noise: str = "gaussian"):
        if eta <= 0:
            raise ValueError(f"eta must be > 0 for the SDE solver, got {eta}")
        super().__init__(order=2, eta=eta, solver_type=solver_type,
                         lower_order_final=lower_order_final, noise=noise)


class MRSampler(DPMSolverMultistep):
    """MR Sampler (Li et al. 2024) for mean-reverting SDEs, ODE or SDE form.

    Runs in the shifted coordinate ``x - y`` of a mean-reverting schedule (the Denoiser and
    :func:`pydiff.sample` shift by the bound ``y``), where the process is an ordinary
    ``alpha/sigma`` process and the MR Sampler's semi-analytic solutions are the exponential
    integrators above.

    Args:
        form: ``"ode"`` (probability flow) or ``"sde"`` (reverse SDE, exact noise integral).
        prediction: ``"data"`` or ``"noise"``: the parameterization the integrator expands.
            A network trained on velocity (or anything else) is converted by the Denoiser; the
            paper's velocity-prediction variant is the data form applied to that conversion.
        order: 1 or 2 (multistep); 3 for the ODE form.
        solver_type: ``"heun"`` (the MR Sampler paper's second-order terms, default) or
            ``"midpoint"``.

    Example:
        >>> solver = MRSampler(form="sde", prediction="data", order=2)
    """

    name = "mr_sampler"

    def __init__(self, form: str = "ode", prediction: str = "data", order: int = 2,
                 noise: str = "gaussian", lower_order_final: bool = True,
                 solver_type: str = "heun"):
        if form not in ("ode", "sde"):
            raise ValueError(f"form must be 'ode' or 'sde', got {form!r}")
        if prediction not in ("data", "noise"):
            raise ValueError(f"prediction must be 'data' or 'noise', got {prediction!r}")
        if form == "sde" and order > 2:
            raise ValueError(f"the SDE form supports order 1 or 2, got {order}")
        super().__init__(order=order, eta=1.0 if form == "sde" else 0.0, noise=noise,
                         algorithm="dpmsolver++" if prediction == "data" else "dpmsolver",
                         lower_order_final=lower_order_final, solver_type=solver_type)


class DPMSolverSinglestep(_ExpIntegrator):
    """DPM-Solver-1/2/3 (singlestep): each grid step evaluates the model ``order`` times.

    Intermediate points sit at ``lambda_t + r h`` (``r = 1/2`` for order 2; ``1/3, 2/3`` for
    order 3), as in Lu et al.'s DPM-Solver-2 and -3 (and DPM-Solver++(2S)/(3S) in data
    prediction). A step to ``sigma = 0`` is first order.

    Example:
        >>> solver = DPMSolverSinglestep(order=3, algorithm="dpmsolver")
    """

    name = "dpm_solver"
    order = 3
    default_spacing = "logsnr"

    def __init__(self, order: int = 3, algorithm: str = "dpmsolver++"):
        _check(algorithm, order, 3)
        self.order = int(order)  # type: ignore[misc]
        self.algorithm = algorithm
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        a_t, s_t, a_s, s_s = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
        lam = torch.log(alpha) - torch.log(sigma)
        lam_t, h = lam[:-1], lam[1:] - lam[:-1]
        alg = self.algorithm
        base, scale = self.transfer(a_t, s_t, a_s, s_s, h)
        final = s_s == 0
        e0 = scale * phi(h, 0, alg)
        if alg == "dpmsolver":  # sigma_s (e^h - 1) written to stay finite at sigma_s = 0
            e0 = -a_s * s_t / a_t * -torch.expm1(-h)
        out = {"x": base, "m": e0}
        if self.order == 1:
            return out
        rs = (0.5,) if self.order == 2 else (1 / 3, 2 / 3)
        lam_mid = lam_t + h * torch.tensor(rs, dtype=h.dtype, device=h.device).reshape(
            -1, *([1] * h.dim()))
        safe = torch.where(final, lam_t + 1.0, lam_mid)  # unused on final steps
        t_u = schedule.t_from_log_snr(safe)
        a_u, s_u = schedule.alpha(t_u), schedule.sigma(t_u)
        for k, r in enumerate(rs):
            b_u, sc_u = self.transfer(a_t, s_t, a_u[k], s_u[k], r * h)
            out[f"t_u{k}"] = t_u[k]
            out[f"u{k}_x"], out[f"u{k}_m"] = b_u, sc_u * phi(r * h, 0, alg)
        zero = torch.zeros_like(h)
        if self.order == 2:  # x_s = base x + scale E_0 (m_t + (m_u - m_t) / (2 r)), r = 1/2
            out["m"] = torch.where(final, e0, zero)
            out["m_u1"] = torch.where(final, zero, e0)
            return out
        r1, r2 = rs
        # second stage: u2 = b x + S E_0(r2 h) m_t + S E_1(r2 h) / (r1 h) (m_u1 - m_t)
        _, sc_u2 = self.transfer(a_t, s_t, a_u[1], s_u[1], r2 * h)
        d = sc_u2 * phi(r2 * h, 1, alg) / (r1 * h)
        out["u1_m"], out["u1_mu0"] = out["u1_m"] - d, d
        # final: x_s = b x + S E_0(h) m_t + S E_1(h) / (r2 h) (m_u2 - m_t)
        d = torch.where(final, zero, scale * phi(h, 1, alg) / (r2 * h))
        out["m"], out["m_u1"] = e0 - d, d
        return out

    def step_flags(self, schedule, grid, sigma):
        s_next = sigma[1:].reshape(sigma.shape[0] - 1, -1)
        return {"stages": tuple(bool(v) for v in (s_next > 0).all(dim=1).tolist())}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        m = self.output(model, state)
        if self.order == 1 or not state.flags["stages"][state.i]:
            return self.advance(state, combine([state.x, m], [c["x"], c["m"]]))
        u = combine([state.x, m], [c["u0_x"], c["u0_m"]])
        m_u = self.output(model, state, u, c["t_u0"])
        if self.order == 3:
            u = combine([state.x, m, m_u], [c["u1_x"], c["u1_m"], c["u1_mu0"]])
            m_u = self.output(model, state, u, c["t_u1"])
        x = combine([state.x, m, m_u], [c["x"], c["m"], c["m_u1"]])
        return self.advance(state, x, nfe=self.order)
