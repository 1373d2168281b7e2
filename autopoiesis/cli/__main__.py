"""``python -m autopoiesis.cli``: the ``autopoiesis`` command without its script installed."""

import sys

from . import main

sys.exit(main())
