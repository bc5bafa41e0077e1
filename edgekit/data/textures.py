"""Vectorised procedural textures and shape masks shared by the image tasks."""
from __future__ import annotations

import numpy as np


def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each [h, w] float32."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return ys + 0.5, xs + 0.5


def value_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth noise in [0, 1]: a random coarse grid upsampled bilinearly -> [channels, h, w]."""
    cells = max(1, int(cells))
    coarse = rng.random((channels, cells + 2, cells + 2)).astype(np.float32)
    ys = np.linspace(0.5, cells + 0.5, h, dtype=np.float32)
    xs = np.linspace(0.5, cells + 0.5, w, dtype=np.float32)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = coarse[:, y0][:, :, x0]
    b = coarse[:, y0][:, :, x0 + 1]
    c = coarse[:, y0 + 1][:, :, x0]
    d = coarse[:, y0 + 1][:, :, x0 + 1]
    return (a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx)


def fractal_noise(rng: np.random.Generator, h: int, w: int, octaves: int = 4, base: int = 3,
                  channels: int = 1) -> np.ndarray:
    """Sum of value-noise octaves, normalised to [0, 1]."""
    out = np.zeros((channels, h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        out += amp * value_noise(rng, h, w, base * 2 ** o, channels)
        total += amp
        amp *= 0.5
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def grating(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random sinusoidal grating in [0, 1], [h, w]."""
    ys, xs = grid(h, w)
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(3, 24)
    phase = rng.uniform(0, 2 * np.pi)
    return 0.5 + 0.5 * np.sin((xs * np.cos(theta) + ys * np.sin(theta)) * 2 * np.pi / period + phase)


def checker(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random rotated checkerboard in {0, 1}, [h, w]."""
    ys, xs = grid(h, w)
    theta = rng.uniform(0, np.pi)
    size = rng.uniform(3, 16)
    u = xs * np.cos(theta) + ys * np.sin(theta)
    v = -xs * np.sin(theta) + ys * np.cos(theta)
    return ((np.floor(u / size) + np.floor(v / size)) % 2).astype(np.float32)


def random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, 3).astype(np.float32)


def colourise(pattern: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Map a [h, w] pattern in [0, 1] to RGB [3, h, w] between two colours."""
    return c0[:, None, None] * (1 - pattern[None]) + c1[:, None, None] * pattern[None]


def random_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An RGB [3, h, w] texture: noise, grating, checker or a blend."""
    kind = rng.integers(0, 4)
    if kind == 0:
        pattern = fractal_noise(rng, h, w, octaves=int(rng.integers(2, 5)), base=int(rng.integers(2, 6)))[0]
    elif kind == 1:
        pattern = grating(rng, h, w)
    elif kind == 2:
        pattern = checker(rng, h, w)
    else:
        pattern = 0.5 * grating(rng, h, w) + 0.5 * fractal_noise(rng, h, w, 3, 4)[0]
    return colourise(pattern, random_colour(rng), random_colour(rng))


def segment_distance(ys: np.ndarray, xs: np.ndarray, p0, p1) -> np.ndarray:
    """Distance of every pixel to the segment p0-p1 (points given as (x, y))."""
    x0, y0 = p0
    x1, y1 = p1
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    t = ((xs - x0) * dx + (ys - y0) * dy) / max(length2, 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy))


def capsule(ys, xs, p0, p1, radius: float) -> np.ndarray:
    """Soft (anti-aliased) coverage in [0, 1] of a capsule of the given radius."""
    return np.clip(radius + 0.5 - segment_distance(ys, xs, p0, p1), 0.0, 1.0)


def disk(ys, xs, centre, radius: float) -> np.ndarray:
    return np.clip(radius + 0.5 - np.hypot(xs - centre[0], ys - centre[1]), 0.0, 1.0)


def ellipse(ys, xs, centre, rx: float, ry: float, theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    u = (xs - centre[0]) * c + (ys - centre[1]) * s
    v = -(xs - centre[0]) * s + (ys - centre[1]) * c
    r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    return np.clip((1.0 - r) * min(rx, ry) + 0.5, 0.0, 1.0)


def paint(canvas: np.ndarray, coverage: np.ndarray, colour) -> None:
    """Alpha-blend `colour` ([3] or [3, h, w]) onto canvas [3, h, w] in place."""
    colour = np.asarray(colour, np.float32)
    if colour.ndim == 1:
        colour = colour[:, None, None]
    canvas *= 1 - coverage[None]
    canvas += coverage[None] * colour
