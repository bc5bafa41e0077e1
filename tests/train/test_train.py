import argparse
import json

import numpy as np
import pytest
import torch

import edgekit.models as zoo
from edgekit.commands.zoo import add_train_command, train_command
from edgekit.errors import EdgekitError
from edgekit.models.checkpoint import load_state_file
from edgekit.train import train
from edgekit.train.recipes import gaussian_heatmaps, recipe_for, tag_loss

QUICK = {
    "litepose": {"batch_size": 2, "pool_size": 4, "refresh": 1},
    "depth": {"batch_size": 2, "pool_size": 3, "refresh": 1},
    "deblur": {"batch_size": 2, "pool_size": 4, "refresh": 1},
    "lm": {"schedule": ((0.5, 96, 2, (("copy", 1.0),)), (0.5, 128, 2, None))},
}


@pytest.mark.parametrize("name", sorted(QUICK))
def test_a_few_steps_write_a_loadable_checkpoint_and_card(name, tmp_path):
    out = tmp_path / f"{name}.safetensors"
    card = train(name, steps=2, seed=1, output=out, eval_samples=0, overrides=QUICK[name])
    assert out.is_file() and card["steps"] == 2 and card["data_seed"] == 1
    net = zoo.build(name, "tiny")
    load_state_file(net, out)  # strict: every key and shape fits the zoo model
    assert any(not torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                     zoo.build(name, "tiny").state_dict().values()))
    saved = json.loads((tmp_path / f"{name}.json").read_text())
    assert saved["command"].startswith(f"edgekit zoo train {name}")
    assert "reproduce" in (tmp_path / f"{name}.md").read_text()


def test_same_seed_same_weights(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path in (a, b):
        train("deblur", steps=2, seed=5, output=path, eval_samples=0, overrides=QUICK["deblur"], threads=1)
    from safetensors.torch import load_file

    sa, sb = load_file(str(a)), load_file(str(b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loss_falls_on_a_fixed_batch():
    """A few optimiser steps on one batch must reduce the loss (the recipe can learn)."""
    recipe = recipe_for("deblur")
    recipe.batch_size, recipe.pool_size, recipe.refresh = 4, 4, 0
    torch.manual_seed(0)
    model = zoo.build("deblur", "tiny").train()
    batch = recipe.stream("deblur", 0).batch(0, 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss, _ = recipe.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_heatmaps_peak_on_the_keypoints():
    kp = torch.tensor([[[[10.0, 20.0, 2.0]] * 17, [[100.0, 60.0, 1.0]] * 16 + [[0.0, 0.0, 0.0]]]])
    hm = gaussian_heatmaps(kp, 32, 4.0)
    assert hm.shape == (1, 17, 32, 32)
    y, x = np.unravel_index(hm[0, 0].argmax().item(), (32, 32))
    assert x == 2 and y in (4, 5)
    assert hm[0, 16].max() > 0.9  # person 0's ankle; person 1's is unlabelled
    assert float(hm[0, 0, 15, 25]) > 0.9  # person 1 at (100, 60) -> (24.5, 14.5)


def test_tag_loss_prefers_separated_people():
    kp = torch.zeros(1, 2, 17, 3)
    kp[0, 0, :, :2] = torch.tensor([20.0, 20.0])
    kp[0, 1, :, :2] = torch.tensor([100.0, 100.0])
    kp[..., 2] = 2
    tags = torch.zeros(1, 17, 32, 32)
    pull, push_same = tag_loss(tags, kp, 4.0)
    tags[..., 20:, 20:] = 3.0
    pull2, push_apart = tag_loss(tags, kp, 4.0)
    assert float(pull) == 0 and float(pull2) == 0
    assert float(push_apart) < 0.01 < float(push_same)


def test_cli_registration_and_bad_arguments(tmp_path):
    parser = argparse.ArgumentParser(prog="edgekit zoo")
    add_train_command(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["train", "lm", "--steps", "3", "--seed", "2", "-o", str(tmp_path / "x.safetensors")])
    assert (args.model, args.steps, args.seed) == ("lm", 3, 2)
    assert train_command(args) == f"edgekit zoo train lm --steps 3 --seed 2 -o {tmp_path / 'x.safetensors'}"
    with pytest.raises(EdgekitError, match="steps"):
        train("lm", steps=0, output=tmp_path / "y.safetensors")
    with pytest.raises(EdgekitError, match="safetensors"):
        train("lm", steps=1, output=tmp_path / "y.pt")
    with pytest.raises(EdgekitError, match="unknown model"):
        train("resnet", steps=1)
