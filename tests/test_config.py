import subprocess
from pathlib import Path

import pytest
import yaml

from contrastive.config import (
    Config,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    LoraConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    ReferenceConfig,
    TowerTrainConfig,
    TrainConfig,
    config_to_dict,
    load_config,
    save_config,
    validate,
)
from contrastive.errors import ConfigError
from tests.conftest import PYTHON, ROOT, subprocess_env

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_validates(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    sources = cfg.data.train_sources() + [cfg.data.val_source()]
    for p in (s.path for s in sources if s is not None):
        if p.startswith(("hf://", "hf:")) or "{" in p:
            continue
        if Path(p).parts[0] == "..":  # a benchmark built outside the checkout: the config must say how
            assert "prepare.py" in path.read_text(), f"{path.name} uses {p} without saying how to build it"
        else:
            assert (ROOT / p).exists(), f"{path.name} points at missing data {p}"


def test_required_keys_exist():
    cfg = Config()
    for key in ["model.image_encoder", "model.text_encoder", "model.embed_dim", "loss.name", "data.train",
                "data.image_key", "data.caption_key", "optim.lr", "optim.weight_decay", "train.batch_size",
                "train.epochs", "train.max_steps", "train.output_dir", "train.seed", "train.precision", "train.resume"]:
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key


def test_overrides_cast_to_field_types():
    cfg = load_config(ROOT / "configs/shapes_tiny.yaml",
                      ["train.max_steps=200", "optim.lr=5e-4", "train.resume=true", "optim.betas=[0.9,0.95]",
                       "model.init_logit_bias=-10", "loss.name=siglip"])
    assert cfg.train.max_steps == 200 and isinstance(cfg.train.max_steps, int)
    assert cfg.optim.lr == 5e-4 and cfg.train.resume is True
    assert cfg.optim.betas == [0.9, 0.95]
    assert cfg.model.init_logit_bias == -10.0


@pytest.mark.parametrize("override,expected", [
    ("optim.lrr=1", "optim.lr"),
    ("train.max_step=3", "train.max_steps"),
    ("trian.seed=1", "train.seed"),
])
def test_unknown_key_names_closest(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override", ["train.max_steps=abc", "optim.lr=fast", "train.resume=maybe", "loss.name=l2",
                                      "train.batch_size=0", "loss.chunk_size=-1", "train.micro_batch_size=999",
                                      "train.compile_mode=fastest"])
def test_bad_values_rejected(override):
    with pytest.raises(ConfigError):
        load_config(ROOT / "configs/shapes_tiny.yaml", [override])


@pytest.mark.parametrize("overrides,expected", [
    ([], "text_retrieval_recall@1"),  # auto, with the default retrieval task
    (["eval.best_metric=image_retrieval_recall@5"], "image_retrieval_recall@5"),
    (["eval.best_metric=caption_ranking_acc1"], "caption_ranking_acc1"),
    (["eval.best_metric="], ""),  # no best checkpoint
    (["eval.best_metric=text_retrieval_recal@1"], None),  # a typo would silently never pick a best
    (["eval.best_metric=text_retrieval_mean_rank"], None),  # lower is better: max would pick the worst
    (["eval.best_metric=acc1"], None),  # a zero-shot metric without the zero-shot task
    (["eval.tasks=[retrieval, zeroshot]", "eval.zeroshot_class_key=shape", "eval.best_metric=acc1"], "acc1"),
    (["eval.tasks=[retrieval, zeroshot]", "eval.zeroshot_class_key=shape"], "text_retrieval_recall@1"),  # auto
    (["eval.tasks=[zeroshot]", "eval.zeroshot_class_key=shape"], "acc1"),  # auto, without retrieval
])
def test_best_metric_must_be_one_the_evaluation_reports(overrides, expected):
    """`expected`: the metric the run keeps its best checkpoint by; None: the config is refused."""
    if expected is not None:
        assert load_config(None, overrides).eval.best_metric_name() == expected
    else:
        with pytest.raises(ConfigError, match="eval.best_metric"):
            load_config(None, overrides)


def test_siglip_needs_a_logit_bias():
    with pytest.raises(ConfigError, match="loss.name=siglip needs model.init_logit_bias"):
        load_config(None, ["loss.name=siglip"])
    cfg = load_config(None, ["loss.name=siglip", "model.init_logit_bias=-10", "model.init_logit_scale=2.3026"])
    assert (cfg.loss.name, cfg.model.init_logit_bias, cfg.model.init_logit_scale) == ("siglip", -10.0, 2.3026)
    assert load_config(None, ["model.init_logit_bias=-10"]).loss.name == "clip"  # a bias alone is allowed


def test_unknown_key_in_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"optim": {"learning_rate": 1e-3}}))
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(p)


def test_roundtrip(tmp_path):
    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", ["train.seed=7"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_cli_unknown_key_exit_code_2():
    r = subprocess.run([PYTHON, "-m", "contrastive", "train", "--config", "configs/shapes_tiny.yaml", "optim.lrr=1"],
                       cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "optim.lr" in lines[0] and "Traceback" not in r.stderr


@pytest.mark.parametrize("make,key", [
    (lambda: LossConfig(name="l2"), "loss.name"),
    (lambda: TrainConfig(precision="fp8"), "train.precision"),
    (lambda: TrainConfig(batch_size=0), "train.batch_size"),
    (lambda: DataConfig(on_bad_sample="ignore"), "data.on_bad_sample"),
    (lambda: EvalConfig(tasks=["retrieval", "captioning"]), "eval.tasks[1]"),
    (lambda: EvalConfig(reference=[ReferenceConfig(data="r.csv", task="zero-shot")]), "eval.reference[0].task"),
    (lambda: OptimConfig(betas=[0.9]), "optim.betas"),
    (lambda: OptimConfig(eps=-1.0), "optim.lr, optim.weight_decay, optim.grad_clip, optim.warmup_steps and optim.eps"),
    (lambda: ModelConfig(context_length=1), "model.context_length"),
    (lambda: FinetuneConfig(image=TowerTrainConfig(lora=LoraConfig(rank=-1))), "finetune.image.lora"),
])
def test_sections_validate_themselves_when_made(make, key):
    with pytest.raises(ConfigError) as e:
        make()
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


@pytest.mark.parametrize("override,message", [
    ("loss.name=l2", "loss.name='l2' is not one of 'clip', 'siglip'"),
    ("train.compile_mode=fastest", "train.compile_mode='fastest' is not one of 'default', 'reduce-overhead'"),
    ("data.format=xlsx", "data.format='xlsx' is not one of '', 'csv'"),
    ("eval.tasks=[retrieval,zs]", "eval.tasks[1]='zs' is not one of 'retrieval', 'zeroshot'"),
])
def test_choices_are_checked_when_cast(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(message)


def test_choices_come_from_the_field_types():
    cfg = load_config(None, ["train.precision=bf16", "data.format=jsonl", "eval.tasks=zeroshot",
                             "eval.zeroshot_class_key=shape"])
    assert (cfg.train.precision, cfg.data.format, cfg.eval.tasks) == ("bf16", "jsonl", ["zeroshot"])


def test_a_section_changed_after_it_was_made_is_checked_with_the_config():
    cfg = Config()
    cfg.train.keep_checkpoints = 0
    with pytest.raises(ConfigError, match="train.keep_checkpoints must be > 0"):
        validate(cfg)
