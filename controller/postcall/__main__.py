"""``python -m callctl.controller.postcall --job FILE``: the post-call process.

What it does is ``process.main``; this only exits without waiting for an
abandoned upload thread.
"""

import os
import sys

from callctl.controller.postcall.process import main

if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # an abandoned upload thread must not hold the exit
