import json

import numpy as np
import pytest
import torch

from edgekit.data import samples
from edgekit.eval import Predictor, evaluate, predictor
from edgekit.eval.metrics import DepthMetric
from edgekit.eval.pose import decode
from edgekit.train.recipes import gaussian_heatmaps


def _oracle_pose(noise=0.0, swap_tags=False, seed=0):
    """Perfect LitePose outputs rendered from the ground truth (optionally degraded)."""
    cache = {s.inputs["image"].tobytes(): s for s in samples("litepose", "test", 12)}
    rng = np.random.default_rng(seed)

    def run(inputs):
        kp = cache[inputs["image"].tobytes()].target["keypoints"].copy()
        kp[..., :2] += rng.normal(0, noise, kp[..., :2].shape)
        k = torch.from_numpy(kp[None]).float()
        hm4 = gaussian_heatmaps(k, 32, 4.0)[0].numpy()
        hm2 = gaussian_heatmaps(k, 64, 2.0)[0].numpy()
        # tag map: each pixel gets the tag of the person whose joint is nearest
        grid = (np.arange(32) + 0.5) * 4
        d = (grid[None, None, :, None] - kp[:, :, None, None, 1]) ** 2 + \
            (grid[None, None, None, :] - kp[:, :, None, None, 0]) ** 2   # [P, J, 32, 32]
        person_tags = np.arange(len(kp)) * 3.0
        if swap_tags:
            person_tags = rng.permutation(3 * len(kp))[:len(kp)] * 0.1  # tags too close to group
        tags = person_tags[np.argmin(d, axis=0)]
        return {"heatmaps_tags": np.concatenate([hm4, tags])[None].astype(np.float32),
                "heatmaps_hr": hm2[None].astype(np.float32)}

    return Predictor(run, label="oracle")


def test_pose_oracle_reaches_full_ap():
    m = evaluate("litepose", _oracle_pose(), count=12)
    assert m["ap"] > 0.9 and m["ar"] > 0.9


def test_pose_ap_falls_with_errors():
    good = evaluate("litepose", _oracle_pose(), count=12)["ap"]
    noisy = evaluate("litepose", _oracle_pose(noise=4.0), count=12)["ap"]
    mixed = evaluate("litepose", _oracle_pose(swap_tags=True), count=12)["ap"]
    assert noisy < good - 0.2
    assert mixed < good


