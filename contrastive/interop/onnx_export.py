"""ONNX: `contrastive export --format onnx --checkpoint PATH --output DIR`, and the exported encoders run by
onnxruntime.

The folder holds
- `image_encoder.onnx`: `pixel_values` (B, 3, S, S) float32, preprocessed -> `image_embeds` (B, D), L2-normalised;
- `text_encoder.onnx`: `input_ids` (B, T) int64 (+ `attention_mask` (B, T) int64 for transformers text towers)
  -> `text_embeds` (B, D), L2-normalised;
- the tokenizer (`tokenizer.json` padding and cutting to T; a transformers tower's own tokenizer files);
- `preprocess.json`: image size, mean and std, the text inputs and context length, the embedding width.

B is a dynamic axis. Any tower torch can export works (built-in, transformers, timm, torchvision); the graphs are
made with torch's `torch.export`-based exporter (the TorchScript one is deprecated since torch 2.9), and after
writing, onnxruntime's embeddings are compared with torch's on a sample batch (fp32, max |diff| <= 1e-4).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import CheckpointError, UserError

IMAGE_FILE, TEXT_FILE, SETTINGS_FILE = "image_encoder.onnx", "text_encoder.onnx", "preprocess.json"
VERIFY_ATOL = 1e-4
SAMPLE_CAPTIONS = ["a red circle on the left", "two small blue squares", "x"]
_EXTERNAL_DATA_BYTES = 1 << 30  # weights above this go to a `.onnx.data` file beside the graph (protobuf's 2 GiB cap)


class _ImageSide(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)  # (B, 3, S, S) -> (B, D)


class _TextSide(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens = input_ids if attention_mask is None else {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.model.encode_text(tokens)  # (B, T) -> (B, D)


def _text_inputs(tokens: torch.Tensor | dict) -> dict[str, torch.Tensor]:
    """A tokenizer's output as the text graph's named inputs."""
    if isinstance(tokens, torch.Tensor):
        return {"input_ids": tokens}
    return {k: tokens[k] for k in ("input_ids", "attention_mask") if k in tokens}


def _root_cause(e: BaseException) -> str:
    """The innermost error's first line, without terminal colours: what a user can act on."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _require(*packages: str) -> None:
    """One line, not a traceback, when the optional ONNX packages are not installed."""
    import importlib.util

    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise UserError(f"ONNX needs {', '.join(missing)}: pip install 'contrastive[onnx]'")


def _export(module: nn.Module, inputs: dict[str, torch.Tensor], output_name: str, path: Path) -> None:
    """Write `module` called on `inputs` as an ONNX graph with a dynamic batch axis; one line if torch cannot."""
    batch = torch.export.Dim("batch")
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), tuple(inputs.values()), str(path), input_names=list(inputs),
                              output_names=[output_name], dynamic_shapes=tuple({0: batch} for _ in inputs),
                              dynamo=True, external_data=size > _EXTERNAL_DATA_BYTES, verbose=False)
    except Exception as e:  # noqa: BLE001 - torch's exporter raises many kinds; each is this model's limit
        side = "image" if output_name == "image_embeds" else "text"
        raise CheckpointError(f"the {side} encoder cannot be exported to ONNX ({_root_cause(e)})") from e


def settings(model: nn.Module, tokenizer, cfg: ModelConfig) -> dict:
    """What `preprocess.json` holds: enough to preprocess images and tokenize text as the model was trained."""
    tokens = tokenizer(SAMPLE_CAPTIONS[:1])
    return {
        "image_size": cfg.image_size, "image_mean": list(cfg.image_mean), "image_std": list(cfg.image_std),
        "resize": "shorter side to image_size (bicubic, antialiased), centre crop, RGB / 255, (x - mean) / std",
        "image_input": "pixel_values", "text_inputs": list(_text_inputs(tokens)),
        "context_length": int(tokenizer.context_length),
        "tokenizer": "transformers" if isinstance(tokens, dict) else "tokenizers",
        "embed_dim": int(model.embed_dim), "image_encoder": cfg.image_encoder, "text_encoder": cfg.text_encoder,
        "logit_scale": float(model.logit_scale.detach().exp()),
    }


@torch.no_grad()
def write_onnx(model: nn.Module, tokenizer, cfg: ModelConfig, folder: Path, verify: bool = True) -> dict[str, float]:
    """Write the two encoders, the tokenizer and `preprocess.json` into `folder`; returns the max |difference|
    between onnxruntime's and torch's embeddings on a sample batch (empty when `verify` is false). The graphs are
    traced in fp32 on the CPU: `model` is moved there."""
    _require("onnx", "onnxscript", "onnxruntime")
    model = model.float().eval().cpu()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, cfg.image_size, cfg.image_size, generator=g)  # (2, 3, S, S)
    _export(_ImageSide(model), {"pixel_values": pixels}, "image_embeds", folder / IMAGE_FILE)
    _export(_TextSide(model), _text_inputs(tokenizer(SAMPLE_CAPTIONS[:2])), "text_embeds", folder / TEXT_FILE)
    tokenizer.save(folder)
    (folder / SETTINGS_FILE).write_text(json.dumps(settings(model, tokenizer, cfg), indent=1) + "\n")
    if not verify:
        return {}
    # a batch size other than the one traced, so a batch axis fixed by mistake shows
    diffs = compare_onnx(model, tokenizer, folder, torch.randn(3, 3, cfg.image_size, cfg.image_size, generator=g),
                         SAMPLE_CAPTIONS)
    if max(diffs.values()) > VERIFY_ATOL:
        raise CheckpointError(f"the ONNX encoders disagree with torch (image max |diff| {diffs['image']:.2e}, text "
                              f"{diffs['text']:.2e}, allowed {VERIFY_ATOL:.0e}); please report")
    return diffs


