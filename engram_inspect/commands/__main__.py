"""`python -m engram_inspect.commands ARGS`: the same as `engram ARGS`."""

import sys

from engram_inspect.commands import main

sys.exit(main())
