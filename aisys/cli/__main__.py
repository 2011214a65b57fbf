"""``python -m aisys.cli``: the same command as the ``aisys`` script."""

import sys

from aisys.cli.app import main

sys.exit(main())
