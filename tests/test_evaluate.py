"""Evaluation: zero-shot and retrieval against brute-force references, the `eval` command's JSON, eval in training."""

import json

import pytest
import torch
import torch.nn.functional as F

from contrastive.cli import main
from contrastive.config import ModelConfig
from contrastive.data import Record, build_transform, read_records
from contrastive.evaluation.evaluate import caption_ranking_accuracy, evaluate_records, zero_shot_evaluate
from contrastive.evaluation.embedding import embed_images, embed_texts
from contrastive.training.logging import eval_postfix
from contrastive.data.eval_table import label_indices
from contrastive.model import create_model
from tests.conftest import ROOT
from contrastive.evaluation.plots import read_metrics

SHAPES = ROOT / "data/shapes"
METRIC_KEYS = {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}


@pytest.fixture(scope="module")
def random_model():
    cfg = ModelConfig(image_encoder_args={"layers": 1}, text_encoder_args={"layers": 1}, tokenizer="byte", context_length=64)
    model, tokenizer = create_model(cfg)
    return model.eval(), build_transform(cfg, None, train=False), tokenizer


def test_chunked_caption_ranking_equals_dense():
    g = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(37, 8, generator=g), dim=-1)
    texts = F.normalize(torch.randn(11, 8, generator=g), dim=-1)
    captions = [f"c{j}" for j in range(11)]
    own = [{f"c{i % 11}", f"c{(i * 3) % 11}"} for i in range(37)]
    best = (images @ texts.T).argmax(dim=1)
    reference = sum(captions[int(j)] in o for j, o in zip(best, own)) / 37
    for chunk in (1, 5, 37, 100):
        assert caption_ranking_accuracy(images, texts, captions, own, chunk_size=chunk) == reference


def test_zero_shot_matches_brute_force(random_model):
    model, preprocess, tokenizer = random_model
    records = read_records(str(SHAPES / "val.csv"), "image", "caption")[:24]
    labels = [r.fields["shape"] for r in records]
    classnames = (SHAPES / "classes_shape.txt").read_text().split("\n")[:-1]
    templates = ["a {}.", "a photo of a {} shape."]
    metrics = zero_shot_evaluate(model, embed_images(model, [r.image for r in records], preprocess), labels,
                                 tokenizer, classnames=classnames, templates=templates, batch_size=7)

    # reference: one prompt at a time, per-class mean, full sort per image, counts by loop
    with torch.no_grad():
        weights = []
        for name in classnames:
            prompts = torch.stack([model.encode_text(tokenizer([t.format(name)]))[0] for t in templates])
            weights.append(F.normalize(prompts.mean(0), dim=0))
        images = embed_images(model, [r.image for r in records], preprocess, batch_size=1)
    scores = images @ torch.stack(weights, dim=1)  # (N, C)
    top1, top5, per_class = 0, 0, {}
    for i, label in enumerate(labels):
        order = scores[i].argsort(descending=True).tolist()
        truth = classnames.index(label)
        top1 += order[0] == truth
        top5 += truth in order[:5]
        per_class.setdefault(label, []).append(order[0] == truth)
    assert metrics["acc1"] == pytest.approx(top1 / len(labels))
    assert metrics["acc5"] == pytest.approx(top5 / len(labels))
    assert metrics["mean_per_class_recall"] == pytest.approx(sum(sum(v) / len(v) for v in per_class.values()) / len(per_class))
    assert 0 < metrics["acc5"] and metrics["acc1"] <= metrics["acc5"]


def test_labels_may_be_names_or_indices_and_unknown_ones_are_refused():
    assert label_indices(["b", "0", "c"], ["a", "b", "c"]).tolist() == [1, 0, 2]
    from contrastive.errors import DataError

    with pytest.raises(DataError, match="'z'"):
        label_indices(["z"], ["a", "b"])


def test_multi_caption_retrieval_matches_brute_force(random_model):
    model, preprocess, tokenizer = random_model
    records = read_records(str(SHAPES / "val_multi.jsonl"), "image", "captions")[:30]
    assert all(len(r.captions) == 3 for r in records)
    metrics = evaluate_records(model, records, preprocess, tokenizer, batch_size=8)
    # the same embeddings, ranked by brute force over a full similarity table; ties count against the query
    images = embed_images(model, [r.image for r in records], preprocess, batch_size=8)
    texts = [c for r in records for c in r.captions]
    owner = [i for i, r in enumerate(records) for _ in r.captions]
    sim = (images @ embed_texts(model, texts, tokenizer, batch_size=8).T).tolist()  # (N_img, N_txt)
    n_img, n_txt = len(records), len(texts)
    # text -> image: rank of the caption's own image; image -> text: best rank among its three captions
    t2i = [1 + sum(sim[j][t] >= sim[owner[t]][t] for j in range(n_img) if j != owner[t]) for t in range(n_txt)]
    i2t = [min(1 + sum(sim[i][u] >= sim[i][t] for u in range(n_txt) if owner[u] != i)
               for t in range(n_txt) if owner[t] == i) for i in range(n_img)]
    for k in (1, 5, 10):
        assert metrics[f"image_retrieval_recall@{k}"] == pytest.approx(sum(r <= k for r in t2i) / len(t2i))
        assert metrics[f"text_retrieval_recall@{k}"] == pytest.approx(sum(r <= k for r in i2t) / len(i2t))
    assert metrics["image_retrieval_mean_rank"] == pytest.approx(sum(t2i) / len(t2i))
    assert metrics["text_retrieval_mean_rank"] == pytest.approx(sum(i2t) / len(i2t))
    assert metrics["caption_ranking_chance"] == pytest.approx(1 / len(set(texts)))  # duplicates count once


