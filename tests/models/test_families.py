"""Depth, deblur and LM specifics: FFT forms, attention hook, RoPE length freedom."""
import pytest
import torch

from edgekit import models
from edgekit.errors import EdgekitError
from edgekit.models.deblur import MatmulRFFT2
from edgekit.models.lm import dense_causal_attention


@pytest.mark.parametrize("h,w", [(16, 16), (8, 12), (7, 9)])
def test_matmul_dft_matches_torch_fft(h, w):
    dft = MatmulRFFT2(h, w)
    x = torch.randn(2, 3, h, w)
    real, imag = dft.forward_transform(x)
    ref = torch.fft.rfft2(x, norm="ortho")
    assert torch.allclose(real, ref.real, atol=1e-5) and torch.allclose(imag, ref.imag, atol=1e-5)
    spec_r, spec_i = torch.randn(2, 3, h, w // 2 + 1), torch.randn(2, 3, h, w // 2 + 1)
    back = dft.inverse_transform(spec_r, spec_i)
    ref_back = torch.fft.irfft2(torch.complex(spec_r, spec_i), s=(h, w), norm="ortho")
    assert torch.allclose(back, ref_back, atol=1e-5)


def test_deblur_fft_modes_agree():
    model = models.build("deblur")
    with torch.no_grad():
        for name, p in model.named_parameters():  # make the frequency branch matter
            if ".freq." in name:
                p.mul_(2.0)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch_out = model.set_fft_mode("torch")(x)
        matmul_out = model.set_fft_mode("matmul")(x)
    assert (torch_out - x).abs().max() > 1e-2
    assert (torch_out - matmul_out).abs().max() < 1e-4


def test_deblur_matmul_mode_refuses_other_sizes_until_prepared():
    model = models.build("deblur").set_fft_mode("matmul")
    x = torch.rand(1, 3, 96, 64)
    with pytest.raises(EdgekitError, match="64x64"):
        model(x)
    model.prepare_for_export(x)
    with torch.no_grad():
        out = model(x)
        ref = model.set_fft_mode("torch")(x)
    assert (out - ref).abs().max() < 1e-4


def test_deblur_multiscale_outputs():
    outs = models.build("deblur").forward_multiscale(torch.rand(1, 3, 64, 64))
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 16), (32, 32), (64, 64)]


def test_depth_is_positive_and_accepts_other_sizes():
    model = models.build("depth")
    with torch.no_grad():
        depth = model(torch.rand(1, 3, 160, 96))
    assert depth.shape == (1, 1, 160, 96) and (depth > 0).all()


def test_depth_small_matches_depth_anything_small_shape():
    cfg = models.get("depth").config("small")
    assert (cfg.patch, cfg.dim, cfg.layers, cfg.heads, cfg.input_size) == (14, 384, 12, 6, 518)
    assert (cfg.features, cfg.out_channels) == (64, (48, 96, 192, 384))


