import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# CPU Philox normals on the eager path unless the caller chose one: the suite's numbers then do not
# depend on whether this machine has a C compiler (the compiled path has tests of its own, which
# build it into a temporary directory)
os.environ.setdefault("SDESOLVE_NOISE", "eager")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
