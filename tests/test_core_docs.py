"""The docstring examples of the core modules run and hold."""

import doctest
import importlib

import pytest

CORE_MODULES = ["pydiff", "pydiff.noise", "pydiff.sampling", "pydiff.grids", "pydiff.schedules",
                "pydiff.denoiser", "pydiff.model", "pydiff.hooks", "pydiff.testing",
                "pydiff.testing.convergence", "pydiff.solvers.resampling",
                "pydiff.training.procedural", "pydiff.training.image_prior",
                "pydiff.distributed", "pydiff.solvers.consistency",
                "pydiff.training.distill", "pydiff.training.toy_distill",
                "pydiff.categorical", "pydiff.accel", "pydiff.accel.deepcache",
                "pydiff.accel.streams", "pydiff.guidance.variational", "pydiff.parallel",
                "pydiff.parallel.patch", "pydiff.parallel.model",
                "pydiff.guidance.svdd", "pydiff.guidance.refine", "pydiff.training.data",
                "pydiff.guidance.superdiff", "pydiff.guidance.tv"]


@pytest.mark.parametrize("module", CORE_MODULES)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
