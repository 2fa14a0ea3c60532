"""``python -m tuner``: the ``convtune`` command."""
import sys

from .cli import main

sys.exit(main())
