"""SALE on the zoo's tiny LM: calibrated plan saved with the checkpoint, retrieval accuracy.

The plan (per-layer, per-head thresholds) lives next to the LM's reference
checkpoint as `lm_tiny.sale.json`; `edgekit.train.sale.calibrate_reference_lm`
writes it from the `calib` split at the LM's training length (there, with the
datasets: the zoo does not import `edgekit.data`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from edgekit.errors import EdgekitError

from .attention import apply_plan, plan_density
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
                           "`python -m edgekit.train.sale calibrate-lm`")
    return SalePlan.load(path)


def checkpoint_digest() -> str:
    """sha256 of the LM reference checkpoint: a plan is only valid for the weights it was calibrated on."""
    import hashlib

    from edgekit.models import reference_checkpoint

    path = reference_checkpoint("lm")
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def plan_matches_checkpoint(plan: SalePlan) -> bool:
    return plan.calibration.get("checkpoint_sha256") == checkpoint_digest()


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
