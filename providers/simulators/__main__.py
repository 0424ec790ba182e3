"""`python -m providers.simulators`: run the fal and Replicate simulators until Ctrl-C."""

from providers.simulators.server import main

raise SystemExit(main())
