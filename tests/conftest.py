"""Test-wide settings: one intra-op thread.

The tests use small tensors, where torch's thread pool costs more than it saves, and on a loaded
2-core CI machine spinning threads slow the suite several-fold.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def num_threads(request):
    """Intra-op threads for one test (indirect parametrization), restored afterwards: the
    kernels' multi-threaded paths (chunk splitting, per-thread store fences) need tests too."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)
