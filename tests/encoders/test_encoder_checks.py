"""Encoder arguments of hf:, timm: and torchvision: towers are refused before anything is built or downloaded."""

import pytest

import contrastive  # noqa: F401  (registers the sources)
from contrastive.encoders.registry import check_encoder_args


@pytest.mark.parametrize("name,args,expected", [
    ("timm:resnet18", {"depth": 2}, "unexpected keyword argument 'depth'"),
    ("timm:resnet18", {"drop_rate": -1}, "drop_rate must be in [0, 1)"),
    ("timm:resnet18", {"pooling": "max"}, "pooling 'max' is not one of"),
    ("timm:resnet18", {"pretrained": "yes"}, "pretrained expects bool"),
    ("timm:resnt18", {}, "did you mean 'resnet18'"),
    ("timm:vit_tiny_patch16_224", {"embed_dim": 100}, "divisible"),
    ("timm:resnet18", {"weights": "nope.safetensors"}, "file not found"),
    ("torchvision:resnet18", {"depth": 2}, "takes no argument 'depth'"),
    ("torchvision:resnt18", {}, "did you mean 'resnet18'"),
    ("torchvision:resnet18", {"pooling": "mean"}, "pooling 'mean' is not one of"),
    ("hf:org/model", {"poolin": "mean"}, "did you mean 'pooling'"),
    ("hf:org/model", {"pooling": "max"}, "pooling 'max' is not one of"),
    ("hf:org/model", {"pretrained": 3}, "pretrained expects bool"),
    ("hf:/nowhere/model", {}, "no such directory, and not a hub id"),
])
def test_source_arguments_that_cannot_build_are_one_line_errors(name, args, expected):
    with pytest.raises(ValueError) as e:
        check_encoder_args(name, args, build=True)
    assert expected in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name,args", [("timm:resnet18", {"pooling": "mean", "drop_rate": 0.1}),
                                       ("timm:vit_tiny_patch16_224.augreg_in21k", {"img_size": 64}),
                                       ("torchvision:resnet18", {}), ("hf:org/model", {"pooling": "mean"})])
def test_source_arguments_that_build_pass(name, args):
    check_encoder_args(name, args, build=True)
