"""``python -m tlc``: the same as the ``tlc`` command."""

import sys

from .cli import main

sys.exit(main())
