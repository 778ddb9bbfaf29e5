"""What to train: locking, last-N unfreezing, frozen norms / BN statistics, per-tower LR, layer-wise decay."""

import math

import pytest
import torch
from torch import nn

import contrastive
from contrastive.interop.checkpoint import load_state
from contrastive.config import FinetuneConfig, OptimConfig, TowerTrainConfig, load_config
from contrastive.encoders import create_encoder
from contrastive.model import ContrastiveModel
from contrastive.training.recipe import train
from contrastive.training.finetune import apply_finetune, finetune_param_groups, layer_ids, lr_scales
from contrastive.training.optim import build_optimizer, param_groups
from tests.conftest import ROOT


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each (conftest)


def tiny_model(image="vit_tiny", **image_args) -> ContrastiveModel:
    image_enc = create_encoder(image, modality="image", **({"layers": 2} if image == "vit_tiny" else {}), **image_args)
    return ContrastiveModel(image_enc, create_encoder("text_tiny", layers=3), 16)


def batch(model, n=4):
    size = getattr(model.image_encoder, "image_size", 64)
    tokens = torch.randint(0, 256, (n, 12))
    tokens[:, -1] = model.text_encoder.eot_token_id
    return torch.randn(n, 3, size, size), tokens


def train_steps(model, cfg: FinetuneConfig, steps=3, lr=1e-2):
    optim_cfg = OptimConfig(lr=lr, weight_decay=0.5, fused=False)
    opt = build_optimizer(model, optim_cfg, finetune_param_groups(model, optim_cfg, cfg))
    model.train()
    for _ in range(steps):
        out = model(*batch(model))
        loss = -(out.logits_per_image.log_softmax(-1).diagonal().mean())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# softmax is invariant to a bias on the keys (it adds one constant per query row), so the true gradient of every
# k_proj.bias is zero: what it gets is rounding noise, which Adam's normalisation turns into a full-size step
KEY_BIAS = "self_attn.k_proj.bias"


def optimizer_params(opt: torch.optim.Optimizer) -> list[int]:
    return [id(p) for g in opt.param_groups for p in g["params"]]


def test_locked_tower_is_bitwise_unchanged_and_the_rest_trains():
    model = tiny_model()
    cfg = FinetuneConfig(text=TowerTrainConfig(lock=True))
    apply_finetune(model, cfg)
    text_before, image_before = snapshot(model.text_encoder), snapshot(model.image_encoder)
    proj_before = model.text_projection.weight.detach().clone()
    train_steps(model, cfg)
    for k, v in model.text_encoder.state_dict().items():
        assert torch.equal(v, text_before[k]), k
    assert not model.text_encoder.training  # locked towers run in eval mode even inside model.train()
    assert not torch.equal(model.text_projection.weight, proj_before)
    # every image tensor with a true gradient moves (the key biases have none: see the next test)
    unchanged = {k for k, v in model.image_encoder.state_dict().items() if torch.equal(v, image_before[k])}
    assert unchanged <= {k for k in image_before if k.endswith(KEY_BIAS)}


def test_key_biases_have_zero_gradient_up_to_rounding():
    model = tiny_model()
    model.train()
    out = model(*batch(model))
    (-(out.logits_per_image.log_softmax(-1).diagonal().mean())).backward()
    key_biases = [(n, p) for n, p in model.named_parameters() if n.endswith(KEY_BIAS)]
    assert len(key_biases) == 2 + 3  # one per block of either tower
    for name, p in key_biases:
        weight = model.get_parameter(name.removesuffix("bias") + "weight")
        # float32 rounding (~1e-7 relative), far below the real gradient of the same layer's weight
        assert p.grad.abs().max() <= 1e-5 * weight.grad.abs().max(), name
    # the other biases of the same attention are not special
    q_bias = model.get_parameter("image_encoder.encoder.layers.0.self_attn.q_proj.bias")
    q_weight = model.get_parameter("image_encoder.encoder.layers.0.self_attn.q_proj.weight")
    assert q_bias.grad.abs().max() > 1e-3 * q_weight.grad.abs().max()


