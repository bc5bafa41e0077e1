"""SALE on the zoo's tiny LM: calibrated plan saved with the checkpoint, retrieval accuracy.

The plan (per-layer, per-head thresholds) lives next to the LM's reference
checkpoint as `lm_tiny.sale.json`; `calibrate_reference_lm` writes it from
the `calib` split at the LM's training length.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgekit.errors import EdgekitError

from .attention import apply_plan, plan_density
from .calibrate import calibrate_model
from .config import SaleConfig, SalePlan

TRAIN_LENGTH = 1024           # the tiny LM's longest training sequences (LMRecipe schedule)
LM_CONFIG = SaleConfig(block_q=64, block_k=64, sink_blocks=1, window_blocks=1)
DEFAULT_BOUND = 0.01          # per-head relative output error at calibration


def plan_path() -> Path:
    from edgekit.models import CHECKPOINT_DIR

    return CHECKPOINT_DIR / "lm_tiny.sale.json"


def load_plan(path=None) -> SalePlan:
    path = Path(path) if path else plan_path()
    if not path.is_file():
        raise EdgekitError(f"SALE plan {path} is missing; create it with "
                           "`python -m edgekit.models.sale calibrate-lm`")
    return SalePlan.load(path)


def checkpoint_digest() -> str:
    """sha256 of the LM reference checkpoint: a plan is only valid for the weights it was calibrated on."""
    import hashlib

    from edgekit.models import reference_checkpoint

    path = reference_checkpoint("lm")
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def plan_matches_checkpoint(plan: SalePlan) -> bool:
    return plan.calibration.get("checkpoint_sha256") == checkpoint_digest()


def lm_samples(split: str, count: int, length: int, seed: int = 0):
    from edgekit.data import samples

    return samples("lm", split, count, seed=seed, length=length)


@torch.no_grad()
def retrieval_accuracy(model, samples, plan: SalePlan | None = None, threads: int | None = None):
    """(accuracy over all queries, kept-block density or None) with dense (None) or SALE attention."""
    fns = apply_plan(model, plan, threads=threads)
    correct = total = 0
    try:
        for s in samples:
            logits = model(torch.from_numpy(s.inputs["tokens"]))
            pred = logits[0, torch.from_numpy(s.target["positions"])].argmax(-1).numpy()
            correct += int((pred == s.target["answers"]).sum())
            total += len(s.target["answers"])
    finally:
        apply_plan(model, None)
    return correct / max(total, 1), (plan_density(fns) if fns else None)


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
        prog="python -m edgekit.models.sale",
        description="SALE tools for the zoo LM.",
        epilog="examples:\n  python -m edgekit.models.sale calibrate-lm\n"
               "  python -m edgekit.models.sale calibrate-lm --count 16 --bound 0.005 -o plan.json",
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
