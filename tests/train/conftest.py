"""One torch thread for the training tests (restored after each test): on a CPU shared with other jobs,
two OpenMP threads were ~20x slower than one here (threads spin waiting on descheduled peers)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
