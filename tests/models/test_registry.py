"""The zoo API other areas code against: names, configs, shapes, checkpoints."""
import pytest
import torch

from edgekit import models
from edgekit.errors import EdgekitError

TINY_OUTPUTS = {
    "litepose": {"heatmaps_tags": (1, 34, 32, 32), "heatmaps_hr": (1, 17, 64, 64)},
    "depth": {"depth": (1, 1, 128, 128)},
    "deblur": {"restored": (1, 3, 64, 64)},
    "lm": {"logits": (1, 256, 128)},
}


def test_list_models():
    assert models.list_models() == ["litepose", "depth", "deblur", "lm"]


def test_unknown_model_lists_valid_names():
    with pytest.raises(EdgekitError, match="litepose, depth, deblur, lm"):
        models.get("posenet")


def test_unknown_config_lists_valid_configs():
    with pytest.raises(EdgekitError, match="tiny, xs, s, m, l"):
        models.build("litepose", "xxl")


@pytest.mark.parametrize("name", list(TINY_OUTPUTS))
def test_tiny_forward_matches_declared_io(name):
    entry = models.get(name)
    assert entry.default_config == "tiny" and "tiny" in entry.configs
    model = entry.build()
    assert not model.training
    specs = entry.input_spec()
    inputs = []
    for spec in specs:
        dtype = getattr(torch, spec.dtype)
        inputs.append(torch.randint(0, 128, spec.shape) if not dtype.is_floating_point
                      else torch.rand(spec.shape, dtype=dtype))
    with torch.no_grad():
        out = model(*inputs)
    out = (out,) if isinstance(out, torch.Tensor) else out
    names = entry.output_names()
    assert dict(zip(names, (tuple(o.shape) for o in out))) == TINY_OUTPUTS[name]
    assert all(o.dtype == torch.float32 for o in out)


def test_build_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = models.build("litepose")
    after = torch.rand(1)
    b = models.build("litepose")
    assert torch.equal(before, after)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_load_reference_missing_names_file_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "CHECKPOINT_DIR", tmp_path)
    with pytest.raises(EdgekitError, match=r"lm_tiny\.safetensors.*edgekit zoo train lm"):
        models.load_reference("lm")


def test_load_reference_loads_weights(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    trained = models.build("deblur")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    monkeypatch.setattr(models, "CHECKPOINT_DIR", tmp_path)
    save_file(trained.state_dict(), str(tmp_path / "deblur_tiny.safetensors"))
    loaded = models.load_reference("deblur")
    assert not loaded.training
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))
        assert not torch.equal(loaded(x), models.build("deblur")(x))
