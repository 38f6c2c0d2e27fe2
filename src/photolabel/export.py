"""Export a model as one self-contained ONNX graph: image -> probabilities (calibrated) and unknown."""

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
EXPORT_UNKNOWN = "unknown"


def export_onnx(model: Model, out: str | Path, *, head_only: bool = False) -> Path:
    """Write ``model`` as ONNX to ``out``.

    The full graph takes ``image``: uint8 RGB, N x H x W x 3, resized (bilinear) to the
    backbone's input size, and gives ``probabilities``: float32 N x C in the order of
    ``model.labels`` (also stored in the graph's metadata as ``labels``), divided by the
    model's temperature as :meth:`Model.predict_embeddings` does. A model with the unknown
    answer has a second output, ``unknown``: bool N, True where the model answers unknown
    (equal to the Python model's but at a threshold's float32 rounding). With ``head_only``
    the graph takes the embedding (float32 N x D) instead.

    Raises:
        ExportError: the backbone has no ONNX graph (``classic``) and ``head_only`` is off.
    """
    head_graph = model.head.to_onnx()
    if head_only:
        combined, embedding = head_graph, HEAD_INPUT
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
        embedding = backbone_graph.graph.output[0].name  # merge_models gives the head's input this name
        combined = _merge(backbone_graph, head_graph)
    _append_postprocessing(combined.graph, model, embedding)
    combined.ir_version = ONNX_IR_VERSION
    del combined.metadata_props[:]
    for key, value in (
        ("labels", "\n".join(model.labels)),
        ("model_id", model.model_id),
        ("backbone", model.card.backbone.name),
        ("input_size", "x".join(str(v) for v in model.card.backbone.image_size)),
        ("temperature", f"{model.post.temperature:g}"),
        *((("unknown", f"output '{EXPORT_UNKNOWN}': {model.post.unknown.to_card()['rule']} "
                       f"(distance_threshold {model.post.unknown.distance_threshold:g}, "
                       f"confidence_threshold {model.post.unknown.confidence_threshold:g})"),)
          if model.post.unknown is not None else ()),
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


def _append_postprocessing(graph: onnx.GraphProto, model: Model, embedding: str) -> None:
    """After the head's ``probabilities``: the temperature (the output keeps its name), then the
    ``unknown`` output when the model has the unknown answer."""
    calibration = model.post.calibration
    if calibration is not None and calibration.temperature != 1.0:
        head_output = "head/uncalibrated_probabilities"
        for node in graph.node:  # the head now produces head_output; the graph's output is recomputed from it
            node.output[:] = [head_output if n == EXPORT_OUTPUT else n for n in node.output]
            node.input[:] = [head_output if n == EXPORT_OUTPUT else n for n in node.input]
        nodes, initializers = calibration.onnx_nodes(head_output, EXPORT_OUTPUT)
        graph.node.extend(nodes)
        graph.initializer.extend(initializers)
    if model.post.unknown is not None:
        nodes, initializers = model.post.unknown.onnx_nodes(embedding, EXPORT_OUTPUT, EXPORT_UNKNOWN)
        graph.node.extend(nodes)
        graph.initializer.extend(initializers)
        graph.output.append(helper.make_tensor_value_info(EXPORT_UNKNOWN, onnx.TensorProto.BOOL, ["batch"]))


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
