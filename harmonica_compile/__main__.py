"""``python -m harmonica_compile`` runs the command line."""

import sys

from .cli import main

sys.exit(main())
