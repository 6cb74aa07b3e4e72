import pyro
import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run, so CI results do not depend on luck.
settings.register_profile("pyroem", derandomize=True, print_blob=True)
settings.load_profile("pyroem")

# The suite is hundreds of small tensor ops; one thread avoids thread hand-off costs on small CI machines.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_param_store():
    """Every test starts from an empty param store and a fixed seed."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    yield
    pyro.clear_param_store()
