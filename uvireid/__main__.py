"""``python -m uvireid`` is the ``uvireid`` command."""

import sys

from uvireid.cli import main

sys.exit(main())
