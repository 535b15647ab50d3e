"""`python -m deploy.monitoring [--check]`: write, or check, the generated monitoring files."""

import sys

from .generate import main

sys.exit(main())
