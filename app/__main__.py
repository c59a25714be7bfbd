"""`python -m app [--port N] [--host H] [--checkpoint DIR]`."""

import sys

from .cli import main

sys.exit(main(["app", *sys.argv[1:]]))
