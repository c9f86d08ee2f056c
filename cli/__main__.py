"""``python -m callctl.cli``: the same as the ``callctl`` command."""

import sys

from callctl.cli.main import main

sys.exit(main())
