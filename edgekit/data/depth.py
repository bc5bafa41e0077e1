"""Monocular metric depth: ray-cast 3D scenes rendered to RGB + depth.

A camera 1.2-2.2 m above a ground plane looks into a room (back wall,
optional side walls) holding boxes, spheres and vertical cylinders. Every
surface gets a procedural texture in its own coordinates (so texture scale
is a depth cue, as in real scenes) and Lambert shading with soft shadows of
the objects. Ground truth: z-depth (distance along the optical axis) in
metres, [H, W] float32. All ray intersections are vectorised over pixels.
"""
from __future__ import annotations

import numpy as np

from edgekit.data import Sample, _image_size, register_task
from edgekit.data import textures as T

MAX_DEPTH = 20.0
_FAR = 1e9


def _camera(rng, h, w):
    height = rng.uniform(1.2, 2.2)
    yaw = rng.uniform(-0.5, 0.5)
    pitch = rng.uniform(-0.3, 0.02)
    hfov = np.deg2rad(rng.uniform(55, 70))
    f = (w / 2) / np.tan(hfov / 2)
    forward = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    right = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])
    up = np.cross(forward, right)
    ys, xs = T.grid(h, w)
    u = (xs - w / 2) / f
    v = -(ys - h / 2) / f
    dirs = forward[None, None] + u[..., None] * right[None, None] + v[..., None] * up[None, None]
    dirs = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    origin = np.array([0.0, height, 0.0])
    return origin, dirs.reshape(-1, 3), forward


def _plane(o, d, normal, offset):
    """t where the ray meets plane n.x = offset (front side only)."""
    denom = d @ normal
    t = (offset - o @ normal) / np.where(np.abs(denom) < 1e-9, 1e-9, denom)
    return np.where((t > 1e-4) & (denom < 0), t, _FAR)


def _sphere(o, d, centre, radius):
    oc = o - centre
    b = d @ oc
    c = oc @ oc - radius ** 2
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0))
    return np.where((disc > 0) & (t > 1e-4), t, _FAR)


def _box(o, d, centre, half, yaw):
    """Ray vs a box rotated about the vertical axis; returns t and the local hit normal axis."""
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])  # world -> local
    ol = rot @ (o - centre)
    dl = d @ rot.T
    inv = 1.0 / np.where(np.abs(dl) < 1e-9, 1e-9, dl)
    t0 = (-half - ol) * inv
    t1 = (half - ol) * inv
    tmin = np.minimum(t0, t1)
    tmax = np.maximum(t0, t1)
    tnear = tmin.max(axis=-1)
    tfar = tmax.min(axis=-1)
    hit = (tnear <= tfar) & (tnear > 1e-4)
    return np.where(hit, tnear, _FAR), tmin.argmax(axis=-1), rot


def _cylinder(o, d, centre, radius, height):
    """Vertical cylinder standing on the ground at centre (x, 0, z), with a top cap."""
    ox, oz = o[0] - centre[0], o[2] - centre[2]
    dx, dz = d[:, 0], d[:, 2]
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - radius ** 2
    disc = b * b - a * c
    t_side = (-b - np.sqrt(np.maximum(disc, 0))) / np.maximum(a, 1e-12)
    y_side = o[1] + t_side * d[:, 1]
    side_ok = (disc > 0) & (t_side > 1e-4) & (y_side >= 0) & (y_side <= height)
    t_cap = (height - o[1]) / np.where(np.abs(d[:, 1]) < 1e-9, 1e-9, d[:, 1])
    px, pz = ox + t_cap * dx, oz + t_cap * dz
    cap_ok = (t_cap > 1e-4) & (px * px + pz * pz <= radius ** 2) & (o[1] > height)
    t = np.where(side_ok, t_side, _FAR)
    return np.minimum(t, np.where(cap_ok, t_cap, _FAR)), ~side_ok


