"""The SALE plan of the zoo LM: calibrated on the `calib` split, saved next to the checkpoint.

    python -m edgekit.train.sale calibrate-lm [--count 16 --bound 0.005 -o plan.json]

Like the checkpoints, the plan is a committed artifact that this recipe reproduces; it lives
with the training recipes because it reads the datasets (the zoo itself does not import
`edgekit.data`).
"""
from __future__ import annotations

import numpy as np
import torch

from edgekit.errors import EdgekitError
from edgekit.models.sale import SaleConfig, SalePlan, calibrate_model
from edgekit.models.sale.lm import DEFAULT_BOUND, LM_CONFIG, TRAIN_LENGTH, checkpoint_digest, plan_path


def lm_samples(split: str, count: int, length: int, seed: int = 0):
    from edgekit.data import samples

    return samples("lm", split, count, seed=seed, length=length)


def calibrate_reference_lm(count: int = 8, length: int = TRAIN_LENGTH, error_bound: float = DEFAULT_BOUND,
                           cfg: SaleConfig = LM_CONFIG, output=None, model=None) -> SalePlan:
    """Calibrate the trained tiny LM on the calib split and save the plan (atomic JSON)."""
    from edgekit import models

    model_is_reference = model is None
    model = model if model is not None else models.load_reference("lm")
    tokens = [torch.from_numpy(s.inputs["tokens"]) for s in lm_samples("calib", count, length)]
    plan = calibrate_model(model, tokens, cfg, error_bound,
                           info={"split": "calib", "model": "lm/tiny",
                                 "checkpoint_sha256": checkpoint_digest() if model_is_reference else ""})
    plan.save(output or plan_path())
    return plan


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m edgekit.train.sale",
        description="SALE tools for the zoo LM.",
        epilog="examples:\n  python -m edgekit.train.sale calibrate-lm\n"
               "  python -m edgekit.train.sale calibrate-lm --count 16 --bound 0.005 -o plan.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    cal = sub.add_parser("calibrate-lm", help="calibrate per-head thresholds of the reference tiny LM")
    cal.add_argument("--count", type=int, default=8, help="calib-split sequences (default 8)")
    cal.add_argument("--length", type=int, default=TRAIN_LENGTH, help="tokens per sequence (default 1024)")
    cal.add_argument("--bound", type=float, default=DEFAULT_BOUND, help="per-head relative error bound")
    cal.add_argument("-o", "--output", help=f"plan JSON (default {plan_path()})")
    args = parser.parse_args(argv)
    try:
        plan = calibrate_reference_lm(args.count, args.length, args.bound, output=args.output)
    except EdgekitError as exc:
        print(f"edgekit: error: {exc}")
        return 2
    taus = np.array(plan.layer_taus)
    print(f"wrote {args.output or plan_path()}: {plan.layers} layers, {plan.dense_heads()} dense heads, "
          f"median tau {np.median(taus):g}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
