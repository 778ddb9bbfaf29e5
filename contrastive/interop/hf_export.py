"""Writing transformers formats: `contrastive export --checkpoint PATH --output DIR`.

- Built-in ViT + built-in text Transformer -> `CLIPModel` (the layouts match one to one).
- Any HF tower -> `VisionTextDualEncoderModel`; a built-in tower beside it becomes `CLIPVisionModel` /
  `CLIPTextModel`. HF towers must pool with `pooler`, the only pooling transformers' dual encoder applies, except
  an HF text tower pooling with `mean` or `cls` (sentence-transformers models): its text side is written as well as
  a sentence-transformers folder, `DIR/text_sentence_transformers/`, whose `encode` gives the model's text
  embeddings (the dual encoder's own text features use the untrained pooler and differ).
- timm / torchvision towers have no transformers counterpart and are refused.

The directory holds safetensors weights, config.json, the tokenizer (the byte tokenizer is written as a
`tokenizer.json` that `AutoTokenizer` loads) and a `CLIPImageProcessor` doing the toolkit's eval transform (resize the
short side, centre crop, normalise), so `AutoModel.from_pretrained(DIR)` and `AutoProcessor.from_pretrained(DIR)`
work. The logit scale carries over. After writing, the directory is reloaded with transformers and its embeddings
are compared with the toolkit's on a small batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

import torch

from ..errors import CheckpointError
from ..config import ModelConfig

VERIFY_ATOL = 1e-5
ST_POOLINGS = ("mean", "cls")  # HF text poolings written as a sentence-transformers folder beside the dual encoder
ST_FOLDER = "text_sentence_transformers"
T = TypeVar("T")


def _model_config(path: Path) -> ModelConfig:
    from .checkpoint import read_meta, resolve_checkpoint
    from ..config import config_from_dict
    from .hf_import import is_hf_dual_dir, model_config_from_hf

    if is_hf_dual_dir(path):
        return model_config_from_hf(path)
    return config_from_dict(read_meta(resolve_checkpoint(path))["config"]).model


def _clip_vision_config(tower) -> dict:
    return dict(hidden_size=tower.width, intermediate_size=int(tower.width * tower.mlp_ratio),
                num_hidden_layers=tower.num_layers, num_attention_heads=tower.heads, image_size=tower.image_size,
                patch_size=tower.patch_size, hidden_act=tower.act, layer_norm_eps=1e-5, num_channels=3)


def _clip_text_config(tower, tokenizer) -> dict:
    sot = getattr(tokenizer, "sot_token_id", None)
    return dict(vocab_size=tower.vocab_size, hidden_size=tower.width, intermediate_size=int(tower.width * tower.mlp_ratio),
                num_hidden_layers=tower.num_layers, num_attention_heads=tower.heads,
                max_position_embeddings=tower.context_length, hidden_act=tower.act, layer_norm_eps=1e-5,
                eos_token_id=tower.eot_token_id, pad_token_id=tower.pad_token_id,
                bos_token_id=sot if sot is not None else tower.eot_token_id)


def _hf_tokenizer(tokenizer, context_length: int):
    """The transformers tokenizer to save: an HF tower's own, or the toolkit's `tokenizers` one wrapped."""
    from ..text.hf_tokenizer import HFTokenizer

    if isinstance(tokenizer, HFTokenizer):
        import copy

        hf_tok = copy.deepcopy(tokenizer.hf_tokenizer)
        hf_tok.model_max_length = context_length  # `truncation=True` then cuts where the toolkit did
        return hf_tok
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from ..text.tokenizer import EOT, PAD, SOT

    backend = Tokenizer.from_str(tokenizer.tokenizer.to_str())
    backend.no_padding()  # the fixed-length padding is the toolkit's choice; transformers pads per call
    backend.no_truncation()
    # input_ids + attention_mask only: CLIP text models take no token_type_ids
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=SOT, eos_token=EOT, pad_token=PAD,
                                   model_max_length=context_length, model_input_names=["input_ids", "attention_mask"])


def _image_processor(cfg: ModelConfig):
    from transformers import CLIPImageProcessor

    s = cfg.image_size
    return CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s}, do_center_crop=True,
                              image_mean=list(cfg.image_mean), image_std=list(cfg.image_std), resample=3,
                              do_convert_rgb=True)


def to_transformers(model, tokenizer, cfg: ModelConfig):
    """(transformers model, processor) holding the same weights as `model` (a ContrastiveModel)."""
    from transformers import (CLIPConfig, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig,
                              VisionTextDualEncoderConfig, VisionTextDualEncoderModel, VisionTextDualEncoderProcessor)

    from ..encoders.hf import HFTower
    from ..encoders.text import TextTransformer
    from ..encoders.vit import VisionTransformer

    if model.logit_bias is not None:
        raise CheckpointError("the model has a logit bias (siglip loss); transformers' CLIP / dual encoder has none")
    image, text = model.image_encoder, model.text_encoder
    for name, tower in (("image", image), ("text", text)):
        if not isinstance(tower, (HFTower, VisionTransformer, TextTransformer)):
            raise CheckpointError(f"the {name} tower ({type(tower).__name__}) has no transformers counterpart")
        if isinstance(tower, HFTower) and tower.pooling != "pooler" and not (name == "text" and tower.pooling in ST_POOLINGS):
            raise CheckpointError(f"the {name} tower pools with '{tower.pooling}'; transformers' dual encoder uses the "
                                  f"model's pooler output (train with {name}_encoder_args.pooling=pooler to export)")
    scale = float(model.logit_scale.detach())
    hf_tok = _hf_tokenizer(tokenizer, cfg.context_length)
    image_processor = _image_processor(cfg)
    if isinstance(image, VisionTransformer) and isinstance(text, TextTransformer):
        config = CLIPConfig(vision_config=_clip_vision_config(image), text_config=_clip_text_config(text, tokenizer),
                            projection_dim=model.embed_dim, logit_scale_init_value=scale)
        out = CLIPModel(config)
        out.vision_model.load_state_dict(image.state_dict())
        out.text_model.load_state_dict(text.state_dict())
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=hf_tok)
    else:
        vc = image.model.config if isinstance(image, HFTower) else CLIPVisionConfig(**_clip_vision_config(image))
        tc = text.model.config if isinstance(text, HFTower) else CLIPTextConfig(**_clip_text_config(text, tokenizer))
        config = VisionTextDualEncoderConfig.from_vision_text_configs(vc, tc, projection_dim=model.embed_dim,
                                                                      logit_scale_init_value=scale)
        out = VisionTextDualEncoderModel(config)
        for tower, holder, attr in ((image, out.vision_model, "vision_model"), (text, out.text_model, "text_model")):
            if isinstance(tower, HFTower):
                holder.load_state_dict(tower.model.state_dict())
            else:  # older transformers nest the bare transformer one level deeper in CLIPVisionModel / CLIPTextModel
                getattr(holder, attr, holder).load_state_dict(tower.state_dict())
        processor = VisionTextDualEncoderProcessor(image_processor=image_processor, tokenizer=hf_tok)
    with torch.no_grad():
        out.visual_projection.weight.copy_(model.image_projection.weight)
        out.text_projection.weight.copy_(model.text_projection.weight)
        out.logit_scale.copy_(model.logit_scale.detach().reshape(out.logit_scale.shape))
    return out.eval(), processor


@torch.no_grad()
def compare_embeddings(model, tokenizer, hf_model, hf_processor, image_size: int,
                       captions: list[str] | None = None) -> dict[str, float]:
    """Max |difference| of normalised image / text embeddings between the toolkit and transformers (fp32)."""
    import torch.nn.functional as F

    captions = captions or ["a red circle on the left", "two small blue squares", "x"]
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, image_size, image_size, generator=g)  # (2, 3, S, S)
    ours_img = model.encode_image(pixels)
    ours_txt = model.encode_text(tokenizer(captions))
    theirs_img = F.normalize(_features(hf_model.get_image_features(pixel_values=pixels)), dim=-1)
    batch = hf_processor.tokenizer(captions, padding=True, return_tensors="pt")
    theirs_txt = F.normalize(_features(hf_model.get_text_features(**batch)), dim=-1)
    return {"image": float((ours_img - theirs_img).abs().max()), "text": float((ours_txt - theirs_txt).abs().max()),
            "logit_scale": float((model.logit_scale.exp() - hf_model.logit_scale.exp()).abs())}


def _features(out) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output holds the projected features; 4.x a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def check_output(checkpoint: Path, output: Path, overwrite: bool = False) -> None:
    """The rules of `outputs.check_folder_output`, the checkpoint being exported (and the one a run directory names)
    as the source that is never replaced. Runs before anything is loaded."""
    from .checkpoint import resolve_checkpoint
    from .outputs import check_folder_output

    sources = [checkpoint.resolve()]
    try:  # a run directory or a weights file names a checkpoint folder
        sources.append(resolve_checkpoint(checkpoint).resolve())
    except CheckpointError:
        pass  # an HF directory, or nothing (the loader reports it)
    check_folder_output(output, "--output", overwrite, sources)


def export_hf(checkpoint: str | Path, output: str | Path, verify: bool = True, overwrite: bool = False,
              weights: str = "model") -> dict[str, float]:
    """Write `checkpoint` (run dir, checkpoint dir or HF directory) as a transformers directory at `output`;
    returns the verification differences (empty when `verify` is false).

    `output` must be new or empty and outside any run or checkpoint unless `overwrite`; never the source itself.
    The files are written and verified in a hidden sibling folder that is then renamed into place, so a failed
    export leaves `output` as it was. `weights="ema"` exports the run's moving average of the weights. LoRA
    adapters are merged into plain weights first."""
    import copy

    from .loading import load
    from ..encoders.lora import has_lora, merge_lora

    checkpoint, output = Path(checkpoint), Path(output)
    check_output(checkpoint, output, overwrite)
    model, _, tokenizer = load(checkpoint, weights=weights)
    cfg = _model_config(checkpoint)
    plain = merge_lora(copy.deepcopy(model)) if has_lora(model) else model
    hf_model, processor = to_transformers(plain, tokenizer, cfg)
    return write_folder(output, lambda tmp: _write_and_verify(plain, tokenizer, hf_model, processor, cfg, tmp, verify))


def write_folder(output: Path, write: Callable[[Path], T]) -> T:
    """`write(tmp)` into a hidden sibling folder of `output`, then rename it into place (an existing `output` is
    moved aside, not deleted, until then), so a failed or interrupted write leaves `output` as it was."""
    import os
    import shutil
    import tempfile

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's private 0700 would stay on the renamed output
    try:
        result = write(tmp)
        old = None
        if output.exists():
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            os.replace(output, old)
        os.replace(tmp, output)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _write_and_verify(model, tokenizer, hf_model, processor, cfg: ModelConfig, folder: Path,
                      verify: bool) -> dict[str, float]:
    from transformers import AutoModel, AutoProcessor

    from ..encoders.hf import HFTower

    hf_model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    text = model.text_encoder
    sentence = isinstance(text, HFTower) and text.pooling in ST_POOLINGS
    if sentence:  # the dual encoder's text side pools with the pooler; this folder has the model's text embeddings
        from .st_export import write_sentence_transformer

        write_sentence_transformer(text, model.text_projection, tokenizer, cfg.context_length, folder / ST_FOLDER)
    if not verify:
        return {}
    diffs = compare_embeddings(model, tokenizer, AutoModel.from_pretrained(str(folder)).eval(),
                               AutoProcessor.from_pretrained(str(folder)), cfg.image_size)
    if sentence:
        from .st_export import compare_text

        diffs["text"] = compare_text(model, tokenizer, folder / ST_FOLDER,
                                     ["a red circle on the left", "two small blue squares", "x"])
    if max(diffs["image"], diffs["text"]) > VERIFY_ATOL:
        raise CheckpointError(f"exported model disagrees with the toolkit's (max |diff| {diffs}); please report")
    return diffs


def export_summary(diffs: dict[str, float]) -> str:
    return ", ".join(f"{k} max |diff| {v:.2e}" for k, v in diffs.items())
