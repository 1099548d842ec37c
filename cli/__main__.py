"""`python -m neuralir.cli ...` is the `neuralir` command."""

import sys

from neuralir.cli.main import main

sys.exit(main())
