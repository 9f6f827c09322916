"""The kernels run on PyTorch's own OpenMP threads (r2b.packed.parallel)."""

import pytest
import torch

from r2b.packed.parallel import launch_info, openmp_entry_points


def test_kernels_use_pytorchs_openmp_runtime():
    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this PyTorch does not run on OpenMP")
    par, tid = openmp_entry_points()
    assert par and tid
    assert launch_info(123)[3] == torch.get_num_threads()
