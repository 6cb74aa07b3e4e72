import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def fresh_param_store():
    """Every test starts from an empty param store and a fixed seed."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    yield
    pyro.clear_param_store()
