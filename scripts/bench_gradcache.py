"""Activation memory, peak process memory and throughput of one training step, plain vs gradient caching.

Each (batch, micro-batch) point runs in its own process. Reported per point:
- samples/s over the timed steps (after one warm-up step);
- the peak of autograd's saved activations during one step (bytes of the tensors autograd keeps for backward,
  counted through saved-tensor hooks: exact and allocator-independent, so it shows what gradient caching saves);
- the process's peak memory: max RSS on CPU (model, optimizer state, inputs and allocator slack included), or
  torch.cuda.max_memory_allocated on CUDA.
Synthetic inputs, AdamW steps, fp32 unless --precision.

    python -m scripts.bench_gradcache --batch 64 256 --micro 0 16 --steps 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(args: argparse.Namespace) -> dict:
    import torch

    from contrastive.config import Config, load_config
    from contrastive.distributed import DistInfo
    from contrastive.model import create_model
    from contrastive.losses.batch import BatchLoss
    from contrastive.training.optim import build_optimizer, param_groups
    from contrastive.training.setup import resolve_device
    from contrastive.training.step import train_step

    torch.manual_seed(0)
    args.batch, args.micro = args.batch[0], args.micro[0]
    cfg: Config = load_config(args.config, [f"train.batch_size={args.batch}", f"train.micro_batch_size={args.micro}",
                                            f"train.precision={args.precision}", f"train.device={args.device}",
                                            # synthetic token ids: no captions to learn a vocabulary or fit a length
                                            "model.tokenizer=byte", "model.context_length=32",
                                            *args.overrides])
    device = resolve_device(cfg.train.device, DistInfo())
    model, _ = create_model(cfg.model)
    model.to(device).train()
    optimizer = build_optimizer(model, cfg.optim, param_groups(model, cfg.optim))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    loss_fn = BatchLoss(cfg.loss)
    settings = dict(precision=cfg.train.precision, grad_clip=cfg.optim.grad_clip, micro_batch_size=cfg.train.micro_batch_size)
    s, t = cfg.model.image_size, cfg.model.context_length
    batch = {
        "pixels": torch.randn(args.batch, 3, s, s, device=device),  # (B, 3, S, S)
        "tokens": torch.randint(3, 250, (args.batch, t), device=device),  # (B, T)
        "image_ids": torch.arange(args.batch, device=device),
        "text_ids": torch.arange(args.batch, device=device),
    }
    train_step(model, batch, optimizer, scaler, loss_fn, device, **settings)  # warm-up: allocates optimizer state
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss, _ = train_step(model, batch, optimizer, scaler, loss_fn, device, **settings)
    float(loss)
    sync()
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    saved = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        train_step(model, batch, optimizer, scaler, loss_fn, device, **settings)
    return {"batch": args.batch, "micro": args.micro, "device": device.type, "precision": args.precision,
            "samples_per_s": round(args.batch * args.steps / elapsed, 1), "peak_mib": round(peak, 1),
            "activations_mib": round(saved.peak / 2**20, 1), "threads": torch.get_num_threads()}


class SavedBytes:
    """Live and peak bytes of the tensors autograd saves for backward (a saved tensor counts until released)."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def pack(self, t):
        return _Held(t, self)

    def unpack(self, held):
        return held.tensor


class _Held:
    def __init__(self, tensor, counter: SavedBytes) -> None:
        self.tensor, self.counter = tensor, counter
        self.nbytes = tensor.numel() * tensor.element_size()
        counter.live += self.nbytes
        counter.peak = max(counter.peak, counter.live)

    def __del__(self) -> None:
        self.counter.live -= self.nbytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/shapes_tiny.yaml")
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    p.add_argument("--micro", type=int, nargs="+", default=[0, 16], help="0 = plain step")
    p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.image_encoder=vit_b32")
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    print("| batch | micro-batch | samples/s | saved activations, peak (MiB) | process peak (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    for batch in args.batch:
        for micro in args.micro:
            if micro >= batch:
                continue
            cmd = [sys.executable, __file__, "--one", "--config", args.config, "--batch", str(batch), "--micro",
                   str(micro), "--steps", str(args.steps), "--precision", args.precision, "--device", args.device,
                   *args.overrides]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            print(f"| {batch} | {micro or 'plain'} | {out['samples_per_s']} | {out['activations_mib']} "
                  f"| {out['peak_mib']} |", flush=True)


if __name__ == "__main__":
    main()
