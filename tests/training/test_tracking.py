"""Experiment trackers (`train.report_to`): W&B offline and MLflow on a local store, read back after a run and its
resumption, and the one-line error for a tracker that is not installed."""

import json
import sys

import pytest

import contrastive
from contrastive.config import load_config
from contrastive.training.recipe import train
from contrastive.training.tracking.mlflow import metric_name
from tests.conftest import ROOT
from tests.helpers.wandb_records import read_run

SMALL = ["model.image_encoder_args={layers: 1}", "model.text_encoder_args={layers: 1}", "model.image_size=32",
         "model.embed_dim=16", "train.batch_size=8", "data.val=", "data.num_workers=0", "train.progress_bar=false",
         "train.log_every_n_steps=1", "train.save_every_n_steps=2", "train.run_name=run", "train.project=tracked"]


def tracked_cfg(tmp_path, *overrides):
    return load_config(ROOT / "configs/shapes_tiny.yaml", [*SMALL, f"train.output_dir={tmp_path}", *overrides])


def jsonl_losses(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines if "loss" in m}


def test_wandb_offline_and_mlflow_log_the_run_and_its_resumption(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # artifacts beside the store (a sqlite store alone would put them under ./mlruns)
    MlflowClient().create_experiment("tracked", artifact_location=(tmp_path / "artifacts").as_uri())
    report = "train.report_to=[tensorboard, wandb, mlflow]"
    run = train(tracked_cfg(tmp_path, report, "train.max_steps=2"))
    ids = json.loads((run / "tracking.json").read_text())
    # the same command continued further: the same tracked runs go on
    assert train(tracked_cfg(tmp_path, report, "train.max_steps=4", "train.resume=true")) == run
    assert json.loads((run / "tracking.json").read_text()) == ids
    losses = jsonl_losses(run)
    assert sorted(losses) == [1, 2, 3, 4]

    first, second = (read_run(p) for p in sorted((run / "wandb").glob("offline-run-*")))
    assert first["run"].run_id == second["run"].run_id == ids["wandb"]
    assert first["run"].project == "tracked" and first["run"].display_name == "run"
    logged = {h["_step"]: h["loss"] for w in (first, second) for h in w["history"] if "loss" in h}
    assert logged == losses
    assert {"lr", "grad_norm", "logit_scale", "samples_per_s"} <= set(second["history"][-1])
    assert second["summary"]["steps"] == 4 and second["summary"]["data"]["captions_seen"] == 32
    assert second["config"]["distill"]["weight"] == 0.5 and second["config"]["train"]["max_steps"] == 4

    client = MlflowClient()
    (found,) = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert found.info.run_id == ids["mlflow"] and found.info.run_name == "run"
    assert found.info.status == "FINISHED"
    history = client.get_metric_history(ids["mlflow"], "loss")
    assert {m.step: pytest.approx(m.value) for m in history} == losses
    assert found.data.params["train.max_steps"] == "2"  # the parameters of the run as it was created
    summary = json.loads(open(client.download_artifacts(ids["mlflow"], "summary.json", str(tmp_path))).read())
    assert summary["steps"] == 4
    assert (run / "tensorboard").is_dir()


def test_a_tracker_that_is_not_installed_fails_in_one_line_before_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what Python does with a package that is not there
    with pytest.raises(contrastive.ConfigError,
                       match=r'^train.report_to: mlflow is not installed; pip install -e "\.\[mlflow\]"') as e:
        train(tracked_cfg(tmp_path, "train.report_to=[mlflow]", "train.max_steps=1"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_mlflow_metric_names_keep_their_meaning():
    assert metric_name("val/text_retrieval_recall@1") == "val/text_retrieval_recall_at_1"
    assert metric_name("loss") == "loss"
