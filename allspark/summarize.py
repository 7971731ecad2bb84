"""``python -m allspark.summarize``: one table of training runs (:mod:`allspark.tools.summarize`)."""
import sys

from .tools.summarize import main

if __name__ == "__main__":
    sys.exit(main())
