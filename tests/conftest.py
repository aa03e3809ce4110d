"""Suite-wide settings: one intra-op thread per test process.

The suite starts worker processes (rollouts, data generation, DDP); with two cores, torch's default two
OpenMP threads per process then contend and run up to 10x slower, so each process keeps to one.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_check_finite():
    """A test that turns on the process-wide non-finite check (e.g. through train.check_finite) must not leak it."""
    from vlafoundry.nn import check_finite_enabled, set_check_finite

    before = check_finite_enabled()
    yield
    set_check_finite(before)
