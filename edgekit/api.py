"""The Python API: the same verbs as the CLI, one function each.

    from edgekit import api
    api.export("litepose", "lp.onnx")
    api.quantize("lp.onnx", "lp.q.onnx", weights=4, activations=8)
    api.compile("lp.q.onnx", "x86-64", "build/lp")
    outputs = api.run("build/lp", {"image": x})
    metrics = api.evaluate("litepose", "build/lp", count=20)

Each verb reads the previous stage's file and writes its own; the CLI in
`edgekit/commands/` is a thin layer over these functions.
"""
from __future__ import annotations

import os
from pathlib import Path


def export(model: str, output, *, config: str = "tiny", input_shapes=None, opset: int | None = None,
           checkpoint=None, random_init: bool = False):
    """Zoo model -> verified ONNX file (checked with onnx.checker and against PyTorch in onnxruntime)."""
    from edgekit.export import DEFAULT_OPSET, export_zoo

    return export_zoo(model, output, config=config, input_shapes=input_shapes,
                      opset=opset or DEFAULT_OPSET, checkpoint=checkpoint, random_init=random_init)


def quantize(model_path, output, *, weights: int = 4, activations: int = 4, method: str = "full",
             fast: bool = False, calib: str | None = None, calib_count: int = 32, preprocess: str | None = None,
             keep_8bit=(), iters: int | None = None, report=None, guard: bool = True,
             max_drop: float | None = None, metric: str = "error") -> dict:
    """Float ONNX -> QDQ ONNX with int4/int8 weights; returns the quantization report.

    `calib` is a zoo dataset name, an image folder (with `preprocess`) or .npy/.npz files;
    by default the zoo dataset named by the file's stem (litepose.onnx -> litepose).
    `report` (a .json path) also writes the report and a PNG chart of it beside it
    (report.png). The model, report and chart are written together or not at all.
    `guard=False` keeps every step even where it lowers the held-out output SQNR.
    `max_drop` (a fraction: 0.01 = 1 %) adds mixed precision: the fewest layers at 8 bits that keep
    `metric` ('error': relative output error, 'top1': argmax agreement, 'cosine', or 'task': a zoo
    task's headline metric on its labelled data) within it of FP32 on held-out calibration samples;
    the report's 'mixed-precision' step lists them.
    """
    import onnx

    from edgekit.errors import EdgekitError, require
    from edgekit.fileio import OutputSet, save_json
    from edgekit.onnx_graph.model import load_model, static_dims
    from edgekit.quant import calib as K
    from edgekit.quant import pipeline as P

    require(iters is None or iters >= 1, f"iters must be at least 1, got {iters}")
    require(calib_count >= 1, f"calib_count must be at least 1, got {calib_count}")
    source = calib or Path(model_path).name.split(".")[0]
    mixed = None
    if max_drop is not None:  # checked before any work
        from edgekit.quant.mixed import MixedPrecision, with_gate

        task_metric = None
        if metric == "task":
            from edgekit.data import task_of
            from edgekit.eval.gate import TaskDrop

            try:
                task_of(source)
                zoo = K.calibration_files(str(source), calib_count) is None
            except EdgekitError:
                zoo = False
            require(zoo, f"metric 'task' scores a zoo task on its labelled data: calibrate on a zoo dataset "
                         f"(calib=MODEL), not {source!r}")
            task_metric = TaskDrop(str(source))
        mixed = MixedPrecision(max_drop=max_drop, metric=metric, task_metric=task_metric)
    with OutputSet(inputs=[model_path]) as out:
        model_tmp = out.file(output, "output model", suffix=".onnx")
        if report:
            require(Path(report).suffix.lower() == ".json", f"report {report}: use a .json file name "
                                                            "(the PNG chart is written beside it)")
            report_tmp = out.file(report, "report")
            chart_tmp = out.file(Path(report).with_suffix(".png"), "report chart")
        model = load_model(model_path)
        inits = {i.name for i in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in inits]
        names = [i.name for i in inputs]
        shapes = [static_dims(i) for i in inputs]
        require(bool(source), "give a calibration source (calib=...)")
        out.check_inputs(K.calibration_files(str(source), calib_count) or [], "calibration input")
        dtypes = [onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
                  if i.type.tensor_type.elem_type else None for i in inputs]
        feeds = K.load_calibration(source, names, shapes, calib_count, preprocess, dtypes=dtypes)
        config = P.QuantConfig.for_method(method, fast=fast, weight_bits=weights, act_bits=activations,
                                          keep_8bit=tuple(keep_8bit), guard=guard)
        if mixed is not None:
            config.steps = with_gate(config.steps, mixed)
        if iters is not None:
            for step in config.steps:
                if isinstance(step, P.Reconstruct):
                    step.iters = iters
        qdq, result = P.quantize(model, feeds, config)
        result.pop("_plan", None)
        # what running softmax / layernorm / resize / element-wise regions on the integer grid
        # costs against their float versions, on one sample the fits did not see
        from edgekit.quant.intref import integer_cost

        result["integer_nonlinear"] = integer_cost(qdq, feeds[-1:])
        onnx.save(qdq, str(model_tmp))
        result["output"] = str(output)
        result["size_bytes"] = {"float": os.path.getsize(model_path) if os.path.isfile(model_path) else None,
                                "quantized": model_tmp.stat().st_size}
        if report:
            from edgekit.quant.report import plot_layer_sqnr

            save_json(result, report_tmp)
            plot_layer_sqnr({s["step"]: s["sqnr_db"]["layers"] for s in result["steps"]},
                            f"{Path(model_path).name}: per-layer SQNR after each step", chart_tmp)
    return result


def compile(model_path, target: str, output, **options) -> dict:  # noqa: A001 - the verb's name
    """ONNX (float or QDQ) -> artifact folder for `target` (x86-64, arm64, android-arm64, accel)."""
    from edgekit.compile import compile_model

    return compile_model(model_path, target, output, **options)


def run(artifact, inputs: dict, *, device: str | None = None, tracker: str | None = None,
        key: str | None = None) -> dict:
    """Run a compiled artifact here, on a board (`device`) or on a board from a tracker."""
    from edgekit.runtime import open_session

    with open_session(artifact, device=device, tracker=tracker, key=key) as session:
        return session.run(inputs)


def evaluate(model_name: str, obj, *, count: int | None = None, split: str = "test", save_vis=None) -> dict:
    """Task metrics of a torch module, an ONNX file or a compiled artifact on the held-out split."""
    from edgekit.eval import evaluate as _evaluate
    from edgekit.eval import predictor

    return _evaluate(model_name, predictor(obj), split=split, count=count, save_vis=save_vis)
