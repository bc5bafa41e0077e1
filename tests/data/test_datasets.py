import numpy as np
import pytest

import edgekit.models as zoo
from edgekit.data import SPLITS, samples, task_of
from edgekit.data.deblur import PHOTOS, motion_kernel
from edgekit.data.longctx import KINDS, VALUES
from edgekit.errors import EdgekitError

MODELS = ["litepose", "depth", "deblur", "lm"]


def _arrays(sample):
    return [v for v in sample.inputs.values()]


@pytest.mark.parametrize("name", MODELS)
def test_inputs_match_the_zoo_spec(name):
    spec = {s.name: s for s in zoo.get(name).input_spec("tiny")}
    (sample,) = samples(name, "test", 1)
    assert set(sample.inputs) == set(spec)
    for key, value in sample.inputs.items():
        assert value.shape == tuple(spec[key].shape)
        assert value.dtype == np.dtype(spec[key].dtype)


@pytest.mark.parametrize("name", MODELS)
def test_deterministic_and_seeded(name):
    a = samples(name, "test", 2, seed=3)
    b = samples(name, "test", 2, seed=3)
    c = samples(name, "test", 2, seed=4)
    for x, y, z in zip(a, b, c):
        for k in x.inputs:
            np.testing.assert_array_equal(x.inputs[k], y.inputs[k])
            assert not np.array_equal(x.inputs[k], z.inputs[k])


@pytest.mark.parametrize("name", MODELS)
def test_splits_are_disjoint(name):
    seen = {}
    for split in SPLITS:
        for s in samples(name, split, 3):
            key = s.inputs[next(iter(s.inputs))].tobytes()
            assert key not in seen, f"{split} repeats a {seen.get(key)} sample"
            seen[key] = split
    # `start` continues the same stream: the second sample of a call is the first of start=1
    np.testing.assert_array_equal(samples(name, "train", 2)[1].inputs[next(iter(s.inputs))],
                                  samples(name, "train", 1, start=1)[0].inputs[next(iter(s.inputs))])


def test_deblur_photographs_never_shared_between_splits():
    train, calib, test = (set(PHOTOS[s]) for s in SPLITS)
    assert not (train & calib) and not (train & test) and not (calib & test)


def test_pose_ground_truth():
    for s in samples("litepose", "train", 8):
        kp = s.target["keypoints"]
        assert kp.ndim == 3 and kp.shape[1:] == (17, 3) and 1 <= kp.shape[0] <= 3
        assert set(np.unique(kp[..., 2])) <= {0.0, 1.0, 2.0}
        inside = (kp[..., 0] >= 0) & (kp[..., 0] < 128) & (kp[..., 1] >= 0) & (kp[..., 1] < 128)
        assert np.array_equal(kp[..., 2] > 0, inside)
        assert (s.target["areas"] > 0).all()
        # frontal people: the left shoulder is on the image's right of the right shoulder
        assert (kp[:, 5, 0] > kp[:, 6, 0]).all()
        img = s.inputs["image"]
        assert img.min() >= 0 and img.max() <= 1


def test_depth_ground_truth():
    for s in samples("depth", "train", 3):
        d = s.target
        assert d.shape == (128, 128) and np.isfinite(d).all()
        assert d.min() > 0.1 and d.max() <= 20.0
        # the bottom of the image (ground near the camera) is closer than the top
        assert np.median(d[-8:]) < np.median(d[:8])


def test_deblur_pairs():
    k = motion_kernel(np.random.default_rng(0))
    assert abs(k.sum() - 1) < 1e-5 and (k >= 0).all()
    for s in samples("deblur", "train", 4):
        blurred, sharp = s.inputs["image"][0], s.target
        assert sharp.shape == blurred.shape == (3, 64, 64)
        assert np.abs(blurred - sharp).mean() > 1e-3
        assert 0 <= sharp.min() and sharp.max() <= 1


@pytest.mark.parametrize("kind", KINDS)
def test_lm_answers_follow_their_keys(kind):
    for length in (256, 2048):
        (s,) = samples("lm", "test", 1, length=length, kind=kind)
        tokens = s.inputs["tokens"][0]
        assert len(tokens) == length and tokens.dtype == np.int64 and tokens.max() < 128
        t = s.target
        np.testing.assert_array_equal(tokens[t["positions"] + 1], t["answers"])
        np.testing.assert_array_equal(tokens[t["train_positions"] + 1], t["train_answers"])
        assert np.isin(t["answers"], VALUES).all()
        # the answer is retrievable: key followed by value occurs in the context before the query
        key, value = tokens[t["positions"][0]], t["answers"][0]
        context = tokens[:t["positions"][0] - 1]
        assert ((context[:-1] == key) & (context[1:] == value)).any()


def test_lm_copy_kind_supervises_what_the_previous_occurrence_predicts():
    for length in (64, 1024):
        (s,) = samples("lm", "train", 1, length=length, kind="copy")
        tokens, t = s.inputs["tokens"][0], s.target
        assert len(tokens) == length and tokens[1:].min() >= 5  # no special token after BOS
        np.testing.assert_array_equal(tokens[t["train_positions"] + 1], t["train_answers"])
        for p in t["train_positions"]:  # the current token occurred before, and was followed by the answer
            earlier = np.nonzero(tokens[1:p] == tokens[p])[0] + 1
            assert len(earlier) and tokens[earlier[-1] + 1] == tokens[p + 1]
    # the shortest curriculum sequences still fit their kv records
    (s,) = samples("lm", "train", 1, length=64, kind="kv")
    np.testing.assert_array_equal(s.inputs["tokens"][0][s.target["positions"] + 1], s.target["answers"])


def test_bad_arguments():
    with pytest.raises(EdgekitError, match="unknown split"):
        samples("depth", "val", 1)
    with pytest.raises(EdgekitError, match="unknown model or task"):
        samples("resnet", "test", 1)
    with pytest.raises(EdgekitError, match="kind"):
        samples("lm", "test", 1, kind="sorting")
    assert task_of("litepose") == "pose" and task_of("lm") == "lm"
