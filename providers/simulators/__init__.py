"""Local simulators of the fal.ai queue API and the Replicate predictions API (FLUX.2 [klein] 4B).

They speak each provider's protocol faithfully enough for the official SDKs (fal-client, replicate) and
our adapters, hold 10,000 in-flight jobs cheaply, and can be scripted to fail (see `control`). Start them
with `python -m providers.simulators`, `server.serve(...)`, or `server.SimulatorThread` in tests.
"""
