"""WiSE-FT (Wortsman et al., 2022): the weight-space interpolation of a starting model and its fine-tuned version,

    theta(alpha) = (1 - alpha) * theta_start + alpha * theta_finetuned

over every floating-point tensor (the logit scale and bias included), which trades what fine-tuning gained on the
target for what the start knew: `contrastive wise-ft --start A --finetuned B --alpha 0.5 --output C` writes
theta(0.5) as a checkpoint that `load`, `eval`, `rank` and `export` take; `--alphas 0,0.25,...,1` with
`--eval-target T --eval-reference R` sweeps alpha and writes the trade-off (a JSON table and a PNG).

Both checkpoints must be the same model: the same tensor names, shapes and dtypes, and the same tokenizer. LoRA
adapters are merged first, so a LoRA fine-tune interpolates with a plain start. alpha = 0 and 1 give the inputs
bit for bit (copied, not computed); in between the mix is computed in float32 (float64 for float64 tensors).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..interop.checkpoint import EMA_FILE, META_FILE, MODEL_FILE, STATE_FILE, read_meta
from ..errors import CheckpointError, ConfigError

WEIGHT_FILES = (MODEL_FILE, STATE_FILE, EMA_FILE)  # not copied from the fine-tuned checkpoint


def interpolate(start: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * start + alpha * finetuned for every floating-point tensor; other tensors (integer buffers) must
    be equal and are copied. CheckpointError in one line when the two are not the same model."""
    if set(start) != set(finetuned):
        only = sorted(set(start) ^ set(finetuned))[0]
        raise CheckpointError(f"the checkpoints are different models: only one of them has {only!r}")
    out: dict[str, torch.Tensor] = {}
    for name, a in start.items():
        b = finetuned[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            raise CheckpointError(f"the checkpoints are different models: {name!r} is {tuple(a.shape)} {a.dtype} "
                                  f"in one and {tuple(b.shape)} {b.dtype} in the other")
        if not a.is_floating_point():
            if not torch.equal(a, b):
                raise CheckpointError(f"the checkpoints are different models: their {name!r} differ")
            out[name] = a.clone()
        elif alpha == 0.0:
            out[name] = a.clone()
        elif alpha == 1.0:
            out[name] = b.clone()
        else:
            wide = torch.float64 if a.dtype == torch.float64 else torch.float32
            out[name] = ((1.0 - alpha) * a.to(wide) + alpha * b.to(wide)).to(a.dtype)
    return out


def _tokenizer_vocab(ckpt: Path) -> dict[str, int] | None:
    file = ckpt / "tokenizer.json"
    if not file.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_str(file.read_text()).get_vocab()


def load_pair(start: str | Path, finetuned: str | Path, weights: str = "model"):
    """(start state dict, fine-tuned state dict, fine-tuned checkpoint directory), LoRA merged in both. The start's
    weights are always its trained ones; `weights` picks the fine-tuned run's ("ema": its moving average)."""
    from ..interop.loading import load
    from ..interop.checkpoint import resolve_checkpoint
    from ..encoders.lora import merge_lora

    a_dir, b_dir = resolve_checkpoint(start), resolve_checkpoint(finetuned)
    if _tokenizer_vocab(a_dir) != _tokenizer_vocab(b_dir):
        raise CheckpointError(f"the checkpoints tokenize differently ({a_dir} and {b_dir} have different "
                              "vocabularies); fine-tune with the start's tokenizer (model.tokenizer=bpe:<start>)")
    a, _, _ = load(a_dir)
    b, _, _ = load(b_dir, weights=weights)
    return merge_lora(a).state_dict(), merge_lora(b).state_dict(), b_dir


def _saved_config(finetuned_dir: Path) -> dict:
    """The fine-tuned run's config as the output's: without LoRA (its weights are merged) and without init_from."""
    config = read_meta(finetuned_dir)["config"]
    for tower in ("image", "text"):
        lora = config.get("finetune", {}).get(tower, {}).get("lora")
        if isinstance(lora, dict):
            lora["rank"] = 0
    config.get("model", {})["init_from"] = ""
    return config


def write_checkpoint(weights: dict[str, torch.Tensor], finetuned_dir: Path, output: Path, info: dict) -> Path:
    """Write `weights` as a checkpoint directory at `output` (checked by the caller): the fine-tuned checkpoint's tokenizer
    and tower files, its config (LoRA merged) and `wise_ft` (alpha, sources) in meta.json. Written in a hidden
    sibling folder and renamed into place, so a failure leaves nothing half-written."""
    from safetensors.torch import save_file

    from ..interop.checkpoint import untied
    from ..interop.hf_export import write_folder

    def write(folder: Path) -> None:
        save_file(untied(weights), str(folder / MODEL_FILE), metadata={"format": "pt"})
        for f in finetuned_dir.iterdir():
            if f.is_file() and f.name not in (*WEIGHT_FILES, META_FILE):
                shutil.copyfile(f, folder / f.name)
        meta = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "config": _saved_config(finetuned_dir), "wise_ft": info,
                "format_version": 1}
        (folder / META_FILE).write_text(json.dumps(meta, indent=1))

    write_folder(output, write)
    return output


