"""Image towers from model zoos: `timm:<name>` and `torchvision:<name>`.

Both build the architecture by name with random weights, then load a local weights file when one is given
(`weights: path/to/file.safetensors|.pth`, a state dict of the zoo model) or, with `pretrained: true`, the zoo's
own download (needs network or a filled cache). The classifier is dropped; features are pooled by the zoo model's
own pooling (`pooling: pooler`, the default) or, for timm, by `cls` (class token) / `mean` (average of tokens).
"""

from __future__ import annotations

from pathlib import Path

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

        pools = {"pooler": None, "auto": None, "cls": "token", "mean": "avg"}
        if pooling not in pools:
            raise ValueError(f"pooling '{pooling}' is not one of {', '.join(pools)}")
        if pools[pooling] is not None:
            kwargs["global_pool"] = pools[pooling]
        self.name, self.pooling = name, pooling
        load = lambda: timm.create_model(name, pretrained=pretrained and not weights, num_classes=0, **kwargs)  # noqa: E731
        if pretrained and not weights:  # timm downloads from the HF hub
            from ..hub import load_from_hub

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

    from ..hub import HubUnavailable, probe

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


register_source("timm", _source(TimmTower))
register_source("torchvision", _source(TorchvisionTower))
