"""onnxruntime backend for CPU deployments: an ``.onnx`` file (or a directory holding ``onnx/model.onnx``
or ``model.onnx`` next to ``preprocessor_config.json``), one named output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from presel.errors import PreselError
from presel.features.backends.spec import BackendSpec
from presel.features.images import Preprocess


def onnx_paths(model: str) -> tuple[Path, Path | None]:
    """(onnx file, preprocessor_config.json or None)."""
    p = Path(model)
    if p.is_file():
        cands = [p.parent / "preprocessor_config.json", p.parent.parent / "preprocessor_config.json"]
        return p, next((c for c in cands if c.is_file()), None)
    if p.is_dir():
        for f in (p / "onnx" / "model.onnx", p / "model.onnx"):
            if f.is_file():
                pc = p / "preprocessor_config.json"
                return f, pc if pc.is_file() else None
        raise PreselError(f"--model {model}: no onnx/model.onnx or model.onnx in this directory; "
                          "point --model at an .onnx file or use --backend hf")
    raise PreselError(f"--model {model}: not found; the onnx backend needs a local .onnx file or model directory")


def onnx_preprocess(spec: BackendSpec) -> Preprocess:
    f, pc = onnx_paths(spec.model)
    if pc is None:
        pre = Preprocess()  # ImageNet mean/std, resize 256, crop 224 (DINOv2 defaults)
        return pre.with_image_size(spec.image_size) if spec.image_size else pre
    with open(pc, encoding="utf-8") as fh:
        d = json.load(fh)
    return Preprocess.from_processor_dict(d, spec.image_size, source=str(pc))


class OnnxBackend:
    def __init__(self, spec: BackendSpec):
        import onnxruntime as ort

        self.spec = spec
        self.preprocess = onnx_preprocess(spec)
        path, _ = onnx_paths(spec.model)
        so = ort.SessionOptions()
        if spec.threads:
            so.intra_op_num_threads = spec.threads
            so.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if spec.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        outs = [o.name for o in self.session.get_outputs()]
        self.output = spec.onnx_output or ("last_hidden_state" if "last_hidden_state" in outs else outs[0])
        if self.output not in outs:
            raise PreselError(f"{path}: no output named '{self.output}'; outputs are {outs}")
        inp = self.session.get_inputs()[0]
        self.input = inp.name
        h, w = (inp.shape[2], inp.shape[3]) if len(inp.shape) == 4 else (None, None)
        want = self.preprocess.out_size
        if isinstance(h, int) and isinstance(w, int) and (h, w) != tuple(want):
            raise PreselError(f"{path}: the graph takes {h}x{w} images but preprocessing gives {want[0]}x{want[1]}; "
                              f"pass --image-size {h} or use --backend hf")

    def embed(self, batch: Any) -> np.ndarray:
        x = self.preprocess.normalize_numpy(np.asarray(batch))
        y = self.session.run([self.output], {self.input: x})[0]
        if y.ndim == 2:  # already pooled by the graph
            return y.astype(np.float32)
        if self.spec.pooling == "cls":
            return y[:, 0].astype(np.float32)
        if self.spec.pooling == "mean":
            return y[:, 1:].mean(axis=1).astype(np.float32)
        raise PreselError(f"{self.spec.model}: output '{self.output}' is N x T x d; --pooling pooler needs a pooled "
                          "N x d output (pass --onnx-output) or use --pooling cls/mean")