@torch.no_grad()
def compare_onnx(model: nn.Module, tokenizer, folder: Path, pixels: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Max |difference| of the normalised embeddings, onnxruntime against torch (fp32), for pixels (B, 3, S, S)
    and captions."""
    onnx = OnnxEncoders(folder)
    tokens = tokenizer(captions)
    image = (onnx.encode_image(pixels) - model.encode_image(pixels)).abs().max()
    text = (onnx.encode_text(tokens) - model.encode_text(tokens)).abs().max()
    return {"image": float(image), "text": float(text)}


def export_onnx(checkpoint: str | Path, output: str | Path, verify: bool = True, overwrite: bool = False,
                weights: str = "model") -> dict[str, float]:
    """Write `checkpoint` (run dir, checkpoint dir or HF directory) as ONNX encoders at `output`; returns the
    verification differences. The output rules and the write-then-rename of `export_hf` apply; `weights="ema"`
    takes the run's moving average of the weights, and LoRA adapters are merged into plain weights first."""
    from .loading import load
    from .hf_export import _model_config, check_output, write_folder
    from ..encoders.lora import merge_lora

    checkpoint, output = Path(checkpoint), Path(output)
    check_output(checkpoint, output, overwrite)
    model, _, tokenizer = load(checkpoint, weights=weights)
    merge_lora(model)
    cfg = _model_config(checkpoint)
    return write_folder(output, lambda tmp: write_onnx(model, tokenizer, cfg, tmp, verify))


class OnnxEncoders:
    """The exported encoders on onnxruntime, called like the model: `encode_image(pixels)`, `encode_text(tokens)`.

    `preprocess(PIL.Image) -> (3, S, S)` and `tokenizer(list[str])` are the toolkit's own, rebuilt from the folder,
    so inputs match what torch saw. `threads` caps onnxruntime's intra-op threads (default: its own choice).
    """

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        _require("onnxruntime")
        import onnxruntime as ort

        from ..data import build_transform

        folder = Path(folder)
        missing = [n for n in (IMAGE_FILE, TEXT_FILE, SETTINGS_FILE) if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{folder} holds no {missing[0]}; write the folder with "
                                  "`contrastive export --format onnx --checkpoint RUN --output DIR`")
        try:
            self.settings = json.loads((folder / SETTINGS_FILE).read_text())
            cfg = ModelConfig(image_size=int(self.settings["image_size"]), image_mean=list(self.settings["image_mean"]),
                              image_std=list(self.settings["image_std"]))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{folder / SETTINGS_FILE} is not valid ({type(e).__name__}: {e})") from None
        self.embed_dim = int(self.settings.get("embed_dim", 0))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {}
        for name in (IMAGE_FILE, TEXT_FILE):
            try:
                self.sessions[name] = ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001 - onnxruntime's errors for unreadable graphs have no common base
                raise CheckpointError(f"{folder / name}: onnxruntime cannot load it ({_root_cause(e)})") from None
        self.preprocess = build_transform(cfg, None, train=False)
        self.tokenizer = _load_tokenizer(folder, self.settings)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed pixels -> (B, D) normalised float32 embeddings."""
        x = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.sessions[IMAGE_FILE].run(None, {"pixel_values": x})[0])

    def encode_text(self, tokens: torch.Tensor | dict) -> torch.Tensor:
        """Token ids (B, T) (or the tokenizer's dict) -> (B, D) normalised float32 embeddings."""
        feeds = {k: v.detach().to("cpu", torch.int64).numpy() for k, v in _text_inputs(tokens).items()}
        return torch.from_numpy(self.sessions[TEXT_FILE].run(None, feeds)[0])


def with_onnx(encoder, folder: str | Path, threads: int | None = None, atol: float = 1e-3):
    """A copy of `encoder` (a `contrastive.search.Encoder` of the torch model, in fp32) whose images and texts are
    embedded by onnxruntime from `folder`. Refused in one line when the folder preprocesses images otherwise or
    gives other embeddings than the torch model on a sample batch (it was exported from another model)."""
    import dataclasses

    from ..data.images import ImageTransform

    onnx = OnnxEncoders(folder, threads)
    a, b = onnx.preprocess, encoder.preprocess
    if isinstance(b, ImageTransform) and not (a.size == b.size and torch.equal(a.scale, b.scale)
                                              and torch.equal(a.shift, b.shift)):
        raise CheckpointError(f"{folder} preprocesses images otherwise than {encoder.source or 'the model'} "
                              "(image size, mean or std); export this model with contrastive export --format onnx")
    size = int(onnx.settings["image_size"])
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))  # (2, 3, S, S)
    diff = max(float((onnx.encode_image(pixels) - encoder.encode_images(pixels)).abs().max()),
               float((onnx.encode_text(onnx.tokenizer(SAMPLE_CAPTIONS)) - encoder.encode_texts(SAMPLE_CAPTIONS)).abs().max()))
    if diff > atol:
        raise CheckpointError(f"{folder} holds other encoders than {encoder.source or 'the model'} (max |diff| "
                              f"{diff:.2e}); export this model with contrastive export --format onnx")
    return dataclasses.replace(encoder, encode_images=onnx.encode_image,
                               encode_texts=lambda texts: onnx.encode_text(onnx.tokenizer(list(texts))))


def _load_tokenizer(folder: Path, settings: dict):
    context = int(settings["context_length"])
    if settings.get("tokenizer") == "transformers":
        from ..text.hf_tokenizer import HFTokenizer

        return HFTokenizer(folder, context, spec=f"hf:{folder}")
    from ..text.tokenizer import load_tokenizer_file

    return load_tokenizer_file(folder / "tokenizer.json", context)
