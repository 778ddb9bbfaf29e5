"""Encoder registry: `create_encoder(name, **overrides)` and `list_encoders()`.

Built-in towers register a builder under a plain name. Names with a prefix (`hf:`, `timm:`, `torchvision:`) go to a
source factory that builds (or loads) an external model.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

_BUILDERS: dict[str, tuple[str, Callable[..., nn.Module]]] = {}
_SOURCES: dict[str, Callable[..., nn.Module]] = {}


def register_encoder(name: str, modality: str, builder: Callable[..., nn.Module]) -> None:
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be image or text, got {modality}")
    _BUILDERS[name] = (modality, builder)


def register_source(prefix: str, factory: Callable[..., nn.Module]) -> None:
    """`factory(spec, modality=..., **overrides)` builds `prefix:spec` encoders."""
    _SOURCES[prefix] = factory


def list_encoders(modality: str | None = None) -> list[str]:
    return sorted(n for n, (m, _) in _BUILDERS.items() if modality in (None, m))


def encoder_modality(name: str) -> str | None:
    return _BUILDERS[name][0] if name in _BUILDERS else None


def create_encoder(name: str, *, modality: str | None = None, **overrides) -> nn.Module:
    """Build a registered encoder (or an external one: `hf:<dir or id>`, `timm:<name>`, `torchvision:<name>`)."""
    if ":" in name:
        prefix, spec = name.split(":", 1)
        if prefix not in _SOURCES:
            raise KeyError(f"unknown encoder source '{prefix}:' (known: {', '.join(sorted(_SOURCES)) or 'none'})")
        return _SOURCES[prefix](spec, modality=modality, **overrides)
    if name not in _BUILDERS:
        import difflib

        close = difflib.get_close_matches(name, list(_BUILDERS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise KeyError(f"unknown encoder '{name}'{hint} (see contrastive.list_encoders())")
    kind, builder = _BUILDERS[name]
    if modality is not None and modality != kind:
        raise KeyError(f"encoder '{name}' is a {kind} encoder, not a {modality} encoder")
    return builder(**overrides)