def test_unlocked_layers_freeze_everything_below_the_last_n_blocks():
    model = tiny_model()
    cfg = FinetuneConfig(text=TowerTrainConfig(unlocked_layers=1))
    apply_finetune(model, cfg)
    trainable = {n for n, p in model.text_encoder.named_parameters() if p.requires_grad}
    # naive reference: block 2 (the last of 3) and the final norm, nothing else
    expected = {n for n, _ in model.text_encoder.named_parameters()
                if n.startswith("encoder.layers.2.") or n.startswith("final_layer_norm.")}
    assert trainable == expected
    before = snapshot(model.text_encoder)
    train_steps(model, cfg)
    for name, v in model.text_encoder.state_dict().items():
        if name not in expected:
            assert torch.equal(v, before[name]), name
        elif not name.endswith(KEY_BIAS):  # no true gradient, so moving or not is rounding noise
            assert not torch.equal(v, before[name]), name


def test_unlocked_layers_zero_keeps_only_the_head():
    model = tiny_model()
    apply_finetune(model, FinetuneConfig(image=TowerTrainConfig(unlocked_layers=0)))
    assert {n for n, p in model.image_encoder.named_parameters() if p.requires_grad} == {"post_layernorm.weight", "post_layernorm.bias"}


FREEZING = {
    "lock": FinetuneConfig(text=TowerTrainConfig(lock=True)),
    "unlocked_layers": FinetuneConfig(image=TowerTrainConfig(unlocked_layers=0), text=TowerTrainConfig(unlocked_layers=1)),
    "freeze_norms": FinetuneConfig(image=TowerTrainConfig(freeze_norms=True)),
    # extra groups by lr scale must not bring frozen parameters back
    "layer_decay": FinetuneConfig(layer_decay=0.5, image=TowerTrainConfig(lock=True, lr_scale=0.1),
                                  text=TowerTrainConfig(unlocked_layers=2, lr_scale=0.5)),
}


@pytest.mark.parametrize("case", list(FREEZING))
def test_frozen_parameters_are_not_in_the_optimizer(case):
    # a frozen parameter inside AdamW would also stay bitwise unchanged (its grad is None): check membership
    model = tiny_model()
    cfg = FREEZING[case]
    apply_finetune(model, cfg)
    opt = build_optimizer(model, OptimConfig(fused=False), finetune_param_groups(model, OptimConfig(), cfg))
    members = optimizer_params(opt)
    frozen = {id(p): n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen  # the case freezes something
    assert len(members) == len(set(members))  # no parameter in two groups
    assert not [frozen[i] for i in members if i in frozen]
    assert set(members) == {id(p) for p in model.parameters() if p.requires_grad}


def test_train_gives_the_optimizer_only_trainable_parameters(tmp_path):
    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", [
        "model.image_encoder_args={layers: 2}", "model.text_encoder_args={layers: 2}", "data.num_workers=0",
        "train.progress_bar=false", "train.batch_size=16", "train.max_steps=1", "data.val=",
        f"train.output_dir={tmp_path}", "train.run_name=run",
        "finetune.text.lock=true", "finetune.image.unlocked_layers=1"])
    run = train(cfg)
    state = load_state(run / "checkpoints" / "step_00000001")["optimizer"]
    model = contrastive.load(run)[0]
    apply_finetune(model, cfg.finetune)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) < len(list(model.parameters()))
    assert sum(len(g["params"]) for g in state["param_groups"]) == len(trainable)
    # Adam moments exist for exactly the trainable elements, none for the frozen tower
    assert sum(s["exp_avg"].numel() for s in state["state"].values()) == sum(p.numel() for p in trainable)


def test_freeze_norms():
    model = tiny_model()
    apply_finetune(model, FinetuneConfig(image=TowerTrainConfig(freeze_norms=True)))
    frozen = {n for n, p in model.image_encoder.named_parameters() if not p.requires_grad}
    assert frozen and all("norm" in n or "layrnorm" in n for n in frozen)
    assert len(frozen) == 2 * (2 * 2 + 2)  # two per block norm (2 per block, 2 blocks), pre and post norms


