"""The ``pyroem`` console script."""
from .main import main

__all__ = ["main"]
