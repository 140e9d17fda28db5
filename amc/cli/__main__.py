"""`python -m amc.cli ...` (e.g. under `torchrun -m amc.cli finetune ...`)."""

import sys

from amc.cli import main

sys.exit(main())
