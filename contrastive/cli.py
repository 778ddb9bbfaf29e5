"""Command line: `contrastive <command> ...` (also `python -m contrastive`). A dict of subcommand -> function.

User errors (bad config, bad data, bad checkpoint) print one line to stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {}


def command(name: str, help: str):
    def wrap(fn: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        COMMANDS[name] = (help, fn)
        return fn

    return wrap


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (`contrastive <command>: error: ...`, exit code 2), not the usage
    block followed by the error."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}{self.suggestion(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)

    def suggestion(self, message: str) -> str:
        """"; did you mean --x?" for an unknown option close to one of this command's own options, else ""."""
        import difflib

        if not message.startswith("unrecognized arguments: "):
            return ""
        unknown = [a.split("=")[0] for a in message.split(": ", 1)[1].split() if a.startswith("--")]
        options = [o for o in self._option_string_actions if o.startswith("--")]
        close = difflib.get_close_matches(unknown[0], options, n=1) if unknown else []
        return f"; did you mean {close[0]}?" if close else ""


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def device_option(spec: str) -> str:
    """A --device value checked (one line on a bad one); `auto` becomes cuda when a GPU is visible, else cpu."""
    import torch

    from .training.guards import parse_device

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(parse_device(spec, "--device"))


def user_errors() -> tuple[type[BaseException], ...]:
    """What the CLI reports in one line (exit code 2): every `errors.UserError` and file-system errors."""
    from .errors import USER_ERRORS

    return USER_ERRORS


@command("train", "train a model from a YAML config with key.sub=value overrides")
def train_command(argv: list[str]) -> int:
    parser = Parser(prog="contrastive train", description="Train from a config file.")
    parser.add_argument("--config", "-c", default=None, help="YAML config (defaults when omitted)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=5e-4 train.max_steps=200")
    args = parser.parse_args(argv)
    from .config import load_config

    cfg = load_config(args.config, args.overrides)  # key and value errors: before torch is imported
    from .training.recipe import train

    train(cfg)
    return 0