def test_frozen_batchnorm_statistics_and_weights_stay_bitwise():
    model = tiny_model("timm:test_resnet")
    cfg = FinetuneConfig(image=TowerTrainConfig(freeze_bn_stats=True, freeze_norms=True))
    apply_finetune(model, cfg)
    bns = {n: m for n, m in model.image_encoder.named_modules() if isinstance(m, nn.BatchNorm2d)}
    before = {n: snapshot(m) for n, m in bns.items()}
    assert bns
    conv = next(m for m in model.image_encoder.modules() if isinstance(m, nn.Conv2d))
    conv_before = conv.weight.detach().clone()
    model.image_encoder.image_size = 64
    train_steps(model, cfg, steps=2)
    for n, m in bns.items():
        for k, v in m.state_dict().items():
            if k != "num_batches_tracked":
                assert torch.equal(v, before[n][k]), (n, k)
    assert not torch.equal(conv.weight, conv_before)


def test_layer_decay_scales_match_a_naive_reference():
    model = tiny_model()
    cfg = FinetuneConfig(layer_decay=0.5, image=TowerTrainConfig(lr_scale=0.1))
    scales = lr_scales(model, cfg)
    for name, _ in model.named_parameters():
        if name.startswith("image_encoder.encoder.layers."):
            i = int(name.split(".")[3])
            expected = 0.1 * 0.5 ** (2 - i)  # block i of 2 -> layer id i + 1, scale decay ** (L + 1 - id)
        elif name.startswith("image_encoder.post_layernorm"):
            expected = 0.1
        elif name.startswith("image_encoder."):
            expected = 0.1 * 0.5**3  # embeddings and pre-norm
        elif name.startswith("text_encoder.encoder.layers."):
            expected = 0.5 ** (3 - int(name.split(".")[3]))
        elif name.startswith("text_encoder.final_layer_norm"):
            expected = 1.0
        elif name.startswith("text_encoder."):
            expected = 0.5**4
        else:
            expected = 1.0  # projections and temperature
        assert math.isclose(scales[name], expected, rel_tol=1e-12), name
    opt = build_optimizer(model, OptimConfig(lr=2e-3, fused=False), finetune_param_groups(model, OptimConfig(), cfg))
    by_param = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert math.isclose(by_param[id(p)], 2e-3 * scales[name], rel_tol=1e-9), name


def test_default_settings_give_the_plain_two_groups():
    model = tiny_model()
    ours = finetune_param_groups(model, OptimConfig(), FinetuneConfig())
    plain = param_groups(model, OptimConfig())
    assert [g["name"] for g in ours] == [g["name"] for g in plain]
    for a, b in zip(ours, plain):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
        assert a["weight_decay"] == b["weight_decay"]


def test_layer_ids_order_embeddings_blocks_head():
    ids, n = layer_ids(create_encoder("vit_tiny", layers=3))
    assert n == 3
    assert ids["embeddings.patch_embedding.weight"] == 0 and ids["pre_layrnorm.weight"] == 0
    assert ids["encoder.layers.1.mlp.fc1.weight"] == 2 and ids["post_layernorm.bias"] == 4


def test_grad_checkpointing_gives_the_same_gradients():
    model = tiny_model()
    images, tokens = batch(model)

    def grads():
        model.zero_grad()
        out = model(images, tokens)
        (out.image_embeds @ out.text_embeds.T).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.train()
    plain = grads()
    model.set_grad_checkpointing(True)
    assert model.image_encoder.encoder.grad_checkpointing
    for n, g in grads().items():
        torch.testing.assert_close(g, plain[n], rtol=1e-5, atol=1e-6)


def test_config_keys_and_validation():
    cfg = load_config(None, ["finetune.image.lock=true", "finetune.text.unlocked_layers=2", "finetune.layer_decay=0.8",
                             "finetune.text.lr_scale=0.1"])
    assert cfg.finetune.image.lock and cfg.finetune.text.unlocked_layers == 2 and cfg.finetune.text.lr_scale == 0.1
    with pytest.raises(Exception, match="layer_decay"):
        load_config(None, ["finetune.layer_decay=0"])
    with pytest.raises(Exception, match="did you mean"):
        load_config(None, ["finetune.image.lok=true"])
