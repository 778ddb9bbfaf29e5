"""Models in and out of other formats, above the model builder: `load` (a transformers directory, a native checkpoint
or a run directory, told apart explicitly), transformers directories and bundled HF towers read into models and
configs (`hf_import`, `pretrained`), and export to transformers, sentence-transformers and ONNX (`hf_export`,
`st_export`, `onnx_export`). The transformers tokenizer stays below, in `contrastive.hf_tokenizer`: building a
tokenizer needs it."""

from .hf_export import export_hf
from .loading import create_model_and_transforms, load
from .onnx_export import export_onnx

__all__ = ["create_model_and_transforms", "export_hf", "export_onnx", "load"]
