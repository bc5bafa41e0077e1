"""LitePose: paper sizes, official state_dict layout, official checkpoint loading."""
import pickle
import re

import pytest
import torch

from edgekit import models
from edgekit.errors import EdgekitError
from edgekit.models.litepose import CONFIGS, LitePose, load_official
from edgekit.models.stats import model_stats

# LitePose paper (CVPR 2022), Table: params (M) and GMACs.
PAPER = {"xs": (1.7, 1.2), "s": (2.7, 5.0), "m": (3.5, 7.8), "l": (5.7, 13.7)}

OFFICIAL_KEY = re.compile(
    r"^(first\.[01]\.[01]\.|first\.2\.weight$|first\.3\.|"
    r"stage\.\d+\.\d+\.(inv|depth_conv|point_conv)\.[01]\.|"
    r"deconv_(refined|raw)\.[012]\.weight$|deconv_bnrelu\.[012]\.0\.|"
    r"final_(refined|raw)\.[01]\.conv\.[013]\.)")


@pytest.mark.parametrize("variant", list(PAPER))
def test_params_and_macs_match_paper(variant):
    stats = model_stats("litepose", variant)
    params, gmacs = PAPER[variant]
    assert abs(stats["params"] / 1e6 - params) / params < 0.05
    assert abs(stats["macs"] / 1e9 - gmacs) / gmacs < 0.05


def test_variant_structure():
    xs = models.build("litepose", "xs")
    assert [len(s) for s in xs.stage] == [6, 8, 10, 10]
    assert [s[0].depth_conv[0].stride[0] for s in xs.stage] == [2, 2, 2, 1]
    dw = [m for m in xs.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.kernel_size == (7, 7)]
    assert len(dw) == 34
    block = xs.stage[1][1]
    assert block.inv[0].out_channels == 6 * 32 and block.use_residual
    assert not xs.stage[1][0].use_residual
    assert all(d.kernel_size == (4, 4) and d.stride == (2, 2) and d.padding == (1, 1) and d.bias is None
               for d in list(xs.deconv_refined) + list(xs.deconv_raw))
    assert isinstance(xs.first[0][2], torch.nn.ReLU6)


@pytest.mark.parametrize("variant", ["tiny", "xs", "l"])
def test_state_dict_uses_official_key_layout(variant):
    keys = list(LitePose(CONFIGS[variant]).state_dict())
    assert keys and all(OFFICIAL_KEY.match(k) for k in keys), [k for k in keys if not OFFICIAL_KEY.match(k)][:3]


def _official_state(joints=17):
    """A state_dict laid out as the official repo saves it (random values)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LitePose(CONFIGS["xs"]).state_dict().items()}
    state = {}
    gen = torch.Generator().manual_seed(1)
    for k, shape in shapes.items():
        if k.startswith("final_raw.1.conv.3") or k.startswith("final_refined.1.conv.3"):
            shape = (joints,) + tuple(shape[1:])
        if k.startswith("final_raw.0.conv.3") or k.startswith("final_refined.0.conv.3"):
            shape = (2 * joints,) + tuple(shape[1:])
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(10)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[k] = torch.randn(shape, generator=gen) * 0.1
    return state


@pytest.mark.parametrize("wrapping", ["plain", "module", "state_dict"])
def test_official_checkpoint_loads_in_every_wrapping(tmp_path, wrapping):
    state = _official_state()
    saved = {"plain": state, "module": {f"module.{k}": v for k, v in state.items()},
             "state_dict": {"state_dict": state, "epoch": 140}}[wrapping]
    if wrapping == "state_dict":
        saved = {"state_dict": state}  # weights_only pickles only tensors/containers/primitives
        saved["epoch"] = torch.tensor(140)
    path = tmp_path / "litepose_xs.pth"
    torch.save(saved, path)
    model = load_official(path, "xs")
    assert torch.equal(model.stage[2][3].depth_conv[0].weight, state["stage.2.3.depth_conv.0.weight"])
    assert not model.training


def test_crowdpose_joint_count_read_from_checkpoint(tmp_path):
    path = tmp_path / "crowdpose.pth"
    torch.save(_official_state(joints=14), path)
    model = load_official(path, "xs")
    with torch.no_grad():
        tags, hr = model(torch.rand(1, 3, 256, 256))
    assert tags.shape == (1, 28, 64, 64) and hr.shape == (1, 14, 128, 128)


def test_mismatched_checkpoint_names_keys(tmp_path):
    state = _official_state()
    del state["stage.0.0.inv.0.weight"]
    state["extra.head.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(EdgekitError) as info:
        load_official(path, "xs")
    msg = str(info.value)
    assert "1 missing keys: stage.0.0.inv.0.weight" in msg and "extra.head.weight" in msg
    assert "\n" not in msg


def test_wrong_variant_reports_shape_mismatch(tmp_path):
    path = tmp_path / "xs.pth"
    torch.save(_official_state(), path)
    with pytest.raises(EdgekitError, match="shape mismatches"):
        load_official(path, "l")


class _NotATensor:
    pass


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": _NotATensor()}, f)
    with pytest.raises(EdgekitError, match="cannot load checkpoint"):
        load_official(path, "xs")
