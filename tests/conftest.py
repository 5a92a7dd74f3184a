"""Suite-wide test set-up: torch runs with one intra-op thread for the whole test session.

Why one thread.  The tests work on small tensors ([B, 2] toys, MLPs of width <= 128, batches of a
few hundred), where intra-op threads gain little: most element-wise ops stay below torch's
parallel grain size (32 768 elements) anyway.  What extra threads do cost is OpenMP spin-waiting
when the cores are already busy (a shared 2-core CI runner, pytest-xdist workers, several jobs on
one machine).  Measured on the shared 2-core development machine at load average ~7.5, with
only torch's thread count changed: tests/test_likelihood.py took 30 s wall / 11 s CPU with 1
thread and 152 s wall / 60 s CPU with 2 (and test_metrics + test_samplers_targets +
test_likelihood under OMP_NUM_THREADS=1 vs 2: 77 s vs 634 s wall).  On an idle 2-core runner 2
threads could at best halve the few large ops (MMD on 10 000 points), so the risk is far larger
than the gain.

Why the whole suite and not only the modules that used to set it (test_training, test_losses,
test_nets, test_datasets, each with its own copy of this fixture): the oversubscription risk
does not depend on the module, and a thread count that differs between modules would make
timings depend on test order.  No test may depend on the thread count; results agree to
float rounding either way.

The default run (pyproject's addopts) uses 2 pytest-xdist workers, each with this one thread: the two
cores of CI's runner are both busy and never oversubscribed by torch's own threads.

Override with the environment variable ``SCORESDE_TEST_THREADS`` (a positive integer, e.g. 2 on
an idle machine; 0 leaves torch's own default).  The previous setting is restored at the end of
the session.
"""
import os

import pytest
import torch

_THREADS = pytest.StashKey[int]()

# tests/mutation/ holds the mutation-check harness (issue 20), run on its own, never collected.
collect_ignore = ["mutation"]


def pytest_configure(config):
    """Read SCORESDE_TEST_THREADS once; a bad value stops the run before collection."""
    raw = os.environ.get("SCORESDE_TEST_THREADS", "1")
    if not raw.strip().isdigit():
        raise pytest.UsageError(f"SCORESDE_TEST_THREADS must be an integer >= 0, got {raw!r}")
    config.stash[_THREADS] = int(raw)


@pytest.fixture(autouse=True, scope="session")
def torch_threads(pytestconfig):
    """Set torch's intra-op threads for the session (default 1, see the module docstring); restore them after."""
    before = torch.get_num_threads()
    threads = pytestconfig.stash[_THREADS]
    if threads:
        torch.set_num_threads(threads)
    yield torch.get_num_threads()
    torch.set_num_threads(before)
