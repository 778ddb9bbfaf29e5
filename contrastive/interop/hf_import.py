"""Reading transformers formats: `CLIPModel` / `VisionTextDualEncoderModel` directories, and checkpoints of models
with HF towers.

`contrastive.load(DIR)` (and `model.init_from: DIR`) accept a `save_pretrained` directory (`interop.loading.load` checks
for one explicitly):
- `CLIPModel` -> the built-in ViT and text Transformer (same layout, weights copied one to one) when the config
  fits them (gelu / quick_gelu, LayerNorm eps 1e-5); otherwise the HF CLIP towers (`hf:<dir>`, pooler pooling);
- `VisionTextDualEncoderModel` -> its two towers as `hf:<dir>` with pooler pooling (what transformers applies).
The tokenizer is the directory's own (`hf:<dir>`); the projections and the temperature come from the weights.

A checkpoint of a model with HF towers also stores each tower's HF config (`hf_towers.json`) and the tokenizer
files (`hf_tokenizer.json`), so `contrastive.load` rebuilds it when the original directory is gone.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..model import create_model, fit_weights
from .checkpoint import resolve_checkpoint
from ..errors import CheckpointError

TOWERS_FILE, TOKENIZER_FILE = "hf_towers.json", "hf_tokenizer.json"
_DUAL_TYPES = ("clip", "vision-text-dual-encoder")
_BUILTIN_ACTS = ("gelu", "quick_gelu")


def is_hf_dual_dir(path: str | Path) -> bool:
    from ..encoders.hf import dual_encoder_type

    return Path(path).is_dir() and dual_encoder_type(path) in _DUAL_TYPES


def _has_tokenizer_files(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt"))


def _fits_builtin(sub) -> bool:
    hidden, inter = sub.hidden_size, sub.intermediate_size
    return (sub.hidden_act in _BUILTIN_ACTS and abs(sub.layer_norm_eps - 1e-5) < 1e-12
            and int(hidden * (inter / hidden)) == inter and getattr(sub, "num_channels", 3) == 3)


def model_config_from_hf(path: str | Path):
    """A ModelConfig describing the dual encoder saved in `path` (towers, tokenizer, width, preprocessing)."""
    from transformers import AutoConfig

    from ..config import ModelConfig
    from ..encoders.hf import dual_encoder_type, hf_preprocessing

    path = Path(path)
    if not _has_tokenizer_files(path):
        raise CheckpointError(f"{path}: no tokenizer files; save the processor (or tokenizer) into the directory too")
    hf = AutoConfig.from_pretrained(str(path))
    vc, tc = hf.vision_config, hf.text_config
    pre = hf_preprocessing(str(path))
    size = int(pre[0]) if pre and pre[0] else int(vc.image_size)
    defaults = ModelConfig()
    common = dict(embed_dim=int(hf.projection_dim), tokenizer=f"hf:{path}", image_size=size,
                  image_mean=(pre[1] if pre and pre[1] else defaults.image_mean),
                  image_std=(pre[2] if pre and pre[2] else defaults.image_std),
                  init_logit_scale=float(hf.logit_scale_init_value), preprocess_from_tower=False)
    tok_cfg = path / "tokenizer_config.json"
    tok_max = json.loads(tok_cfg.read_text()).get("model_max_length") if tok_cfg.is_file() else None
    tok_max = int(tok_max) if isinstance(tok_max, (int, float)) and tok_max < 1e6 else 10**6
    if dual_encoder_type(path) == "clip" and _fits_builtin(vc) and _fits_builtin(tc):
        eot = tc.eos_token_id
        # configs from before transformers PR 24773 say eos 2 and pool at the highest id, CLIP's end-of-text
        eot = tc.vocab_size - 1 if eot in (None, 2) else int(eot)
        image_args = dict(image_size=int(vc.image_size), patch_size=int(vc.patch_size), width=int(vc.hidden_size),
                          layers=int(vc.num_hidden_layers), heads=int(vc.num_attention_heads),
                          mlp_ratio=vc.intermediate_size / vc.hidden_size, act=vc.hidden_act)
        text_args = dict(vocab_size=int(tc.vocab_size), context_length=int(tc.max_position_embeddings),
                         width=int(tc.hidden_size), layers=int(tc.num_hidden_layers), heads=int(tc.num_attention_heads),
                         mlp_ratio=tc.intermediate_size / tc.hidden_size, act=tc.hidden_act, eot_token_id=eot)
        return ModelConfig(image_encoder="vit_b32", text_encoder="text_b", image_encoder_args=image_args,
                           text_encoder_args=text_args, context_length=min(int(tc.max_position_embeddings), tok_max),
                           **common)
    context = int(getattr(tc, "max_position_embeddings", 77) or 77)
    if dual_encoder_type(path) != "clip":
        context = min(context, 77)  # captions are short; BERT-style towers allow 512 positions
    context = min(context, tok_max)
    pooler = {"pooling": "pooler"}
    return ModelConfig(image_encoder=f"hf:{path}", text_encoder=f"hf:{path}", image_encoder_args=dict(pooler),
                       text_encoder_args=dict(pooler), context_length=context, **common)


def hf_state_dict(dual, model) -> dict[str, torch.Tensor]:
    """A loaded transformers dual encoder's weights under a ContrastiveModel's parameter names."""
    from ..encoders.hf import HFTower, dual_tower

    out: dict[str, torch.Tensor] = {}
    for modality, proj_src, proj_dst in (("image", "visual_projection", "image_projection"),
                                         ("text", "text_projection", "text_projection")):
        tower = getattr(model, f"{modality}_encoder")
        if isinstance(tower, HFTower):
            state = {f"model.{k}": v for k, v in dual_tower(dual, modality).state_dict().items()}
        else:  # built-in towers share the layout of CLIP's bare vision / text transformers
            state = (dual.vision_model if modality == "image" else dual.text_model).state_dict()
        out.update({f"{modality}_encoder.{k}": v for k, v in state.items()})
        out[f"{proj_dst}.weight"] = getattr(dual, proj_src).weight
    out["logit_scale"] = dual.logit_scale.detach().reshape(())
    return out


def load_hf_dir(path: Path, device: str | torch.device = "cpu"):
    """`contrastive.load` for CLIPModel / VisionTextDualEncoderModel directories -> (model, preprocess, tokenizer)."""
    from ..data import build_transform
    from ..encoders.hf import load_dual_model
    cfg = model_config_from_hf(path)
    if cfg.image_encoder.startswith("hf:"):  # the weights below replace the towers' own: skip loading them twice
        cfg = dataclasses.replace(cfg, image_encoder_args={**cfg.image_encoder_args, "pretrained": False},
                                  text_encoder_args={**cfg.text_encoder_args, "pretrained": False})
    model, tokenizer = create_model(cfg)
    fit_weights(model, hf_state_dict(load_dual_model(path), model), str(path), device)
    return model, build_transform(cfg, None, train=False), tokenizer


# ----------------------------------------------------------------------------------------------------------------------
# checkpoints of models with HF towers


def checkpoint_files(model, tokenizer) -> dict[str, str]:
    """Extra checkpoint files that make a model with HF towers / an HF tokenizer loadable without their directories."""
    from ..encoders.hf import HFTower
    from ..text.hf_tokenizer import HFTokenizer

    files: dict[str, str] = {}
    towers = {m: getattr(model, f"{m}_encoder") for m in ("image", "text")}
    configs = {m: t.hf_config for m, t in towers.items() if isinstance(t, HFTower)}
    if configs:
        files[TOWERS_FILE] = json.dumps(configs, default=str)
    if isinstance(tokenizer, HFTokenizer):
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save(tmp)
            bundle = {}
            for f in sorted(Path(tmp).iterdir()):
                data = f.read_bytes()
                try:
                    bundle[f.name] = {"text": data.decode("utf-8")}
                except UnicodeDecodeError:  # sentencepiece models are binary
                    bundle[f.name] = {"base64": base64.b64encode(data).decode("ascii")}
        files[TOKENIZER_FILE] = json.dumps(bundle)
    return files


def bundled_checkpoint(path: Path) -> Path | None:
    """The checkpoint `path` names when it carries HF tower configs or tokenizer files, else None."""
    try:
        ckpt = resolve_checkpoint(path)
    except CheckpointError:
        return None
    return ckpt if (ckpt / TOWERS_FILE).is_file() or (ckpt / TOKENIZER_FILE).is_file() else None


def load_bundled_tokenizer(ckpt: Path, context_length: int):
    from ..text.hf_tokenizer import HFTokenizer

    bundle: dict[str, Any] = json.loads((ckpt / TOKENIZER_FILE).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in bundle.items():
            target = Path(tmp) / Path(name).name
            if "text" in content:
                target.write_text(content["text"], encoding="utf-8")
            else:
                target.write_bytes(base64.b64decode(content["base64"]))
        tokenizer = HFTokenizer(tmp, context_length)
    tokenizer.spec = tokenizer.path = str(ckpt / TOKENIZER_FILE)
    return tokenizer


def load_bundled_checkpoint(path: Path, device: str | torch.device = "cpu"):
    """`contrastive.load` for checkpoints that carry HF tower configs / tokenizer files."""
    from .checkpoint import load_weights, read_meta
    from ..config import config_from_dict
    from ..data import build_transform
    ckpt = bundled_checkpoint(path)
    model_cfg = config_from_dict(read_meta(ckpt)["config"]).model
    cfg = dataclasses.replace(model_cfg, init_from="", trust_remote_code=False)  # loading never imports model code
    tokenizer = load_bundled_tokenizer(ckpt, cfg.context_length) if (ckpt / TOKENIZER_FILE).is_file() else None
    if (ckpt / TOWERS_FILE).is_file():
        configs = json.loads((ckpt / TOWERS_FILE).read_text())
        for m, hf_config in configs.items():
            field = f"{m}_encoder_args"
            cfg = dataclasses.replace(cfg, **{field: {**getattr(cfg, field), "hf_config": hf_config}})
    if tokenizer is None and (ckpt / "tokenizer.json").is_file():
        from ..text.tokenizer import load_tokenizer_file

        tokenizer = load_tokenizer_file(ckpt / "tokenizer.json", cfg.context_length)
    model, tokenizer = create_model(cfg, tokenizer)
    fit_weights(model, load_weights(ckpt), str(ckpt), device)
    return model, build_transform(cfg, None, train=False), tokenizer
