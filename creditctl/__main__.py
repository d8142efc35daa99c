"""`python -m creditctl`: the same as the `creditctl` script."""

import sys

from creditctl.main import main

sys.exit(main())
