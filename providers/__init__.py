"""Provider adapters (one module per provider protocol) and the simulators that speak those protocols.

The gateway core never imports an adapter by name: the catalog names a provider (`fal`, `replicate`)
and `adapter_class()` resolves it here. Adding a provider is a new module plus one line below.
"""

from __future__ import annotations

import importlib

from providers.base import ProviderAdapter, ProviderEndpoint

ADAPTERS: dict[str, str] = {
    "fal": "providers.fal:FalAdapter",
    "replicate": "providers.replicate:ReplicateAdapter",
}


def adapter_class(provider: str) -> type[ProviderAdapter]:
    """The adapter class for a provider name from the catalog."""
    try:
        module_name, _, class_name = ADAPTERS[provider].partition(":")
    except KeyError:
        raise LookupError(f"unknown provider {provider!r}; known: {', '.join(sorted(ADAPTERS))}") from None
    cls: type[ProviderAdapter] = getattr(importlib.import_module(module_name), class_name)
    return cls


__all__ = ["ADAPTERS", "ProviderAdapter", "ProviderEndpoint", "adapter_class"]