class _Scene:
    """Objects placed on the ground; each has a texture and colour pair."""

    def __init__(self, rng, forward):
        self.back = rng.uniform(7, 19)
        self.side = [rng.uniform(2.5, 7) if rng.random() < 0.65 else None for _ in range(2)]
        self.objects = []
        yaw = np.arctan2(forward[0], forward[2])
        for _ in range(rng.integers(3, 10)):
            dist = rng.uniform(1.8, self.back - 1.0)
            ang = yaw + rng.uniform(-0.6, 0.6)
            x, z = dist * np.sin(ang), dist * np.cos(ang)
            kind = rng.choice(["box", "sphere", "cylinder"])
            size = rng.uniform(0.25, 1.2)
            self.objects.append(dict(kind=kind, pos=np.array([x, 0.0, z]), size=size,
                                     tall=rng.uniform(0.5, 2.5), yaw=rng.uniform(0, np.pi),
                                     lift=rng.uniform(0, 0.8) if kind == "sphere" else 0.0,
                                     tex=_material(rng)))
        self.ground_tex = _material(rng)
        self.wall_tex = [_material(rng) for _ in range(3)]

    def intersect(self, o, d):
        """Nearest hit: t, surface id, normals [N, 3], texture coords [N, 2]."""
        n = d.shape[0]
        best = np.full(n, _FAR)
        sid = np.full(n, -1)
        normal = np.zeros((n, 3))
        candidates = [(_plane(o, d, np.array([0.0, 1, 0]), 0.0), np.array([0.0, 1, 0]))]
        candidates.append((_plane(o, d, np.array([0.0, 0, -1]), -self.back), np.array([0.0, 0, -1])))
        for k, wall in enumerate(self.side):
            sign = 1.0 if k == 0 else -1.0
            if wall is not None:
                nrm = np.array([sign, 0.0, 0])
                candidates.append((_plane(o, d, nrm, -wall), nrm))
            else:
                candidates.append((np.full(n, _FAR), np.zeros(3)))
        for i, (t, nrm) in enumerate(candidates):
            closer = t < best
            best = np.where(closer, t, best)
            sid = np.where(closer, i, sid)
            normal[closer] = nrm
        for j, ob in enumerate(self.objects):
            s, pos = ob["size"], ob["pos"]
            if ob["kind"] == "sphere":
                centre = pos + np.array([0, s + ob["lift"], 0])
                t = _sphere(o, d, centre, s)
                closer = t < best
                hitp = o + t[closer, None] * d[closer]
                normal[closer] = (hitp - centre) / s
            elif ob["kind"] == "box":
                half = np.array([s, ob["tall"] / 2, s * 0.8])
                centre = pos + np.array([0, ob["tall"] / 2, 0])
                t, axis, rot = _box(o, d, centre, half, ob["yaw"])
                closer = t < best
                hitp = o + t[closer, None] * d[closer]
                local = (hitp - centre) @ rot.T
                nl = np.zeros_like(local)
                idx = np.arange(len(local))
                nl[idx, axis[closer]] = np.sign(local[idx, axis[closer]])
                normal[closer] = nl @ rot
            else:
                t, is_cap = _cylinder(o, d, pos, s * 0.7, ob["tall"])
                closer = t < best
                hitp = o + t[closer, None] * d[closer]
                radial = hitp - pos
                radial[:, 1] = 0
                radial /= np.maximum(np.linalg.norm(radial, axis=-1, keepdims=True), 1e-9)
                normal[closer] = np.where(is_cap[closer, None], np.array([0.0, 1, 0]), radial)
            best = np.where(closer, t, best)
            sid = np.where(closer, 4 + j, sid)
        return best, sid, normal

    def material(self, sid):
        if sid == 0:
            return self.ground_tex
        if sid <= 3:
            return self.wall_tex[sid - 1]
        return self.objects[sid - 4]["tex"]


def _material(rng):
    return dict(kind=int(rng.integers(0, 4)), scale=rng.uniform(0.15, 1.2),
                c0=rng.uniform(0.05, 0.95, 3), c1=rng.uniform(0.05, 0.95, 3),
                phase=rng.uniform(0, 100, 3), freq=rng.uniform(1.0, 4.0))


