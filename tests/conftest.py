"""Test-wide settings: one intra-op thread.

The tests use small tensors, where torch's thread pool costs more than it saves, and on a loaded
2-core CI machine spinning threads slow the suite several-fold.
"""

import torch

torch.set_num_threads(1)