def test_decode_groups_two_people_by_tag():
    hm2 = np.zeros((1, 17, 64, 64), np.float32)
    out4 = np.zeros((1, 34, 32, 32), np.float32)
    for person, (x0, tag) in enumerate(((10, 0.0), (40, 5.0))):
        for j in range(17):
            hm2[0, j, 5 + 3 * j, x0 + person] = 1.0
            out4[0, j, (5 + 3 * j) // 2, (x0 + person) // 2] = 1.0
        out4[0, 17:, :, x0 // 2 - 3:x0 // 2 + 4] = tag
    people = decode(out4, hm2, 128)
    strong = sorted([p for p in people if p[1] > 0.5], key=lambda p: p[0][0, 0])
    assert len(strong) == 2
    for (kp, _), x0 in zip(strong, (10, 41)):
        np.testing.assert_allclose(kp[:, 0], (x0 + 0.5) * 2, atol=0.6)


def test_depth_metrics_with_and_without_median_scaling():
    gt_pred = Predictor(lambda inputs: {"depth": _depth_lookup[inputs["image"].tobytes()][None, None] * 0.5})
    _depth_lookup.update({s.inputs["image"].tobytes(): s.target for s in samples("depth", "test", 2)})
    m = evaluate("depth", gt_pred, count=2)
    assert m["delta1"] == 0.0 and m["absrel"] == pytest.approx(0.5, abs=1e-4)
    assert m["delta1_median"] == pytest.approx(1.0) and m["absrel_median"] < 1e-3
    e = DepthMetric.errors(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    assert e["absrel"] == 0 and e["rmse"] == 0 and e["delta1"] == 1


_depth_lookup: dict = {}


def test_deblur_identity_gains_nothing():
    m = evaluate("deblur", Predictor(lambda inputs: {"restored": inputs["image"]}), count=3)
    assert m["psnr"] == pytest.approx(m["psnr_input"]) and m["psnr_gain"] == pytest.approx(0.0)
    assert 0 < m["ssim"] <= 1


def test_lm_accuracy_oracle_and_random():
    def oracle(inputs):  # reads the answer that follows each position (only a test can)
        tokens = inputs["tokens"][0]
        logits = np.zeros((1, len(tokens), 128), np.float32)
        logits[0, np.arange(len(tokens) - 1), tokens[1:]] = 1.0
        return {"logits": logits}

    m = evaluate("lm", Predictor(oracle), count=6, length=300)
    assert m["accuracy"] == 1.0 and m["length"] == 300
    zero = evaluate("lm", Predictor(lambda i: {"logits": np.zeros((1, i["tokens"].shape[1], 128))}), count=3)
    assert zero["accuracy"] == 0.0


class _TinyDepth(torch.nn.Module):
    output_names = ("depth",)

    def __init__(self, size=128):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, image):
        return torch.nn.functional.softplus(self.conv(image)) + 1.0


def _export(module, path, shape):
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.onnx.export(module, (torch.rand(*shape),), str(path), input_names=["image"], output_names=["depth"],
                      dynamo=False, opset_version=17)
    return path


def test_torch_and_onnx_predictors_agree(tmp_path):
    net = _TinyDepth().eval()
    path = _export(net, tmp_path / "tiny_depth.onnx", (1, 3, 128, 128))
    (s,) = samples("depth", "test", 1)
    a = predictor(net)(s.inputs)["depth"]
    b = predictor(str(path))(s.inputs)["depth"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_cli_eval_onnx_file(tmp_path, capsys):
    from edgekit.cli import main

    path = _export(_TinyDepth().eval(), tmp_path / "scene.onnx", (1, 3, 128, 128))
    out = tmp_path / "m.json"
    vis = tmp_path / "vis"
    code = main(["eval", str(path), "--samples", "2", "--json-file", str(out), "--save-vis", str(vis)])
    assert code == 0
    metrics = json.loads(out.read_text())
    assert metrics["task"] == "depth" and metrics["samples"] == 2 and "absrel" in metrics
    assert sorted(p.name for p in vis.iterdir()) == ["depth_0000.png", "depth_0001.png"]
    assert "absrel" in capsys.readouterr().out


def test_cli_eval_rejects_mismatched_inputs(tmp_path, capsys):
    from edgekit.cli import main

    path = _export(_TinyDepth().eval(), tmp_path / "small.onnx", (1, 3, 32, 32))
    vis = tmp_path / "vis"
    code = main(["eval", str(path), "--task", "depth", "--samples", "1", "--save-vis", str(vis)])
    err = capsys.readouterr().err
    assert code == 2
    assert "[1,3,32,32]" in err and "[1,3,128,128]" in err and "Traceback" not in err
    assert not vis.exists()  # no partial output


def test_cli_eval_unknown_model(capsys):
    from edgekit.cli import main

    assert main(["eval", "no_such_model"]) == 2
    assert "neither a zoo model" in capsys.readouterr().err


def test_pose_diagnosis_separates_grouping_from_localisation(load_tool):
    """tools/pose_diagnose.py: its oracle grouping ignores tags, so tags that cannot group
    cost the decoder AP but not the oracle; localisation noise costs both."""
    from edgekit.eval.pose import PoseMetric

    diag = load_tool("pose_diagnose")

    def scores(predict):
        decoder, oracle = PoseMetric(), PoseMetric()
        oracle.people = grouping = diag.OracleGrouping(radius=4)
        for i, sample in enumerate(samples("litepose", "test", 12)):
            outputs = predict(sample.inputs)
            decoder.update(i, sample, outputs)
            oracle.update(i, sample, outputs)
        return decoder.result()["ap"], oracle.result()["ap"], float(np.median(grouping.errors))

    decoder_ap, oracle_ap, error = scores(_oracle_pose(swap_tags=True))
    assert oracle_ap > 0.9 and error < 1.0
    assert decoder_ap < oracle_ap - 0.1
    _, noisy_ap, noisy_error = scores(_oracle_pose(noise=4.0))
    assert noisy_error > 2.0 and noisy_ap < oracle_ap - 0.2