def _pattern(mat, p):
    """Solid 3D texture evaluated at world points p [N, 3] -> [N] in [0, 1]."""
    q = p / mat["scale"] + mat["phase"]
    kind = mat["kind"]
    if kind == 0:  # 3D checker
        return (np.floor(q).sum(axis=-1) % 2).astype(np.float64)
    if kind == 1:  # stripes
        return 0.5 + 0.5 * np.sin(q[:, 0] * mat["freq"] + q[:, 1] * 1.3 + q[:, 2] * 0.7)
    if kind == 2:  # hashed cells (value noise without interpolation, smoothed by sines)
        cell = np.floor(q * 2)
        return (np.sin(cell @ np.array([12.9898, 78.233, 37.719])) * 43758.5453) % 1.0
    return 0.5 + 0.25 * (np.sin(q[:, 0] * 3.1) + np.sin(q[:, 2] * 2.3 + np.sin(q[:, 1] * 1.7)))


@register_task("depth")
def depth_sample(rng: np.random.Generator, spec: dict, split: str = "test", size=None) -> Sample:
    h, w = size or _image_size(spec)
    origin, dirs, forward = _camera(rng, h, w)
    scene = _Scene(rng, forward)
    t, sid, normal = scene.intersect(origin, dirs)
    points = origin + t[:, None] * dirs
    albedo = np.zeros((dirs.shape[0], 3))
    for s in np.unique(sid):
        m = sid == s
        mat = scene.material(int(s))
        pat = _pattern(mat, points[m])[:, None]
        albedo[m] = mat["c0"] * (1 - pat) + mat["c1"] * pat
    light = np.array([rng.uniform(-0.6, 0.6), 1.0, rng.uniform(-0.8, 0.2)])
    light /= np.linalg.norm(light)
    lambert = np.clip(normal @ light, 0, 1)
    # hard shadows from the objects, softened by ambient light
    shadow = _shadows(scene, points + normal * 1e-3, light)
    ambient = rng.uniform(0.25, 0.45)
    shade = ambient + (1 - ambient) * lambert * np.where(shadow, 0.35, 1.0)
    rgb = albedo * shade[:, None] * rng.uniform(0.8, 1.2)
    fog = np.exp(-t * rng.uniform(0.0, 0.03))[:, None]  # a little haze, as in photographs
    rgb = rgb * fog + (1 - fog) * rng.uniform(0.5, 0.9)
    depth = np.minimum(t * (dirs @ forward), MAX_DEPTH).reshape(h, w).astype(np.float32)
    image = rgb.reshape(h, w, 3).transpose(2, 0, 1)
    image = image + rng.normal(0, 0.01, image.shape)
    image = np.clip(image, 0, 1).astype(np.float32)[None]
    return Sample({"image": image}, depth, {"size": (h, w)})


def _shadows(scene: _Scene, points: np.ndarray, light: np.ndarray) -> np.ndarray:
    """True where the way to the (directional) light is blocked by an object."""
    blocked = np.zeros(points.shape[0], bool)
    for ob in scene.objects:
        s, pos = ob["size"], ob["pos"]
        if ob["kind"] == "sphere":
            centre = pos + np.array([0, s + ob["lift"], 0])
            oc = points - centre
            b = oc @ light
            c = (oc * oc).sum(-1) - s * s
            disc = b * b - c
            t = -b + np.sqrt(np.maximum(disc, 0))
            blocked |= (disc > 0) & (t > 1e-3)
        else:
            # cylinders shadow like their bounding boxes: cheap and plausible
            half = np.array([s, ob["tall"] / 2, s * 0.8]) if ob["kind"] == "box" else \
                np.array([s * 0.7, ob["tall"] / 2, s * 0.7])
            centre = pos + np.array([0, ob["tall"] / 2, 0])
            c_, s_ = np.cos(ob["yaw"]), np.sin(ob["yaw"])
            rot = np.array([[c_, 0, -s_], [0, 1, 0], [s_, 0, c_]])
            ol = (points - centre) @ rot.T
            dl = rot @ light
            inv = 1.0 / np.where(np.abs(dl) < 1e-9, 1e-9, dl)
            t0, t1 = (-half - ol) * inv, (half - ol) * inv
            tnear = np.minimum(t0, t1).max(-1)
            tfar = np.maximum(t0, t1).min(-1)
            blocked |= (tnear <= tfar) & (tfar > 1e-3) & (tnear > 1e-3)
    return blocked
