"""Export a model as one self-contained ONNX graph: image -> probabilities."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import compose, helper

from photolabel.errors import ExportError, OutputError
from photolabel.fsutil import atomic_write_bytes
from photolabel.heads import HEAD_INPUT, HEAD_OUTPUT, ONNX_IR_VERSION
from photolabel.model import Model

EXPORT_INPUT = "image"
EXPORT_OUTPUT = "probabilities"


def export_onnx(model: Model, out: str | Path, *, head_only: bool = False) -> Path:
    """Write ``model`` as ONNX to ``out``.

    The full graph takes ``image``: uint8 RGB, N x H x W x 3, resized (bilinear) to the
    backbone's input size, and gives ``probabilities``: float32 N x C in the order of
    ``model.labels`` (also stored in the graph's metadata as ``labels``). With
    ``head_only`` the graph takes the embedding instead.

    Raises:
        ExportError: the backbone has no ONNX graph (``classic``) and ``head_only`` is off.
    """
    head_graph = model.head.to_onnx()
    if head_only:
        combined = head_graph
    else:
        backbone = model.backbone
        onnx_path = getattr(backbone, "onnx_path", None)
        if onnx_path is None:
            raise ExportError(
                f"backbone {backbone.name!r} computes its features in numpy and has no ONNX graph; "
                "only the head can be exported (the features are then computed with photolabel)",
                remedy="head_only",
            )
        backbone_graph = onnx.load(str(onnx_path()))
        combined = _merge(backbone_graph, head_graph)
    combined.ir_version = ONNX_IR_VERSION
    del combined.metadata_props[:]
    for key, value in (
        ("labels", "\n".join(model.labels)),
        ("model_id", model.model_id),
        ("backbone", model.card.backbone.name),
        ("input_size", "x".join(str(v) for v in model.card.backbone.image_size)),
    ):
        entry = combined.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(combined)
    out = Path(out)
    try:
        atomic_write_bytes(out, combined.SerializeToString())
    except OSError as exc:
        raise OutputError(f"{out}: cannot write the ONNX file ({exc.strerror or exc})") from None
    return out


def _merge(backbone_graph: onnx.ModelProto, head_graph: onnx.ModelProto) -> onnx.ModelProto:
    backbone_output = backbone_graph.graph.output[0].name
    opsets: dict[str, int] = {}
    for model in (backbone_graph, head_graph):
        for entry in model.opset_import:
            opsets[entry.domain] = max(opsets.get(entry.domain, 0), entry.version)
    for model in (backbone_graph, head_graph):
        del model.opset_import[:]
        model.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in sorted(opsets.items()))
        model.ir_version = ONNX_IR_VERSION
    head_graph = compose.add_prefix(head_graph, prefix="head/")
    merged = compose.merge_models(
        backbone_graph, head_graph, io_map=[(backbone_output, f"head/{HEAD_INPUT}")],
        producer_name="photolabel",
    )
    for output in merged.graph.output:
        if output.name == f"head/{HEAD_OUTPUT}":
            _rename(merged.graph, output.name, EXPORT_OUTPUT)
            break
    return merged


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if n == old else n for n in node.output]
        node.input[:] = [new if n == old else n for n in node.input]
    for output in graph.output:
        if output.name == old:
            output.name = new
