"""`python -m anonymizer.party`: the party command line."""

import sys

from .cli import main

sys.exit(main())
