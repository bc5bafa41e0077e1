"""Bottom-up decoding of LitePose outputs and COCO keypoint AP with pycocotools.

Decoding follows associative embedding (Newell et al., as in HigherHRNet and
LitePose): the 1/4-resolution heatmaps are upsampled and averaged with the
1/2-resolution ones, peaks are found by 3x3 max-pooling, joints are greedily
grouped into people by their tag values (Hungarian matching per joint type),
missing joints are filled in from the heatmap near the person's tag,
peaks are refined by a quarter pixel towards the higher neighbour, and
near-duplicate people (OKS > 0.8 with a higher-scoring one) are dropped.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from edgekit.data.pose import AREA_PER_BOX, KEYPOINTS, OKS_SIGMAS, SKELETON

# HigherHRNet's grouping order: head, shoulders, hips, then the limbs outwards
JOINT_ORDER = (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16)


def _upsample(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of [C, h, w] to [C, size, size] (half-pixel centres, like torch)."""
    c, h, w = x.shape
    if h == size and w == size:
        return x

    def axis(n_in):
        pos = (np.arange(size) + 0.5) * n_in / size - 0.5
        pos = np.clip(pos, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    ylo, yhi, fy = axis(h)
    xlo, xhi, fx = axis(w)
    rows = x[:, ylo] * (1 - fy)[None, :, None] + x[:, yhi] * fy[None, :, None]
    return rows[:, :, xlo] * (1 - fx) + rows[:, :, xhi] * fx


def fused_maps(heatmaps_tags: np.ndarray, heatmaps_hr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(heatmaps [J, S, S], tags [J, S, S]) at the 1/2-resolution size S: the 1/4-resolution
    heatmaps upsampled and averaged with the 1/2-resolution ones; tags upsampled."""
    j = heatmaps_hr.shape[1]
    size = heatmaps_hr.shape[-1]
    heat = (_upsample(heatmaps_tags[0, :j], size) + heatmaps_hr[0]) / 2
    return heat, _upsample(heatmaps_tags[0, j:2 * j], size)


def to_input_pixels(joints: np.ndarray, stride: float) -> np.ndarray:
    """joints [J, >=3] (heatmap x, y, score) -> keypoints [J, 3] (x, y, score in input pixels)."""
    kp = np.zeros((joints.shape[0], 3), np.float32)
    kp[:, :2] = (joints[:, :2] + 0.5) * stride
    kp[:, 2] = joints[:, 2]
    return kp


def decode(heatmaps_tags: np.ndarray, heatmaps_hr: np.ndarray, image_size: int,
           max_people: int = 6, detection_threshold: float = 0.5, tag_threshold: float = 1.0,
           refine: bool = True, nms_oks: float = 0.8) -> list[tuple[np.ndarray, float]]:
    """LitePose outputs (batch 1) -> [(keypoints [J, 3] as x, y, score in input pixels, person score)].

    max_people and detection_threshold were chosen on the calib split for the
    committed tiny checkpoint (HigherHRNet's 30 / 0.1 gave AP 0.10 there,
    6 / 0.5 gave 0.27): our data has at most 3 people, and the tiny model's
    heatmaps have many weak spurious peaks.
    """
    from scipy.ndimage import maximum_filter
    from scipy.optimize import linear_sum_assignment

    j = heatmaps_hr.shape[1]
    size = heatmaps_hr.shape[-1]
    heat, tags = fused_maps(heatmaps_tags, heatmaps_hr)
    peaks = (heat == maximum_filter(heat, size=(1, 3, 3))) & (heat > detection_threshold)
    people: list[dict] = []  # each: joints [J, 4] (x, y, score, tag), tags list
    for joint in JOINT_ORDER:
        ys, xs = np.nonzero(peaks[joint])
        if len(ys) == 0:
            continue
        vals = heat[joint, ys, xs]
        top = np.argsort(-vals)[:max_people]
        cand = np.stack([xs[top], ys[top], vals[top], tags[joint, ys[top], xs[top]]], axis=1)
        if not people:
            for row in cand:
                people.append(_new_person(j, joint, row))
            continue
        means = np.array([np.mean(p["tags"]) for p in people])
        dist = np.abs(cand[:, 3:4] - means[None, :])
        cost = np.round(dist) * 100 - cand[:, 2:3]  # prefer close tags, then strong peaks
        rows, cols = linear_sum_assignment(cost)
        assigned = set()
        for r, c in zip(rows, cols):
            if dist[r, c] < tag_threshold and people[c]["joints"][joint, 2] == 0:
                people[c]["joints"][joint] = cand[r]
                people[c]["tags"].append(cand[r, 3])
                assigned.add(r)
        for r in range(len(cand)):
            if r not in assigned and len(people) < max_people:
                people.append(_new_person(j, joint, cand[r]))
    results = []
    for p in people:
        joints = p["joints"]
        # score from the joints found by grouping (sum / J): a "person" made of one
        # stray peak ranks low even after refinement fills in its other joints
        score = float(joints[:, 2].sum() / j)
        if refine:
            _fill_missing(joints, heat, tags, float(np.mean(p["tags"])))
        quarter_offset(joints, heat)
        results.append((to_input_pixels(joints, image_size / size), score))
    return pose_nms(results, nms_oks)


def oks(a: np.ndarray, b: np.ndarray) -> float:
    """COCO object keypoint similarity of two poses [J, 3], scaled by a's keypoint box."""
    area = max(np.ptp(a[:, 0]) * np.ptp(a[:, 1]) * AREA_PER_BOX, 1.0)
    d2 = ((a[:, :2] - b[:, :2]) ** 2).sum(-1)
    return float(np.mean(np.exp(-d2 / (2 * area * (2 * OKS_SIGMAS) ** 2))))


def pose_nms(people: list, threshold: float) -> list:
    """Drop a person whose pose nearly repeats a higher-scoring one (OKS above threshold)."""
    kept = []
    for kp, score in sorted(people, key=lambda p: -p[1]):
        if all(oks(other, kp) <= threshold for other, _ in kept):
            kept.append((kp, score))
    return kept


def _new_person(j, joint, row):
    joints = np.zeros((j, 4), np.float32)
    joints[joint] = row
    return {"joints": joints, "tags": [row[3]]}


def _fill_missing(joints, heat, tags, person_tag):
    """Missing joints: the heatmap maximum after penalising tags far from the person's."""
    for jt in np.nonzero(joints[:, 2] == 0)[0]:
        score = heat[jt] - np.round(np.abs(tags[jt] - person_tag))
        y, x = np.unravel_index(np.argmax(score), score.shape)
        joints[jt] = (x, y, heat[jt, y, x], tags[jt, y, x])


def quarter_offset(joints, heat):
    """Move each joint a quarter pixel towards its higher neighbour (in place)."""
    _, h, w = heat.shape
    for jt in range(joints.shape[0]):
        x, y = int(joints[jt, 0]), int(joints[jt, 1])
        if 0 < x < w - 1:
            joints[jt, 0] += 0.25 * np.sign(heat[jt, y, x + 1] - heat[jt, y, x - 1])
        if 0 < y < h - 1:
            joints[jt, 1] += 0.25 * np.sign(heat[jt, y + 1, x] - heat[jt, y - 1, x])


class PoseMetric:
    """Collects ground truth and decoded people; computes COCO keypoint AP/AR."""

    outputs = ("heatmaps_tags", "heatmaps_hr")

    def __init__(self):
        self.images, self.gts, self.dets = [], [], []

    def people(self, sample, outputs) -> list:
        """Decoded people of one image (tools/pose_diagnose.py swaps in oracle decoders)."""
        return decode(outputs["heatmaps_tags"], outputs["heatmaps_hr"], sample.inputs["image"].shape[-1])

    def update(self, index, sample, outputs):
        image_size = sample.inputs["image"].shape[-1]
        people = self.people(sample, outputs)
        self.images.append({"id": index, "width": image_size, "height": sample.inputs["image"].shape[-2]})
        for kp, area in zip(sample.target["keypoints"], sample.target["areas"]):
            lab = kp[kp[:, 2] > 0]
            if len(lab) == 0:
                continue
            x0, y0 = lab[:, 0].min(), lab[:, 1].min()
            self.gts.append({"id": len(self.gts) + 1, "image_id": index, "category_id": 1, "iscrowd": 0,
                             "keypoints": _flat(kp, integer_vis=True), "num_keypoints": int(len(lab)),
                             "area": float(area), "bbox": [float(x0), float(y0),
                                                           float(np.ptp(lab[:, 0])), float(np.ptp(lab[:, 1]))]})
        for kp, score in people:
            self.dets.append({"image_id": index, "category_id": 1, "keypoints": _flat(kp), "score": score})
        return people

    def result(self) -> dict:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        names = ("ap", "ap50", "ap75", "ap_medium", "ap_large", "ar", "ar50", "ar75", "ar_medium", "ar_large")
        if not self.dets:
            return {n: 0.0 for n in names} | {"people": len(self.gts), "detections": 0}
        gt = COCO()
        gt.dataset = {"images": self.images, "annotations": self.gts,
                      "categories": [{"id": 1, "name": "person", "keypoints": list(KEYPOINTS),
                                      "skeleton": [[a + 1, b + 1] for a, b in SKELETON]}]}
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            dt = gt.loadRes(self.dets)
            ev = COCOeval(gt, dt, "keypoints")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out = {n: float(v) for n, v in zip(names, ev.stats)}
        out.update({"people": len(self.gts), "detections": len(self.dets),
                    "oks_area": f"{AREA_PER_BOX} x keypoint box"})
        return out


def _flat(kp, integer_vis=False):
    out = []
    for x, y, v in kp:
        out += [float(x), float(y), int(v) if integer_vis else float(v)]
    return out
