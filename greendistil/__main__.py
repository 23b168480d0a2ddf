"""`python -m greendistil ...` (also what `torchrun -m greendistil` runs)."""

import sys

from greendistil.cli import main

sys.exit(main())
