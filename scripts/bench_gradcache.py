"""Peak memory and throughput of one training step, plain vs gradient caching, for a model config.

Each (batch, micro-batch) point runs in its own process so peak memory is not inherited from earlier points:
CPU peak = growth of the process's max RSS over the timed steps (model, optimizer state and inputs are allocated
before); CUDA peak = torch.cuda.max_memory_allocated. Synthetic inputs, AdamW steps, fp32 unless --precision.

    python scripts/bench_gradcache.py --batch 64 256 --micro 0 16 --steps 2
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
    from contrastive.factory import create_model
    from contrastive.optim import build_optimizer, param_groups
    from contrastive.train import resolve_device, train_step

    torch.manual_seed(0)
    args.batch, args.micro = args.batch[0], args.micro[0]
    cfg: Config = load_config(args.config, [f"train.batch_size={args.batch}", f"train.micro_batch_size={args.micro}",
                                            f"train.precision={args.precision}", f"train.device={args.device}",
                                            *args.overrides])
    device = resolve_device(cfg.train.device, DistInfo())
    model, _ = create_model(cfg.model)
    model.to(device).train()
    optimizer = build_optimizer(model, cfg.optim, param_groups(model, cfg.optim))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    s, t = cfg.model.image_size, cfg.model.context_length
    batch = {
        "pixels": torch.randn(args.batch, 3, s, s, device=device),  # (B, 3, S, S)
        "tokens": torch.randint(3, 250, (args.batch, t), device=device),  # (B, T)
        "image_ids": torch.arange(args.batch, device=device),
        "text_ids": torch.arange(args.batch, device=device),
    }
    train_step(model, batch, optimizer, scaler, cfg, device)  # warm-up: allocates optimizer state
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for _ in range(args.steps):
        loss, _ = train_step(model, batch, optimizer, scaler, cfg, device)
    float(loss)
    sync()
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # KiB -> MiB
    return {"batch": args.batch, "micro": args.micro, "device": device.type, "precision": args.precision,
            "samples_per_s": round(args.batch * args.steps / elapsed, 1), "peak_mib": round(peak, 1),
            "threads": torch.get_num_threads()}


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
    print("| batch | micro-batch | samples/s | peak memory of the step (MiB) |")
    print("|---:|---:|---:|---:|")
    for batch in args.batch:
        for micro in args.micro:
            if micro >= batch:
                continue
            cmd = [sys.executable, __file__, "--one", "--config", args.config, "--batch", str(batch), "--micro",
                   str(micro), "--steps", str(args.steps), "--precision", args.precision, "--device", args.device,
                   *args.overrides]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            print(f"| {batch} | {micro or 'plain'} | {out['samples_per_s']} | {out['peak_mib']} |", flush=True)


if __name__ == "__main__":
    main()
