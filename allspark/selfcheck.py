"""``python -m allspark.selfcheck``: the machine self-check (:mod:`allspark.tools.selfcheck`)."""
import sys

from .tools.selfcheck import main

if __name__ == "__main__":
    sys.exit(main())