def test_eval_tasks_and_unknown_class_column(random_model):
    model, preprocess, tokenizer = random_model
    records = read_records(str(SHAPES / "val.csv"), "image", "caption")[:6]
    only_zs = evaluate_records(model, records, preprocess, tokenizer, tasks=["zeroshot"], class_key="color")
    assert set(only_zs) == {"acc1", "mean_per_class_recall"} | ({"acc5"} if len({r.fields["color"] for r in records}) >= 5 else set())
    from contrastive.errors import DataError

    with pytest.raises(DataError, match="no class column 'kind'"):
        evaluate_records(model, [Record(r.image, r.captions, {}) for r in records], preprocess, tokenizer,
                         tasks=["zeroshot"], class_key="kind")


def test_eval_cli_zeroshot_json(tiny_run, tmp_path, capsys):
    templates = tmp_path / "templates.txt"
    templates.write_text("a {}.\na photo of a {}.\n")
    out = tmp_path / "res" / "zs.json"
    assert main(["eval", "--task", "zeroshot", "--checkpoint", str(tiny_run), "--data", str(SHAPES / "val.csv"),
                 "--class-key", "shape", "--classes", str(SHAPES / "classes_shape.txt"), "--templates", str(templates),
                 "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert {"dataset", "model", "task", "metrics"} <= set(printed)
    assert printed["task"] == "zeroshot" and printed["dataset"] == "shapes/val"
    assert printed["model"] == "vit_tiny+text_tiny"
    assert set(printed["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert all(0 <= v <= 1 for v in printed["metrics"].values())
    # two classes: no acc5 (on the run's 64-image copy of the held-out table, to keep it quick)
    assert main(["eval", "--task", "zeroshot", "--checkpoint", str(tiny_run), "--data", str(tiny_run.parent / "val64.csv"),
                 "--class-key", "size"]) == 0
    assert set(json.loads(capsys.readouterr().out)["metrics"]) == {"acc1", "mean_per_class_recall"}
    # a label outside the classes file is a user error
    assert main(["eval", "--task", "zeroshot", "--checkpoint", str(tiny_run), "--data", str(SHAPES / "val.csv"),
                 "--class-key", "shape", "--classes", str(SHAPES / "classes_color.txt")]) == 2
    assert "neither a class name" in capsys.readouterr().err


def test_eval_cli_retrieval_json_multi_caption(tiny_run, tmp_path, capsys):
    # the first 48 rows of the multi-caption held-out table, image paths made absolute
    rows = [json.loads(line) for line in (SHAPES / "val_multi.jsonl").read_text().splitlines()[:48]]
    subset = tmp_path / "val_multi48.jsonl"
    subset.write_text("".join(json.dumps({**r, "image": str(SHAPES / r["image"])}) + "\n" for r in rows))
    assert main(["eval", "--task", "retrieval", "--checkpoint", str(tiny_run), "--data", str(subset)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "retrieval" and result["dataset"] == f"{tmp_path.name}/val_multi48"
    speed = result["throughput"]  # every image and caption embedded once, the time split between decode and forward
    assert speed["images"] == 48 and speed["texts"] == sum(len(r["captions"]) for r in rows)
    parts = speed["decode_s"] + speed["image_forward_s"] + speed["text_s"]
    assert speed["images_per_s"] > 0 and 0 < parts <= speed["wall_s"] + 0.02  # (each rounded to 0.01 s)
    assert METRIC_KEYS <= set(result["metrics"])
    assert {"image_retrieval_median_rank", "text_retrieval_mean_rank"} <= set(result["metrics"])
    # the "captions" list was picked up: three captions per image enter the distinct-caption chance
    distinct = {c for r in rows for c in r["captions"]}
    assert len(distinct) > 100
    assert result["metrics"]["caption_ranking_chance"] == pytest.approx(1 / len(distinct))


def test_training_logs_retrieval_and_zero_shot_eval(tiny_run):
    rows = read_metrics(tiny_run)
    evals = [r for r in rows if "val/acc1" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert {"val/text_retrieval_recall@1", "val/acc5", "val/mean_per_class_recall"} <= set(evals[-1])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"val/acc1", "val/text_retrieval_recall@1", "loss"} <= set(tags)
    assert [e.step for e in events.Scalars("val/acc1")] == [1, 2]
    # the progress bar shows the previous eval's headline metrics next to the loss
    bar = (tiny_run / "progress_bar.txt").read_text()
    assert f"zs@1={evals[0]['val/acc1']:.3f}" in bar and "i2t@1=" in bar


def test_eval_postfix_names():
    assert eval_postfix({"val/acc1": 0.5, "val/caption_ranking_acc1": 0.25, "loss": 3.0}) == {"rank@1": "0.250", "zs@1": "0.500"}


def test_zero_shot_config_without_class_column_is_refused(tmp_path):
    from contrastive.config import load_config
    from contrastive.errors import DataError
    from contrastive.training.recipe import train

    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", [f"train.output_dir={tmp_path}", "train.max_steps=1",
                                                         "eval.tasks=[zeroshot]", "eval.zeroshot_class_key=kind"])
    with pytest.raises(DataError, match="kind"):
        train(cfg)
