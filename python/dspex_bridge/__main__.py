"""``python -m dspex_bridge``: start a worker (see :mod:`dspex_bridge.worker`)."""

import sys

from .worker import main

if __name__ == "__main__":
    sys.exit(main())
