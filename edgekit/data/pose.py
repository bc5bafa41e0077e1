"""Multi-person pose: 1-3 articulated stick figures with COCO's 17 keypoints.

People face the camera (so the person's left is on the image's right, as in
a frontal COCO photo), lean and bend their limbs at random, vary in scale,
limb width and colour (left limbs are light tints of the body colour, right
limbs dark shades: a consistent left/right cue), stand on textured cluttered
backgrounds and are partly covered by each other or by occluders.
Ground truth: keypoints [P, 17, 3] as (x, y, v) in input pixels with COCO
visibility (2 visible, 1 labelled but occluded, 0 outside the image).
"""
from __future__ import annotations

import numpy as np

from edgekit.data import Sample, _image_size, register_task
from edgekit.data import textures as T

KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
             "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
             "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
NUM_JOINTS = 17
# COCO skeleton, 0-based (pycocotools' person category uses the 1-based form)
SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
            (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
# COCO per-keypoint OKS sigmas (pycocotools' defaults)
OKS_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                       .87, .87, .89, .89]) / 10.0
# horizontal flip swaps left and right joints
FLIP_INDEX = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
# ratio of a person's area to the box around its keypoints (a COCO person's
# segmentation fills roughly half of its box); used for the OKS scale
AREA_PER_BOX = 0.5


def _rot(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]], np.float32)


def person_keypoints(rng: np.random.Generator, centre, height: float):
    """Random frontal pose: keypoints [17, 2] (x, y) and the head (centre, radius)."""
    lean = rng.uniform(-0.35, 0.35)
    up = np.array([np.sin(lean), -np.cos(lean)], np.float32)
    left = np.array([np.cos(lean), np.sin(lean)], np.float32)  # person's left = image right
    h = height
    pelvis = np.asarray(centre, np.float32)
    neck = pelvis + up * 0.30 * h
    kp = np.zeros((NUM_JOINTS, 2), np.float32)
    shoulder_half = rng.uniform(0.08, 0.11) * h
    hip_half = rng.uniform(0.055, 0.08) * h
    kp[5], kp[6] = neck + left * shoulder_half, neck - left * shoulder_half
    kp[11], kp[12] = pelvis + left * hip_half, pelvis - left * hip_half
    head_r = rng.uniform(0.065, 0.085) * h
    tilt = rng.uniform(-0.3, 0.3)
    head_up = _rot(up, tilt)
    head_left = _rot(left, tilt)
    head = neck + head_up * (0.05 * h + head_r)
    yaw = rng.uniform(-0.25, 0.25) * head_r
    kp[0] = head - head_up * 0.15 * head_r + head_left * yaw
    kp[1] = head + head_up * 0.25 * head_r + head_left * (0.38 * head_r + yaw)
    kp[2] = head + head_up * 0.25 * head_r - head_left * (0.38 * head_r - yaw)
    kp[3] = head + head_left * 0.95 * head_r
    kp[4] = head - head_left * 0.95 * head_r
    down = -up
    for side, sign in ((0, 1.0), (1, -1.0)):
        # arms: raise angle from hanging down, then bend at the elbow
        raise_ = rng.uniform(-0.3, 2.9)
        upper = _rot(down, -sign * raise_) * rng.uniform(0.14, 0.17) * h
        fore_dir = _rot(upper / np.linalg.norm(upper), -sign * rng.uniform(-0.6, 2.4))
        kp[7 + side] = kp[5 + side] + upper
        kp[9 + side] = kp[7 + side] + fore_dir * rng.uniform(0.13, 0.16) * h
        # legs: spread, then bend at the knee
        spread = rng.uniform(-0.25, 0.9)
        thigh = _rot(down, -sign * spread) * rng.uniform(0.21, 0.25) * h
        shin_dir = _rot(thigh / np.linalg.norm(thigh), sign * rng.uniform(-0.2, 1.3))
        kp[13 + side] = kp[11 + side] + thigh
        kp[15 + side] = kp[13 + side] + shin_dir * rng.uniform(0.21, 0.25) * h
    return kp, head, head_r


def _draw_person(canvas, owner, pid, ys, xs, rng, kp, head, head_r, height):
    """Paint one person; mark the pixels it covers in `owner`."""
    body = rng.uniform(0.05, 0.95, 3).astype(np.float32)
    light = 0.45 * body + 0.55          # left limbs: light tint
    dark = 0.45 * body                  # right limbs: dark shade
    skin = rng.uniform(0.3, 0.95) * np.array([1.0, 0.8, 0.65], np.float32)
    width = max(1.0, rng.uniform(0.018, 0.04) * height)
    cover_all = np.zeros(owner.shape, np.float32)

    def put(cov, colour):
        T.paint(canvas, cov, colour)
        np.maximum(cover_all, cov, out=cover_all)

    mid_sh, mid_hip = (kp[5] + kp[6]) / 2, (kp[11] + kp[12]) / 2
    torso_r = max(1.5, 0.6 * np.linalg.norm(kp[5] - kp[6]) * rng.uniform(0.6, 0.9))
    limbs_back = [((11, 13), (13, 15), light), ((12, 14), (14, 16), dark)]
    arms = [((5, 7), (7, 9), light), ((6, 8), (8, 10), dark)]
    if rng.random() < 0.5:
        arms.reverse()
    for (a, b), (c, d), colour in limbs_back:
        put(T.capsule(ys, xs, kp[a], kp[b], width * 1.15), colour)
        put(T.capsule(ys, xs, kp[c], kp[d], width), colour)
    put(T.capsule(ys, xs, mid_sh, mid_hip, torso_r), body)
    put(T.capsule(ys, xs, kp[11], kp[12], width), body)
    put(T.capsule(ys, xs, mid_sh, head, width), skin)
    for (a, b), (c, d), colour in arms:
        put(T.capsule(ys, xs, kp[a], kp[b], width), colour)
        put(T.capsule(ys, xs, kp[c], kp[d], width * 0.9), colour)
        put(T.disk(ys, xs, kp[d], width * 1.3), skin)  # hand
    put(T.disk(ys, xs, head, head_r), skin)
    feature_r = max(0.6, 0.16 * head_r)
    for j, colour in ((3, skin * 0.7), (4, skin * 0.7), (1, (0.05, 0.05, 0.1)),
                      (2, (0.05, 0.05, 0.1)), (0, (0.8, 0.2, 0.2))):
        put(T.disk(ys, xs, kp[j], feature_r * (1.4 if j in (3, 4) else 1.0)), colour)
    owner[cover_all > 0.5] = pid


