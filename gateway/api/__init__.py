"""The HTTP edge: OpenAI-compatible routes, request parsing and the OpenAI error shape."""
