"""Image towers from model zoos: `timm:<name>` and `torchvision:<name>`.

Both build the architecture by name with random weights, then load a local weights file when one is given
(`weights: path/to/file.safetensors|.pth`, a state dict of the zoo model) or, with `pretrained: true`, the zoo's
own download (needs network or a filled cache). The classifier is dropped; features are pooled by the zoo model's
own pooling (`pooling: pooler`, the default) or, for timm, by `cls` (class token) / `mean` (average of tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import error_line
from .registry import register_source

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch file loaded weights-only (no code runs)."""
    from ..errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common wrappers of training checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _load_backbone_weights(model: nn.Module, path: str | Path, name: str) -> None:
    from ..errors import ConfigError

    state = read_state_dict(path)
    own = model.state_dict()
    # the classifier was replaced; its weights in the file are not wanted
    state = {k: v for k, v in state.items() if k in own}
    missing = sorted(set(own) - set(state))
    if missing:
        raise ConfigError(f"{name}: weights file {path} lacks {len(missing)} tensors (e.g. {missing[:3]})")
    model.load_state_dict(state)


class TimmTower(nn.Module):
    """A timm model without classifier: (B, 3, H, W) -> (B, output_dim)."""

    def __init__(self, name: str, pooling: str = "pooler", weights: str = "", pretrained: bool = False, **kwargs) -> None:
        super().__init__()
        import timm

        if pooling not in TIMM_POOLINGS:
            raise ValueError(f"pooling '{pooling}' is not one of {', '.join(TIMM_POOLINGS)}")
        if TIMM_POOLINGS[pooling] is not None:
            kwargs["global_pool"] = TIMM_POOLINGS[pooling]
        self.name, self.pooling = name, pooling
        load = lambda: timm.create_model(name, pretrained=pretrained and not weights, num_classes=0, **kwargs)  # noqa: E731
        if pretrained and not weights:  # timm downloads from the HF hub
            from .hub import load_from_hub

            self.model = load_from_hub(load, f"timm:{name} (pretrained)", "give the weights as a file (weights: FILE)")
        else:
            self.model = load()
        if weights:
            _load_backbone_weights(self.model, weights, f"timm:{name}")

    @property
    def output_dim(self) -> int:
        return int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)  # (B, C)

    def blocks(self) -> list[nn.Module]:
        return _zoo_blocks(self.model)

    def gradient_checkpointing_enable(self) -> None:
        self.model.set_grad_checkpointing(True)


def _check_torchvision_download(name: str) -> None:
    """Raise HubUnavailable at once when torchvision would download `name`'s weights and their host cannot be reached
    (instead of a download message and a raw URL error)."""
    from torchvision.models import get_model_weights

    from .hub import HubUnavailable, probe

    url = get_model_weights(name).DEFAULT.url
    if (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file():
        return
    if reason := probe(url):
        raise HubUnavailable(f"torchvision:{name} (pretrained): its weights are not in the local cache and "
                             f"{url} cannot be reached ({reason}); give the weights as a file (weights: FILE)")


class TorchvisionTower(nn.Module):
    """A torchvision classification model with its last Linear layer replaced by identity."""

    def __init__(self, name: str, pooling: str = "pooler", weights: str = "", pretrained: bool = False) -> None:
        super().__init__()
        from torchvision.models import get_model

        if pooling not in ("pooler", "auto"):
            raise ValueError(f"torchvision towers pool with the model's own pooling (pooling: pooler), not '{pooling}'")
        self.name, self.pooling = name, "pooler"
        if pretrained and not weights:
            _check_torchvision_download(name)
        self.model = get_model(name, weights="DEFAULT" if pretrained and not weights else None)
        head_name, head = [(n, m) for n, m in self.model.named_modules() if isinstance(m, nn.Linear)][-1]
        self._output_dim = head.in_features
        parent = self.model.get_submodule(head_name.rsplit(".", 1)[0]) if "." in head_name else self.model
        setattr(parent, head_name.rsplit(".", 1)[-1], nn.Identity())
        if weights:
            _load_backbone_weights(self.model, weights, f"torchvision:{name}")

    @property
    def output_dim(self) -> int:
        return self._output_dim

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)  # (B, C)

    def blocks(self) -> list[nn.Module]:
        return _zoo_blocks(self.model)


def _zoo_blocks(model: nn.Module) -> list[nn.Module]:
    """Stages of ResNets (layer1..layer4); otherwise the longest block container (`blocks`, `stages`, `features`)."""
    stages = [getattr(model, f"layer{i}") for i in range(1, 5) if hasattr(model, f"layer{i}")]
    if len(stages) == 4:
        return stages
    containers = [m for m in model.modules() if isinstance(m, (nn.ModuleList, nn.Sequential))]
    return list(max(containers, key=len)) if containers else []