def _background(rng, h, w, ys, xs):
    canvas = T.random_texture(rng, h, w)
    if rng.random() < 0.5:
        canvas = 0.5 * canvas + 0.5 * T.random_texture(rng, h, w)
    for _ in range(rng.integers(2, 9)):  # clutter: blobs and sticks
        centre = rng.uniform(0, [w, h])
        if rng.random() < 0.5:
            cov = T.ellipse(ys, xs, centre, rng.uniform(3, 25), rng.uniform(3, 25), rng.uniform(0, np.pi))
        else:
            end = centre + rng.normal(0, 25, 2)
            cov = T.capsule(ys, xs, centre, end, rng.uniform(0.7, 3))
        T.paint(canvas, cov, T.random_texture(rng, h, w) if rng.random() < 0.4 else T.random_colour(rng))
    return canvas


@register_task("pose")
def pose_sample(rng: np.random.Generator, spec: dict, split: str = "test", size=None,
                max_people: int = 3) -> Sample:
    h, w = size or _image_size(spec)
    ys, xs = T.grid(h, w)
    canvas = _background(rng, h, w, ys, xs)
    owner = np.full((h, w), -1, np.int32)
    people = int(rng.integers(1, max_people + 1))
    scale = min(h, w)
    keypoints = np.zeros((people, NUM_JOINTS, 3), np.float32)
    for pid in range(people):
        height = rng.uniform(0.38, 0.85) * scale * (1.0 if people == 1 else rng.uniform(0.7, 1.0))
        centre = (rng.uniform(0.12, 0.88) * w,
                  rng.uniform(0.5 * height, h - 0.42 * height) if h > 0.95 * height else h / 2)
        kp, head, head_r = person_keypoints(rng, centre, height)
        _draw_person(canvas, owner, pid, ys, xs, rng, kp, head, head_r, height)
        keypoints[pid, :, :2] = kp
    for _ in range(rng.integers(0, 3) if rng.random() < 0.45 else 0):  # occluders over people
        target = keypoints[rng.integers(people), rng.integers(NUM_JOINTS), :2]
        centre = target + rng.normal(0, 4, 2)
        rx, ry = rng.uniform(4, 0.18 * scale), rng.uniform(4, 0.18 * scale)
        cov = T.ellipse(ys, xs, centre, rx, ry, rng.uniform(0, np.pi))
        T.paint(canvas, cov, T.random_texture(rng, h, w))
        owner[cov > 0.5] = -2
    keypoints[:, :, 2] = _visibility(keypoints[:, :, :2], owner)
    canvas = canvas * rng.uniform(0.7, 1.15) + rng.uniform(-0.1, 0.1)
    canvas += rng.normal(0, rng.uniform(0, 0.03), canvas.shape).astype(np.float32)
    image = np.clip(canvas, 0, 1).astype(np.float32)[None]
    target = {"keypoints": keypoints, "areas": person_areas(keypoints)}
    return Sample({"image": image}, target, {"people": people, "size": (h, w)})


def _visibility(kp: np.ndarray, owner: np.ndarray) -> np.ndarray:
    h, w = owner.shape
    x, y = kp[..., 0], kp[..., 1]
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    xi = np.clip(x.astype(int), 0, w - 1)
    yi = np.clip(y.astype(int), 0, h - 1)
    pid = np.arange(kp.shape[0])[:, None]
    seen = np.zeros(x.shape, bool)
    for dy in (-1, 0, 1):  # visible if the person owns a pixel next to the joint
        for dx in (-1, 0, 1):
            seen |= owner[np.clip(yi + dy, 0, h - 1), np.clip(xi + dx, 0, w - 1)] == pid
    return np.where(inside, np.where(seen, 2, 1), 0).astype(np.float32)


def person_areas(keypoints: np.ndarray) -> np.ndarray:
    """OKS scale of each person: AREA_PER_BOX x the box around its labelled keypoints."""
    areas = []
    for person in keypoints:
        lab = person[person[:, 2] > 0]
        if len(lab) == 0:
            areas.append(0.0)
            continue
        box_w, box_h = np.ptp(lab[:, 0]), np.ptp(lab[:, 1])
        areas.append(float(max(box_w, 1.0) * max(box_h, 1.0) * AREA_PER_BOX))
    return np.array(areas, np.float32)
