"""Training of the zoo's tiny reference checkpoints on procedural data.

`train(name, steps, seed, output)` reproduces `models/checkpoints/<name>_tiny.safetensors`:
the same seed gives the same data stream and the same initial weights.
One recipe per task (edgekit/train/recipes.py) says how to batch samples,
what loss to use and for how many steps; the loop here is shared. The
checkpoint is saved atomically every `save_every` seconds, so an
interrupted run still leaves a usable file, and a model card (JSON + markdown)
records the seed, steps, command and the metric reached on the test split.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from edgekit.errors import require

DEFAULT_SEED = 0


def checkpoint_path(name: str) -> Path:
    import edgekit.models as zoo

    return zoo.reference_checkpoint(name)


def train(name: str, steps: int | None = None, seed: int = DEFAULT_SEED, output=None,
          eval_samples: int | None = None, save_every: float = 60.0, log=None,
          command: str | None = None, threads: int | None = None, overrides: dict | None = None) -> dict:
    """Train the tiny config of zoo model `name`; returns the model card dict.

    overrides: recipe attributes to replace (e.g. {'batch_size': 2, 'pool_size': 4}
    for quick tests; an LM `schedule` of (fraction, length, batch, task mix) phases).
    """
    import numpy as np
    import torch

    import edgekit.models as zoo
    from edgekit.progress import progress
    from edgekit.train.recipes import recipe_for

    entry = zoo.get(name)
    recipe = recipe_for(entry.task)
    for key, value in (overrides or {}).items():
        require(hasattr(recipe, key), f"unknown training setting {key!r} for task {entry.task}")
        setattr(recipe, key, value)
    steps = int(steps if steps is not None else recipe.steps)
    require(steps >= 1, f"--steps must be >= 1, got {steps}")
    output = Path(output) if output else checkpoint_path(name)
    require(output.suffix == ".safetensors", f"checkpoint {output} must end in .safetensors")
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    model = entry.build("tiny")
    model.train()
    stream = recipe.stream(name, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    warmup = max(1, int(0.03 * steps))

    def lr_at(step):  # linear warm-up then cosine decay to 5 %
        if step < warmup:
            return recipe.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return recipe.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    started = time.time()
    last_save = started
    running = None
    bar = progress(range(steps), desc=f"train {name}", total=steps, unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        batch = stream.batch(step, steps)
        loss, parts = recipe.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        optimizer.step()
        value = float(loss.detach())
        running = value if running is None else 0.95 * running + 0.05 * value
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{running:.4f}")
        if log is not None and (step % 25 == 0 or step == steps - 1):
            extras = " ".join(f"{k}={float(v.detach() if hasattr(v, 'detach') else v):.4f}" for k, v in parts.items())
            print(f"step {step + 1}/{steps} loss {running:.4f} {extras} "
                  f"lr {lr_at(step):.2e} {time.time() - started:.0f}s", file=log, flush=True)
        if time.time() - last_save > save_every:
            _save(model, output)
            last_save = time.time()
    _save(model, output)
    train_seconds = time.time() - started
    model.eval()
    card = {
        "model": name, "config": "tiny", "task": entry.task, "checkpoint": output.name,
        "data_seed": seed, "steps": steps, "batch": recipe.describe_batch(),
        "optimizer": f"AdamW lr {recipe.lr} wd {recipe.weight_decay}, warm-up + cosine",
        "train_seconds": round(train_seconds, 1), "torch_threads": torch.get_num_threads(),
        "command": command or f"edgekit zoo train {name} --steps {steps} --seed {seed}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "size_bytes": output.stat().st_size,
    }
    if eval_samples != 0:
        from edgekit.eval import evaluate, predictor

        card["metrics"] = evaluate(name, predictor(model), split="test", count=eval_samples)
        card["eval_command"] = f"edgekit eval {name}" + (f" --samples {eval_samples}" if eval_samples else "")
    write_card(card, output)
    return card


def _save(model, output: Path) -> None:
    from safetensors.torch import save_file

    from edgekit.fileio import atomic_path

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(output) as tmp:
        save_file(state, str(tmp))
        tmp.chmod(0o644)  # a committed file, readable by all (mkstemp makes 0600)


def write_card(card: dict, checkpoint: Path) -> None:
    """<checkpoint>.json (machines) and <stem>.md (people) next to the checkpoint."""
    from edgekit.fileio import atomic_path, save_json

    stem = checkpoint.with_suffix("")
    save_json(card, stem.with_suffix(".json"))
    lines = [f"# {card['model']} (tiny) reference checkpoint", "",
             f"- task: {card['task']}; parameters: {card['parameters']:,}; file: `{card['checkpoint']}` "
             f"({card['size_bytes'] / 1e6:.2f} MB)",
             f"- data: procedural `{card['task']}` train split, seed {card['data_seed']}; "
             f"{card['steps']} steps, {card['batch']}",
             f"- optimiser: {card['optimizer']}",
             f"- training time: {card['train_seconds']:.0f} s on {card['torch_threads']} CPU threads",
             f"- reproduce: `{card['command']}`"]
    lines += [f"- note: {note}" for note in card.get("notes", [])]
    if "metrics" in card:
        lines += ["", f"Metrics on the held-out test split (`{card['eval_command']}`, FP32 PyTorch):", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in card["metrics"].items() if not isinstance(v, (dict, list))]
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
        tmp.chmod(0o644)
    stem.with_suffix(".json").chmod(0o644)


__all__ = ["train", "checkpoint_path", "write_card", "DEFAULT_SEED"]