def _source(cls):
    def build(spec: str, *, modality: str | None = None, **overrides) -> nn.Module:
        from ..errors import ConfigError

        if modality not in (None, "image"):
            raise ConfigError(f"{cls.__name__} towers are image towers, not {modality}")
        overrides.pop("image_size", None)  # preprocessing decides the input size, not the builder
        try:
            return cls(spec, **overrides)
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"{spec}: {error_line(e, 200)}") from None

    return build


def zoo_preprocessing(source: str, name: str) -> tuple[int, list[float], list[float]] | None:
    """(image size, mean, std) the zoo model was trained with, without building it."""
    if source == "timm":
        import timm

        cfg = timm.get_pretrained_cfg(name)
        if cfg is None:
            return None
        return int(cfg.input_size[-1]), list(cfg.mean), list(cfg.std)
    from torchvision.models import get_model_weights

    try:
        t = get_model_weights(name).DEFAULT.transforms()
    except (ValueError, KeyError, AttributeError):
        return 224, IMAGENET_MEAN, IMAGENET_STD
    return int(t.crop_size[0]), list(t.mean), list(t.std)


TIMM_POOLINGS = {"pooler": None, "auto": None, "cls": "token", "mean": "avg"}


def _check_zoo_args(cls, source: str, spec: str, args: dict[str, Any], models: Callable[[], list[str]]) -> dict:
    """Checks shared by timm and torchvision towers; returns the arguments the tower passes on to the zoo."""
    from .registry import check_call_args, signature_parameters

    name = f"{source}:{spec}"
    known = models()
    if spec.split(".")[0] not in known:  # (timm names may carry a pretrained tag: vit_small_patch16_224.augreg_in1k)
        import difflib

        close = difflib.get_close_matches(spec, known, n=1)
        raise ValueError(f"'{name}': {source} has no model '{spec}'" + (f"; did you mean '{close[0]}'?" if close else ""))
    named, hints, open_ = signature_parameters(cls, skip=1)
    mine = {k: v for k, v in args.items() if k != "image_size"}  # (the factory's; preprocessing sets the size)
    check_call_args(name, mine, named, hints, open_)
    if mine.get("weights") and not Path(mine["weights"]).is_file():
        raise ValueError(f"'{name}' argument weights: file not found: {mine['weights']}")
    return {k: v for k, v in mine.items() if k not in named}


def check_timm_args(spec: str, args: dict[str, Any]) -> None:
    """ValueError (one line) when `timm:<spec>` cannot be built with `args`: an unknown model, a tower argument of
    the wrong type or an unknown pooling, a missing weights file; the model's own arguments are tried on the meta
    device (no memory, no download), so a name the model does not take or a value it refuses fails here too."""
    import timm

    from .registry import check_choice

    extra = _check_zoo_args(TimmTower, "timm", spec, args, timm.list_models)
    check_choice(f"timm:{spec}", "pooling", args.get("pooling", "pooler"), list(TIMM_POOLINGS))
    for key, value in extra.items():  # the model's own numbers: rates in [0, 1), counts and sizes not negative
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "drop" in key and not 0 <= value < 1 or isinstance(value, int) and value < 0:
                bound = "in [0, 1)" if "drop" in key else ">= 0"
                raise ValueError(f"'timm:{spec}' argument {key} must be {bound}, got {value!r}")
    if TIMM_POOLINGS[args.get("pooling", "pooler")] is not None:
        extra["global_pool"] = TIMM_POOLINGS[args["pooling"]]
    try:
        with torch.device("meta"):
            timm.create_model(spec, pretrained=False, num_classes=0, **extra)
    except Exception as e:  # noqa: BLE001 - whatever the model's constructor refuses is the user's argument
        raise ValueError(f"'timm:{spec}': {error_line(e) or type(e).__name__}") from None


def check_torchvision_args(spec: str, args: dict[str, Any]) -> None:
    """ValueError (one line) when `torchvision:<spec>` cannot be built with `args` (an unknown model, an argument
    the tower does not take or of the wrong type, a pooling other than the model's own, a missing weights file)."""
    from torchvision.models import list_models

    from .registry import check_choice

    _check_zoo_args(TorchvisionTower, "torchvision", spec, args, list_models)
    check_choice(f"torchvision:{spec}", "pooling", args.get("pooling", "pooler"), ["pooler", "auto"])


register_source("timm", _source(TimmTower), check_timm_args)
register_source("torchvision", _source(TorchvisionTower), check_torchvision_args)
