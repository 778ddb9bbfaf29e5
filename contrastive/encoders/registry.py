"""Encoder registry: `create_encoder(name, **overrides)` and `list_encoders()`.

Built-in towers register a builder under a plain name. Names with a prefix (`hf:`, `timm:`, `torchvision:`) go to a
source factory that builds (or loads) an external model.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from typing import Any, Callable

from torch import nn

from ..errors import error_line

_BUILDERS: dict[str, tuple[str, Callable[..., nn.Module]]] = {}
_SOURCES: dict[str, Callable[..., nn.Module]] = {}
_SOURCE_CHECKS: dict[str, Callable[[str, dict[str, Any]], None]] = {}


def register_encoder(name: str, modality: str, builder: Callable[..., nn.Module]) -> None:
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be image or text, got {modality}")
    _BUILDERS[name] = (modality, builder)


def register_source(prefix: str, factory: Callable[..., nn.Module],
                    check: Callable[[str, dict[str, Any]], None] | None = None) -> None:
    """`factory(spec, modality=..., **overrides)` builds `prefix:spec` encoders. `check(spec, args)` raises
    ValueError (one line) when the user's `args` cannot build one, without building or downloading anything."""
    _SOURCES[prefix] = factory
    if check is not None:
        _SOURCE_CHECKS[prefix] = check


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
    check_encoder_args(name, overrides)
    return builder(**overrides)


# ----------------------------------------------------------------------------------------------------------------------
# checking arguments before anything is built


def _parameters(name: str) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """(named parameters, their type hints, whether other names are accepted too) of what builds built-in `name`.

    A preset builder that only forwards `**overrides` is followed to the class it returns (its return annotation)."""
    target = _BUILDERS[name][1]
    params = inspect.signature(target).parameters.values()
    if all(p.kind is p.VAR_KEYWORD for p in params):
        returned = _hints(target).get("return")
        if inspect.isclass(returned):
            target = returned
    return signature_parameters(target)


def signature_parameters(target: Callable, skip: int = 0) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """(named parameters after the first `skip`, their type hints, whether `**kwargs` takes other names) of a
    function or class; `modality` is the registry's, never the user's."""
    params = list(inspect.signature(target).parameters.values())[skip:]
    named = {p.name: p for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "modality"}
    hints = _hints(target.__init__ if inspect.isclass(target) else target)
    return named, hints, any(p.kind is p.VAR_KEYWORD for p in params)


def _hints(fn: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve is simply not checked
        return {}


def _fits(value: Any, tp: Any) -> bool:
    """Whether a YAML value can stand for an argument annotated `tp` (unknown annotations accept anything)."""
    if tp is Any or tp is inspect.Parameter.empty:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_fits(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    origin = typing.get_origin(tp) or tp
    return isinstance(value, origin) if inspect.isclass(origin) else True


def _out_of_range(key: str, value: Any) -> str:
    """Why a numeric tower argument is out of range ("" when it is not). Sizes, counts and ratios must be > 0,
    token ids >= 0, dropout rates in [0, 1)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return ""
    if "dropout" in key:
        return "" if 0 <= value < 1 else "must be in [0, 1)"
    if key.endswith("_id"):
        return "" if value >= 0 else "must be >= 0"
    return "" if value > 0 else "must be > 0"


def check_encoder_args(name: str, args: dict[str, Any], build: bool = False) -> None:
    """Raise ValueError (one line, naming the argument) when `args` cannot build encoder `name`: a name its builder
    does not take, a value of the wrong type, or a size out of range. Sources (`hf:`, `timm:`, ...) are checked by
    the check they registered (their tower's signature, choices, files; timm's model on the meta device). `build`:
    also build a built-in encoder on the meta device (no memory, no weights), which catches combinations such as a
    width that the heads do not divide."""
    if ":" in name:
        prefix, spec = name.split(":", 1)
        if prefix in _SOURCE_CHECKS:
            _SOURCE_CHECKS[prefix](spec, args)
        return  # (create_encoder reports an unknown prefix)
    if name not in _BUILDERS:
        return  # create_encoder reports the unknown name
    check_call_args(name, args, *_parameters(name))
    if build:
        import torch

        try:
            with torch.device("meta"):
                _BUILDERS[name][1](**args)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ValueError(f"'{name}': {error_line(e) or type(e).__name__}") from None


def check_call_args(name: str, args: dict[str, Any], named: dict[str, inspect.Parameter], hints: dict[str, Any],
                    open_: bool, ranges: bool = True) -> None:
    """Raise ValueError when `args` do not fit the parameters (`signature_parameters`): a name not taken (unless
    `open_`), a value of the wrong type, a numeric value out of range (`ranges`). Names `open_` lets through are
    not checked here."""
    for key, value in args.items():
        if key not in named:
            if open_:
                continue
            import difflib

            close = difflib.get_close_matches(str(key), list(named), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"'{name}' takes no argument '{key}'{hint} (it takes: {', '.join(named)})")
        tp = hints.get(key, named[key].annotation)
        if not _fits(value, tp):
            tname = getattr(tp, "__name__", str(tp).replace("typing.", ""))
            raise ValueError(f"'{name}' argument {key} expects {tname}, got {value!r}")
        if ranges and (reason := _out_of_range(key, value)):
            raise ValueError(f"'{name}' argument {key} {reason}, got {value!r}")


def check_choice(name: str, key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    """Raise ValueError when a string argument is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"'{name}' argument {key} {value!r} is not one of {', '.join(choices)}")