@command("config", "print the resolved config (YAML) after overrides")
def config_command(argv: list[str]) -> int:
    parser = Parser(prog="contrastive config")
    parser.add_argument("--config", "-c", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    import yaml

    from .config import config_to_dict, load_config

    cfg = load_config(args.config, args.overrides)  # key and value errors: before torch is imported
    from .model import check_encoder_settings

    check_encoder_settings(cfg.model)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


@command("rank", "rank candidate captions for images by the model's probabilities")
def rank_command(argv: list[str]) -> int:
    parser = Parser(prog="contrastive rank", description="Zero-shot caption ranking.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    parser.add_argument("--image", nargs="+", required=True, help="image file(s)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--captions", nargs="+", help="candidate captions")
    group.add_argument("--captions-file", help="candidate captions, one per line")
    parser.add_argument("--json", action="store_true", help="print JSON: per image, the ranked captions")
    parser.add_argument("--plot", default=None, help="write an image x caption probability heatmap (a new PNG)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --plot PNG")
    parser.add_argument("--top-k", type=int_at_least(1), default=None, help="show only the K most probable captions")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    args.device = device_option(args.device)
    import json

    from .errors import ConfigError
    from .data.eval_table import read_lines
    from .evaluation.rank import format_rankings, rankings_from_scores, rankings_to_json, score_captions
    from .interop.loading import load
    from .interop.outputs import check_file_output

    if args.plot:
        check_file_output(args.plot, "--plot", (".png",), "PNG", args.overwrite)
    captions = args.captions if args.captions else read_lines(args.captions_file)
    if empty := [i for i, c in enumerate(captions, 1) if not c.strip()]:  # training skips these as bad samples
        raise ConfigError(f"--captions: caption {empty[0]} is empty; give each candidate some text")
    model, preprocess, tokenizer = load(args.checkpoint, device=args.device)
    scores = score_captions(model, preprocess, tokenizer, args.image, captions, device=args.device)
    rankings = rankings_from_scores(args.image, captions, scores, args.top_k)
    print(json.dumps(rankings_to_json(rankings), indent=1) if args.json else format_rankings(rankings))
    if args.plot:
        from .evaluation.plots import plot_caption_heatmap

        plot_caption_heatmap(args.image, captions, scores["probability"], args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


@command("eval", "zero-shot classification or retrieval metrics of a checkpoint (CLIP_benchmark-style JSON)")
def eval_command(argv: list[str]) -> int:
    parser = Parser(prog="contrastive eval", description="Evaluate a checkpoint on a table.")
    parser.add_argument("--task", required=True, choices=["zeroshot", "retrieval"])
    parser.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    parser.add_argument("--data", required=True, help="CSV/TSV/JSONL table with image paths relative to it")
    parser.add_argument("--classes", default=None, help="zeroshot: class names, one per line (default: the column's values)")
    parser.add_argument("--class-key", default="label", help="zeroshot: column holding each image's class")
    parser.add_argument("--templates", default=None, help="zeroshot: prompt templates with {}, one per line")
    parser.add_argument("--image-key", default="image")
    parser.add_argument("--caption-key", default="", help="retrieval: caption column (default: captions in JSONL, else caption)")
    parser.add_argument("--output", default=None, help="also write the result JSON here (a new file)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output JSON file")
    parser.add_argument("--batch-size", type=int_at_least(1), default=256, help="images or texts per forward pass")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--weights", default="model", choices=["model", "ema"],
                        help="the trained weights, or their moving average (runs with train.ema_decay)")
    args = parser.parse_args(argv)
    args.device = device_option(args.device)
    import json

    from .evaluation.evaluate import evaluate_dataset
    from .interop.checkpoint import atomic_write_text
    from .interop.outputs import check_file_output

    output = check_file_output(args.output, "--output", (".json",), "JSON", args.overwrite) if args.output else None

    result = evaluate_dataset(args.checkpoint, args.data, args.task, image_key=args.image_key,
                              caption_key=args.caption_key, class_key=args.class_key, classes_file=args.classes,
                              templates_file=args.templates, batch_size=args.batch_size, device=args.device,
                              precision=args.precision, weights=args.weights)
    text = json.dumps(result, indent=1)
    print(text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output, text + "\n")
    return 0


@command("plot", "write PNGs of loss, temperature, lr and eval metrics of a run directory")
def plot_command(argv: list[str]) -> int:
    parser = Parser(prog="contrastive plot", description="Plot a run's metrics.jsonl.")
    parser.add_argument("run_dir")
    parser.add_argument("--output", default=None, help="folder for the PNGs (default: RUN_DIR/plots)")
    parser.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --output folder")
    args = parser.parse_args(argv)
    from .evaluation.plots import plot_run
    from .interop.outputs import check_folder_output

    if args.output is not None:  # the run's own plots/ folder is the command's to rewrite; another place follows
        check_folder_output(args.output, "--output", args.overwrite)  # the rules every writing command follows

    for path in plot_run(args.run_dir, args.output):
        print(path)
    return 0


@command("export", "write a checkpoint as a transformers directory (CLIPModel or VisionTextDualEncoderModel) or ONNX encoders")
def export_command(argv: list[str]) -> int:
    parser = Parser(prog="contrastive export", description="Export to transformers' format or to ONNX.")
    parser.add_argument("--checkpoint", required=True, help="run directory, checkpoint directory or HF directory")
    parser.add_argument("--output", required=True, help="a new or empty directory outside any run")
    parser.add_argument("--format", default="transformers", choices=["transformers", "onnx"],
                        help="transformers: a from_pretrained directory; onnx: image_encoder.onnx + text_encoder.onnx")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip reloading (transformers / onnxruntime) and comparing with the toolkit's embeddings")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --output, or write inside a run or checkpoint directory")
    parser.add_argument("--weights", default="model", choices=["model", "ema"],
                        help="the trained weights, or their moving average (runs with train.ema_decay)")
    args = parser.parse_args(argv)
    from .interop.hf_export import export_hf, export_summary
    from .interop.onnx_export import export_onnx

    export = export_onnx if args.format == "onnx" else export_hf
    diffs = export(args.checkpoint, args.output, verify=not args.no_verify, overwrite=args.overwrite,
                   weights=args.weights)
    print(f"exported {args.checkpoint} -> {args.output}" + (f" (verified: {export_summary(diffs)})" if diffs else ""))
    return 0


@command("tokenizer", "train a BPE tokenizer on captions: tokenizer train --data FILE --vocab-size N --output DIR")
def tokenizer_command(argv: list[str]) -> int:
    parser = Parser(prog="contrastive tokenizer", description="Train a byte-level BPE tokenizer.")
    sub = parser.add_subparsers(dest="action", required=True)
    tr = sub.add_parser("train", help="train on the captions of a CSV/TSV/JSONL table or a text file (one per line)")
    tr.add_argument("--data", required=True, help="captions: a table (see --caption-key) or a .txt file")
    tr.add_argument("--vocab-size", type=int_at_least(259), required=True,
                    help="tokens in the vocabulary, 256 bytes and 3 special tokens included (>= 259)")
    tr.add_argument("--output", required=True, help="directory for tokenizer.json")
    tr.add_argument("--caption-key", default="caption", help="caption column of a table")
    tr.add_argument("--min-frequency", type=int_at_least(1), default=2, help="least count of a pair to be merged")
    tr.add_argument("--overwrite", action="store_true", help="replace a tokenizer.json already in --output")
    args = parser.parse_args(argv)
    from pathlib import Path

    from .errors import DataError
    from .data.sources import iter_captions
    from .interop.outputs import check_file_output
    from .text.tokenizer import train_bpe

    check_file_output(Path(args.output) / "tokenizer.json", "--output", (".json",), "JSON", args.overwrite)

    captions = list(iter_captions(args.data, args.caption_key, setting="--caption-key"))
    if not captions:
        raise DataError(f"--data {args.data} holds no usable caption (empty, or no text in '{args.caption_key}')")
    tok = train_bpe(captions, args.vocab_size, args.min_frequency)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(tok.to_str())
    print(f"wrote {out / 'tokenizer.json'} ({tok.get_vocab_size()} tokens); use it with model.tokenizer=bpe:{out}")
    return 0


@command("embed", "embed the images (and captions) of a table, folder or shards with a trained model, resumably")
def embed_command(argv: list[str]) -> int:
    parser = Parser(prog="contrastive embed", description="Embed a collection for search (a relaunch continues).")
    parser.add_argument("--checkpoint", required=True, help="run, checkpoint or transformers directory")
    parser.add_argument("--data", required=True, help="CSV/TSV/JSONL table, folder of images, HF dataset folder or .tar shards")
    parser.add_argument("--output", required=True, help="folder for the embeddings (EMB)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=64)
    parser.add_argument("--workers", type=int_at_least(0), default=2, help="DataLoader workers decoding images")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored embeddings")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="autocast (auto: bf16/fp16 on a GPU, fp32 on the CPU)")
    parser.add_argument("--image-key", default="image", help="image column of a table or dataset")
    parser.add_argument("--caption-key", default="caption", help="caption column (embedded too when present)")
    parser.add_argument("--split", default="train", help="split of an HF dataset folder")
    parser.add_argument("--root", default=None,
                        help="folder no image may lead out of (default: the table's, image or dataset folder); "
                             "rows outside it are skipped as bad, and the search page serves nothing outside it")
    parser.add_argument("--max-bad-fraction", type=fraction, default=0.1,
                        help="stop when more than this fraction of images is bad (after 1000)")
    parser.add_argument("--max-image-pixels", type=int_at_least(1), default=89_478_485,
                        help="images with more pixels are skipped as decompression bombs")
    parser.add_argument("--shard-size", type=int_at_least(1), default=8192, help="images per stored shard")
    parser.add_argument("--max-batches", type=int_at_least(1), default=None,
                        help="stop after N batches as an interruption would (rerun to continue)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--onnx", default=None, metavar="DIR",
                        help="embed on onnxruntime with the encoders contrastive export --format onnx wrote from "
                             "--checkpoint (CPU)")
    args = parser.parse_args(argv)
    args.device = device_option(args.device)
    from pathlib import Path

    from .interop.outputs import check_place, hold
    from .search.embed import embed_collection, summary_line, torch_encoder

    check_place(Path(args.output), "--output", overwrite=True)  # an embedding folder may sit in a run, not in its checkpoints
    hold(args.output, "embed")  # one process fills a folder; held until this process ends
    if args.onnx:  # the torch model stays the collection's model: it checks the ONNX files and embeds queries later
        from .interop.onnx_export import with_onnx

        encoder = with_onnx(torch_encoder(args.checkpoint, device="cpu", precision="fp32"), args.onnx)
    else:
        encoder = torch_encoder(args.checkpoint, device=args.device, precision=args.precision)
    manifest = embed_collection(args.data, args.output, encoder, image_key=args.image_key,
                                caption_key=args.caption_key, split=args.split, root=args.root,
                                batch_size=args.batch_size, workers=args.workers, dtype=args.dtype,
                                shard_size=args.shard_size, max_batches=args.max_batches,
                                max_pixels=args.max_image_pixels, max_bad_fraction=args.max_bad_fraction,
                                progress=not args.no_progress)
    print(summary_line(manifest, args.output))
    return 0


@command("index", "build a faiss index of embedded images (exact, or approximate above a size) and report its recall")
def index_command(argv: list[str]) -> int:
    parser = Parser(prog="contrastive index", description="Index the embeddings of contrastive embed.")
    parser.add_argument("emb", help="folder written by contrastive embed")
    parser.add_argument("--kind", default="auto", choices=["auto", "flat", "ivf", "hnsw", "ivfpq"])
    parser.add_argument("--threshold", type=int_at_least(1), default=100_000,
                        help="auto: exact search up to this many images, ivf above")
    parser.add_argument("--nlist", type=int_at_least(1), default=None, help="ivf cells (default about sqrt(N))")
    parser.add_argument("--nprobe", type=int_at_least(1), default=None, help="ivf cells searched (default nlist/8)")
    parser.add_argument("--recall-queries", type=int_at_least(1), default=1000, help="queries scoring the recall")
    args = parser.parse_args(argv)
    from .search.index import build_collection_index

    report = build_collection_index(args.emb, args.kind, args.threshold, args.recall_queries, nlist=args.nlist,
                                    nprobe=args.nprobe)
    print(report.line())
    return 0


@command("search", "find the images (or captions) of an embedded collection closest to a text or an image")
def search_command(argv: list[str]) -> int:
    parser = Parser(prog="contrastive search", description="Query an embedded collection.")
    parser.add_argument("--index", required=True, help="folder written by contrastive embed (EMB)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a text query")
    query.add_argument("--image", help="an image file as the query")
    parser.add_argument("--k", type=int_at_least(1), default=10, help="hits to return")
    parser.add_argument("--captions", action="store_true", help="search the captions instead of the images")
    parser.add_argument("--json", action="store_true", help="print the hits as JSON")
    parser.add_argument("--grid", default=None, help="write a PNG contact sheet of the query and the hits (a new file)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --grid PNG")
    parser.add_argument("--checkpoint", default=None, help="the model the collection was embedded with, if moved")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    args.device = device_option(args.device)
    import json

    from .interop.outputs import check_file_output
    from .search.query import Index

    if args.grid:
        check_file_output(args.grid, "--grid", (".png",), "PNG", args.overwrite)
    index = Index.load(args.index, checkpoint=args.checkpoint, device=args.device)
    target = "captions" if args.captions else "images"
    if args.text is not None:
        hits = index.search_text(args.text, args.k, target)
    else:
        hits = index.search_image(args.image, args.k, target)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=1))
    else:
        print(f"{'rank':>4}  {'score':>6}  {'id':>7}  path | caption")
        for h in hits:
            print(f"{h.rank:>4}  {h.score:6.4f}  {h.id:>7}  {h.path}" + (f" | {h.caption}" if h.caption else ""))
    if args.grid:
        from .search.grid import contact_sheet

        print(f"wrote {contact_sheet(index, hits, args.grid, text=args.text, image=args.image)}", file=sys.stderr)
    return 0


@command("wise-ft", "interpolate a start and a fine-tuned checkpoint in weight space (one alpha, or a sweep with a plot)")
def wise_ft_command(argv: list[str]) -> int:
    parser = Parser(prog="contrastive wise-ft", description="WiSE-FT: (1 - alpha) * start + alpha * fine-tuned.")
    parser.add_argument("--start", required=True, help="the starting checkpoint or run directory")
    parser.add_argument("--finetuned", required=True, help="the fine-tuned checkpoint or run directory (same model)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--alpha", type=float, help="write this interpolation as a checkpoint at --output")
    group.add_argument("--alphas", help="sweep these (e.g. 0,0.25,0.5,0.75,1): evaluate each, write a table and a plot")
    parser.add_argument("--output", required=True, help="--alpha: the new checkpoint folder; --alphas: the results folder "
                        "(new or empty, outside any run)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output (never a run's checkpoints)")
    parser.add_argument("--weights", default="model", choices=["model", "ema"], help="the fine-tuned run's weights to use")
    parser.add_argument("--eval-target", help="--alphas: the fine-tuning target's held-out table")
    parser.add_argument("--eval-reference", help="--alphas: a table of what the start knew")
    parser.add_argument("--target-task", default="retrieval", choices=["retrieval", "zeroshot"])
    parser.add_argument("--reference-task", default="retrieval", choices=["retrieval", "zeroshot"])
    parser.add_argument("--class-key", default="label", help="zeroshot: column holding each image's class")
    parser.add_argument("--batch-size", type=int_at_least(1), default=256, help="images or texts per forward pass")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    args.device = device_option(args.device)
    from .errors import ConfigError
    from .interop.outputs import check_folder_output, hold
    from .training.wise_ft import check_alpha, parse_alphas, wise_ft

    if args.alpha is not None:
        check_alpha(args.alpha)
        out = wise_ft(args.start, args.finetuned, args.alpha, args.output, weights=args.weights,
                      overwrite=args.overwrite)
        print(f"wrote {out} (alpha {args.alpha:g} of {args.start} -> {args.finetuned})")
        return 0
    alphas = parse_alphas(args.alphas)
    if not (args.eval_target and args.eval_reference):
        raise ConfigError("--alphas needs --eval-target and --eval-reference (the tables each alpha is scored on)")
    check_folder_output(args.output, "--output", args.overwrite)
    hold(args.output, "wise-ft")  # one process writes there; held until this process ends
    from .data.eval_table import read_eval_table
    from .training.wise_ft import headline, sweep, write_sweep

    target = read_eval_table(args.eval_target, args.target_task, class_key=args.class_key)
    reference = read_eval_table(args.eval_reference, args.reference_task, class_key=args.class_key)
    points = sweep(args.start, args.finetuned, alphas, target, reference, weights=args.weights,
                   batch_size=args.batch_size, device=args.device)
    tm, rm = headline(args.target_task), headline(args.reference_task)
    print(f"{'alpha':>6}  {'target ' + tm:>32}  {'reference ' + rm:>35}")
    for p in points:
        print(f"{p.alpha:6.2f}  {p.target[tm]:32.4f}  {p.reference[rm]:35.4f}")
    table, plot = write_sweep(points, args.output, args.target_task, args.reference_task,
                              {"start": args.start, "finetuned": args.finetuned, "weights": args.weights,
                               "target": args.eval_target, "reference": args.eval_reference})
    print(f"wrote {table} and {plot}")
    return 0


@command("serve", "a local web page searching an embedded collection by text or image (FastAPI + uvicorn)")
def serve_command(argv: list[str]) -> int:
    parser = Parser(prog="contrastive serve", description="Serve a search page for an embedded collection.")
    parser.add_argument("--index", required=True, help="folder written by contrastive embed (EMB)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int_at_least(0), default=8000, help="port (0: any free one, printed)")
    parser.add_argument("--checkpoint", default=None, help="the model the collection was embedded with, if moved")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    if args.port > 65535:
        parser.error(f"argument --port: must be <= 65535, got {args.port}")
    args.device = device_option(args.device)
    from .search.serve import serve

    serve(args.index, host=args.host, port=args.port, checkpoint=args.checkpoint, device=args.device)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: contrastive <command> [options]\n\ncommands:")
        for name, (help_, _) in COMMANDS.items():
            print(f"  {name:12s} {help_}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        print(f"contrastive: unknown command '{name}'" + (f"; did you mean '{close[0]}'?" if close else ""), file=sys.stderr)
        return 2
    try:
        return COMMANDS[name][1](rest)
    except user_errors() as e:
        from .errors import error_line

        msg = error_line(e) or type(e).__name__
        print(f"contrastive {name}: error: {msg}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse: --help (0) or a usage mistake, already reported in one line (2)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    except KeyboardInterrupt as e:  # signals.Interrupted carries its message and 128 + signal number
        print(f"contrastive {name}: {str(e) or 'interrupted'}", file=sys.stderr)
        return getattr(e, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
