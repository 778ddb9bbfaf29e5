"""Model files in and out: the native checkpoint format (`checkpoint`: safetensors weights, weights-only training
state, JSON meta, atomic writes), where commands may write and one writer per output (`outputs`), `load` (a
transformers directory, a native checkpoint or a run directory, told apart explicitly; `loading`), transformers
directories and bundled HF towers read into models and configs (`hf_import`, `pretrained`), and export to
transformers, sentence-transformers and ONNX (`hf_export`, `st_export`, `onnx_export`). Import from the modules;
this package imports nothing on its own, so that the checkpoint format can be read without the model code."""