def test_lm_attention_is_replaceable_and_causal():
    model = models.build("lm")
    tokens = torch.randint(0, 128, (1, 64))
    seen = []

    def sdpa(q, k, v):
        seen.append(q.shape)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    with torch.no_grad():
        dense = model(tokens)
        model.set_attention(sdpa)
        swapped = model(tokens)
        model.set_attention(None)
        again = model(tokens)
    cfg = models.get("lm").config("tiny")
    assert seen and seen[0] == (1, cfg.heads, 64, cfg.dim // cfg.heads) and len(seen) == cfg.layers
    assert torch.allclose(dense, swapped, atol=1e-5) and torch.equal(dense, again)
    changed = tokens.clone()
    changed[0, 40:] = (changed[0, 40:] + 1) % 128
    with torch.no_grad():
        assert torch.equal(model(changed)[0, :40], dense[0, :40])


def test_lm_per_layer_attention_slots():
    """SALE and eval install per-layer functions at model.blocks[i].attn.attention."""
    model = models.build("lm")
    assert all(b.attn.attention is dense_causal_attention for b in model.blocks)
    calls = []
    model.blocks[1].attn.attention = lambda q, k, v: calls.append(1) or dense_causal_attention(q, k, v)
    with torch.no_grad():
        model(torch.randint(0, 128, (1, 8)))
    assert calls == [1]


def test_lm_has_no_length_limit_or_position_table():
    model = models.build("lm")
    cfg = models.get("lm").config("tiny")
    assert not any("pos" in k for k in model.state_dict())
    with torch.no_grad():
        logits = model(torch.randint(0, 128, (1, 4 * cfg.seq_len)))
    assert logits.shape == (1, 4 * cfg.seq_len, cfg.vocab_size) and torch.isfinite(logits).all()


def test_dense_attention_matches_reference_with_longer_keys():
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    scores = (q @ k.transpose(-1, -2)) / 8 ** 0.5
    mask = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    ref = torch.softmax(scores.masked_fill(mask, float("-inf")), -1) @ v
    assert torch.allclose(dense_causal_attention(q, k, v), ref, atol=1e-6)


def _official_depth_anything_names(ours: dict) -> dict:
    """Our depth state_dict renamed to the official Depth Anything layout (the test's own inverse map)."""
    import re

    rules = [
        (r"^encoder\.patch_embed\.", "pretrained.patch_embed.proj."),
        (r"^encoder\.blocks\.(\d+)\.mlp\.0\.", r"pretrained.blocks.\1.mlp.fc1."),
        (r"^encoder\.blocks\.(\d+)\.mlp\.2\.", r"pretrained.blocks.\1.mlp.fc2."),
        (r"^encoder\.", "pretrained."),
        (r"^decoder\.project\.", "depth_head.projects."),
        (r"^decoder\.resample\.", "depth_head.resize_layers."),
        (r"^decoder\.layer_rn\.(\d)\.", lambda m: f"depth_head.scratch.layer{int(m.group(1)) + 1}_rn."),
        (r"^decoder\.fusion\.(\d)\.skip_unit\.",
         lambda m: f"depth_head.scratch.refinenet{int(m.group(1)) + 1}.resConfUnit1."),
        (r"^decoder\.fusion\.(\d)\.refine_unit\.",
         lambda m: f"depth_head.scratch.refinenet{int(m.group(1)) + 1}.resConfUnit2."),
        (r"^decoder\.fusion\.(\d)\.out_conv\.",
         lambda m: f"depth_head.scratch.refinenet{int(m.group(1)) + 1}.out_conv."),
        (r"^decoder\.head\.0\.", "depth_head.scratch.output_conv1."),
        (r"^decoder\.head_out\.", "depth_head.scratch.output_conv2."),
    ]
    out = {}
    for key, value in ours.items():
        for pattern, repl in rules:
            new, hits = re.subn(pattern, repl, key)
            if hits:
                key = new
                break
        out[key] = value
    return out


def test_depth_anything_checkpoint_layout_loads(tmp_path):
    from dataclasses import replace

    from safetensors.torch import save_file

    from edgekit.models.depth import DepthModel, load_depth_anything

    cfg = replace(models.get("depth").config("tiny"), layer_scale=True, head_activation="sigmoid")
    source = DepthModel(cfg).eval()
    official = _official_depth_anything_names(source.state_dict())
    assert ("pretrained.blocks.1.ls2.gamma" in official
            and "depth_head.scratch.refinenet4.resConfUnit1.conv1.weight" in official)
    assert "depth_head.scratch.output_conv2.2.weight" in official and "pretrained.patch_embed.proj.weight" in official
    official["pretrained.mask_token"] = torch.zeros(1, cfg.dim)
    path = tmp_path / "depth_anything.safetensors"
    save_file({k: v.contiguous() for k, v in official.items()}, str(path))
    loaded = load_depth_anything(path, cfg)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    assert (loaded(x) <= cfg.max_depth).all()


def test_depth_tiny_keeps_checkpoint_layout():
    keys = set(models.build("depth").state_dict())
    assert not any(".ls1." in k or ".ls2." in k for k in keys)
    assert {"encoder.pos_embed", "decoder.head_out.2.weight", "decoder.fusion.3.skip_unit.conv1.weight"} <= keys
