"""`python -m hasup`: the same as the `hasup` command."""

import sys

from hasup.cli import main

sys.exit(main())
