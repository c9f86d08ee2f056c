"""``python -m callctl.engine.agent_server``: the same as ``callctl agent-server``."""

import sys

from .command import main

sys.exit(main())
