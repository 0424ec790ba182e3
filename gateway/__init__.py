"""flux-gateway: an OpenAI-compatible routing gateway for image-generation models."""
