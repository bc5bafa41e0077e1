#!/usr/bin/env python
"""Print params and MACs of every zoo configuration (the table in docs/zoo.md).

    python tools/model_stats.py                 # markdown table
    python tools/model_stats.py --json          # machine-readable
    python tools/model_stats.py --parity        # also export tiny configs + LitePose-XS, report ONNX parity

Counting is `edgekit.models.stats.model_stats` (the one shared function):
convs/linears/matmuls via torch's FlopCounterMode, transposed convs at output
resolution, the deblur DFTs as the matmuls they export to.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# LitePose paper (CVPR 2022): params (M), GMACs.
PAPER = {("litepose", "xs"): (1.7, 1.2), ("litepose", "s"): (2.7, 5.0),
         ("litepose", "m"): (3.5, 7.8), ("litepose", "l"): (5.7, 13.7)}
PARITY_CONFIGS = [("litepose", "tiny"), ("depth", "tiny"), ("deblur", "tiny"), ("lm", "tiny"),
                  ("litepose", "xs")]


def stats_rows():
    from edgekit import models
    from edgekit.models.stats import model_stats

    rows = []
    for name in models.list_models():
        for config in models.get(name).configs:
            row = model_stats(name, config)
            if (name, config) in PAPER:
                row["paper_params_m"], row["paper_gmacs"] = PAPER[(name, config)]
            rows.append(row)
    return rows


def _randomize_batchnorm_statistics(model, seed=0):
    """Random-init BNs are identities (mean 0, var 1); give them real statistics so the
    parity check exercises BatchNorm folding as a trained model would."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)


def parity_rows():
    from edgekit import models
    from edgekit.export import LM_TOLERANCE, VISION_TOLERANCE, export_module, export_zoo, random_inputs

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in PARITY_CONFIGS:
            path = Path(tmp) / f"{name}_{config}.onnx"
            entry = models.get(name)
            if config == "tiny" and models.reference_checkpoint(name).is_file():
                report = export_zoo(name, path, config=config)
                weights = models.reference_checkpoint(name).name
            else:
                model = entry.build(config)
                _randomize_batchnorm_statistics(model)
                specs = entry.input_spec(config)
                report = export_module(model, random_inputs(specs), path, [s.name for s in specs],
                                       entry.output_names(config),
                                       tolerance=LM_TOLERANCE if entry.task == "lm" else VISION_TOLERANCE)
                weights = "random init, random BN statistics"
            rows.append({"name": name, "config": config, "opset": report.opset, "weights": weights,
                         "max_abs_diff": report.max_abs_diff, "tolerance": report.tolerance,
                         "max_abs_output": report.max_abs_output,
                         "nodes": sum(report.op_counts.values())})
            print(f"exported {name}/{config}: max abs diff {report.max_abs_diff:.3g}", file=sys.stderr)
    return rows


def markdown(rows, parity=None) -> str:
    lines = ["| model | config | input | params | MACs | paper params / MACs |",
             "|---|---|---|---:|---:|---|"]
    for r in rows:
        shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in r["inputs"].items())
        paper = ""
        if "paper_params_m" in r:
            dp = 100 * (r["params"] / 1e6 / r["paper_params_m"] - 1)
            dm = 100 * (r["macs"] / 1e9 / r["paper_gmacs"] - 1)
            paper = f"{r['paper_params_m']} M ({dp:+.1f}%) / {r['paper_gmacs']} G ({dm:+.1f}%)"
        lines.append(f"| {r['name']} | {r['config']} | {shapes} | {r['params'] / 1e6:.3f} M | "
                     f"{r['macs'] / 1e9:.3f} G | {paper} |")
    if parity:
        lines += ["", "| export | weights | opset | nodes | max abs output | max abs diff vs PyTorch | tolerance |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for p in parity:
            lines.append(f"| {p['name']}/{p['config']} | {p['weights']} | {p['opset']} | {p['nodes']} | "
                         f"{p['max_abs_output']:.3g} | {p['max_abs_diff']:.2e} | {p['tolerance']:g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    parser.add_argument("--parity", action="store_true",
                        help="also export every tiny config and LitePose-XS and report ONNX vs PyTorch")
    args = parser.parse_args(argv)
    rows = stats_rows()
    parity = parity_rows() if args.parity else None
    if args.json:
        print(json.dumps({"models": rows, "parity": parity}, indent=2))
    else:
        print(markdown(rows, parity))
    return 0


if __name__ == "__main__":
    sys.exit(main())
