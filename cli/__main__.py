"""``python -m pyroem.cli``: the same as the ``pyroem`` command."""
import sys

from .main import main

sys.exit(main())