def wise_ft(start: str | Path, finetuned: str | Path, alpha: float, output: str | Path, weights: str = "model",
            overwrite: bool = False) -> Path:
    """Write theta(alpha) of the two checkpoints as a checkpoint at `output`; returns its path. `output` follows
    `outputs.check_folder_output` (new or empty, or `overwrite`; never a run's checkpoints or either input)."""
    from ..interop.checkpoint import resolve_checkpoint
    from ..interop.outputs import check_folder_output, held

    check_alpha(alpha)
    check_folder_output(output, "--output", overwrite, [resolve_checkpoint(p).resolve() for p in (start, finetuned)])
    with held(output, "wise-ft"):  # one process writes there
        a, b, b_dir = load_pair(start, finetuned, weights)
        info = {"start": str(start), "finetuned": str(finetuned), "alpha": alpha, "weights": weights}
        return write_checkpoint(interpolate(a, b, alpha), b_dir, Path(output), info)


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1] (0: the start, 1: the fine-tuned model), got {alpha}")


def parse_alphas(text: str) -> list[float]:
    """"0,0.25,0.5" -> [0.0, 0.25, 0.5]; one line on anything that is not a list of numbers in [0, 1]."""
    try:
        alphas = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--alphas expects numbers separated by commas, got {text!r}") from None
    if not alphas:
        raise ConfigError("--alphas is empty")
    for alpha in alphas:
        check_alpha(alpha)
    return sorted(set(alphas))


@dataclass
class SweepPoint:
    alpha: float
    target: dict[str, float]  # metrics on the target set
    reference: dict[str, float]  # metrics on the reference set


def sweep(start: str | Path, finetuned: str | Path, alphas: Sequence[float], target, reference, *,
          weights: str = "model", batch_size: int = 256, device: str = "cpu") -> list[SweepPoint]:
    """Evaluate theta(alpha) for each alpha on the `target` and `reference` `EvalTable`s (one model is built;
    only its weights change)."""
    from ..evaluation.evaluate import evaluate_table
    from ..interop.loading import load
    from ..encoders.lora import merge_lora

    a, b, b_dir = load_pair(start, finetuned, weights)
    model, preprocess, tokenizer = load(b_dir, device=device, weights=weights)
    merge_lora(model)
    points = []
    for alpha in alphas:
        model.load_state_dict(interpolate(a, b, alpha))
        kwargs = dict(batch_size=batch_size, device=device)
        points.append(SweepPoint(alpha, evaluate_table(model, target, preprocess, tokenizer, **kwargs),
                                 evaluate_table(model, reference, preprocess, tokenizer, **kwargs)))
    return points


def headline(task: str) -> str:
    """The metric a trade-off plot shows for a set of `task`."""
    return "text_retrieval_recall@1" if task == "retrieval" else "acc1"


def plot_sweep(points: list[SweepPoint], target_metric: str, reference_metric: str, path: str | Path) -> Path:
    """Reference score against target score, one point per alpha, labelled with alpha."""
    from ..evaluation.plots import plot_tradeoff

    return plot_tradeoff([p.target[target_metric] for p in points], [p.reference[reference_metric] for p in points],
                         [f"α={p.alpha:g}" for p in points], path, xlabel=f"target {target_metric}",
                         ylabel=f"reference {reference_metric}", title="WiSE-FT")


def write_sweep(points: list[SweepPoint], output: str | Path, target_task: str, reference_task: str,
                sources: dict) -> tuple[Path, Path]:
    """`output/wise_ft.json` (the table) and `output/wise_ft.png` (the trade-off curve)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    table = output / "wise_ft.json"
    tm, rm = headline(target_task), headline(reference_task)
    table.write_text(json.dumps({**sources, "target_metric": tm, "reference_metric": rm,
                                 "points": [asdict(p) for p in points]}, indent=1) + "\n")
    return table, plot_sweep(points, tm, rm, output / "wise_ft.png")
