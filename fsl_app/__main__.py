"""``python -m fsl_app``: see :mod:`fsl_app.cli`."""

import sys

from fsl_app.cli import main

sys.exit(main())
