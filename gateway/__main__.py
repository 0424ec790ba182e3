"""`python -m gateway` runs the `flux-gateway` CLI."""

import sys

from gateway.cli import main

sys.exit(main())
