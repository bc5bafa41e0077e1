"""Deblurring: crops of scikit-image's bundled photographs and procedural
textures, blurred by random motion kernels, plus sensor noise.

The photographs are split between train / calib / test (no photograph is in
two splits); procedural textures are drawn in every split from that split's
own random stream. Blur is applied to a larger crop and the border cut away,
so the blurred image has no artificial edge effects. Ground truth: the sharp
crop [3, H, W] float32 in [0, 1].
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from edgekit.data import Sample, _image_size, register_task
from edgekit.data import textures as T

# photographs shipped inside the scikit-image wheel (no download needed)
PHOTOS = {
    "train": ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "ihc.png",
              "brick.png", "grass.png", "coins.png", "page.png", "text.png", "cell.png",
              "motorcycle_right.png"),
    "calib": ("retina.jpg", "moon.png", "color.png"),
    "test": ("chelsea.png", "camera.png", "gravel.png"),
}
KERNEL_SIZE = 15
PHOTO_FRACTION = 0.7


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A bundled photograph as float32 RGB [3, h, w] in [0, 1]."""
    import skimage.data
    import skimage.io

    image = skimage.io.imread(Path(skimage.data.data_dir) / name)
    image = np.asarray(image, np.float32)
    if image.max() > 1.0:
        image = image / (65535.0 if image.max() > 255 else 255.0)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].transpose(2, 0, 1))


def motion_kernel(rng: np.random.Generator, size: int = KERNEL_SIZE) -> np.ndarray:
    """A random camera-shake kernel: a smooth curved trajectory, normalised to sum 1."""
    length = rng.uniform(3.0, size - 4)
    angle = rng.uniform(0, np.pi)
    curve = rng.normal(0, 0.6)
    s = np.linspace(-0.5, 0.5, 96)
    heading = angle + curve * s
    step = length / len(s)
    x = np.cumsum(np.cos(heading) * step)
    y = np.cumsum(np.sin(heading) * step)
    x, y = x - x.mean() + size / 2, y - y.mean() + size / 2
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    kernel = np.zeros((size, size))
    speed = rng.uniform(0.5, 1.5, len(s)) if rng.random() < 0.5 else np.ones(len(s))
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                        (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (np.clip(y0 + dy, 0, size - 1), np.clip(x0 + dx, 0, size - 1)), wgt * speed)
    return (kernel / kernel.sum()).astype(np.float32)


def _sharp_crop(rng, split: str, h: int, w: int) -> np.ndarray:
    if rng.random() < PHOTO_FRACTION:
        photo = _photo(PHOTOS[split][rng.integers(len(PHOTOS[split]))])
        scale = rng.uniform(0.35, 1.0)
        ch, cw = int(round(h / scale)), int(round(w / scale))
        ch, cw = min(ch, photo.shape[1]), min(cw, photo.shape[2])
        y = rng.integers(0, photo.shape[1] - ch + 1)
        x = rng.integers(0, photo.shape[2] - cw + 1)
        crop = photo[:, y:y + ch, x:x + cw]
        crop = _resize(crop, h, w)
        if rng.random() < 0.5:
            crop = crop[:, :, ::-1]
        return np.ascontiguousarray(crop)
    texture = T.random_texture(rng, h, w)
    ys, xs = T.grid(h, w)
    for _ in range(rng.integers(1, 6)):  # sharp edges are what blur destroys
        cov = T.ellipse(ys, xs, rng.uniform(0, [w, h]), rng.uniform(3, w / 2), rng.uniform(3, h / 2),
                        rng.uniform(0, np.pi))
        T.paint(texture, cov, T.random_texture(rng, h, w) if rng.random() < 0.5 else T.random_colour(rng))
    return texture


def _resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    if image.shape[1:] == (h, w):
        return image
    import skimage.transform

    return skimage.transform.resize(image, (image.shape[0], h, w), order=1, anti_aliasing=True,
                                    preserve_range=True).astype(np.float32)


def blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'valid' 2-D convolution of every channel of [C, H, W] with the kernel (via FFT)."""
    from scipy.signal import fftconvolve

    return fftconvolve(image, kernel[None], mode="valid").astype(np.float32)


@register_task("deblur")
def deblur_sample(rng: np.random.Generator, spec: dict, split: str = "test", size=None) -> Sample:
    h, w = size or _image_size(spec)
    pad = KERNEL_SIZE - 1
    big = _sharp_crop(rng, split, h + pad, w + pad)
    kernel = motion_kernel(rng)
    blurred = blur(big, kernel)
    sharp = big[:, pad // 2:pad // 2 + h, pad // 2:pad // 2 + w]
    noise = rng.uniform(0.0, 0.015)
    blurred = blurred + rng.normal(0, noise, blurred.shape).astype(np.float32)
    image = np.clip(blurred, 0, 1).astype(np.float32)[None]
    return Sample({"image": image}, np.ascontiguousarray(sharp, dtype=np.float32),
                  {"kernel": kernel, "noise": noise, "size": (h, w)})
