"""Training augmentation on the device, batched and seeded: the few-shot recipe's transforms.

The training loop keeps every split as uint8 on the device, so augmentation runs
there too, on whole batches, instead of per image in data-loader workers:

* ``rrc``: timm's ``RandomResizedCropAndInterpolation(size)``: scale (0.08, 1), log-uniform aspect
  ratio (3/4, 4/3), ten tries then the whole image, bicubic;
* ``flip``: horizontal flip with probability 0.5 (folded into the crop's sampling grid);
* ``rand-m9-mstd0.5-inc1``: timm's RandAugment as DTL and NOAH configure it: two layers, each
  picks one of 15 ops (with replacement) and applies it with probability 0.5 at magnitude
  N(9, 0.5) clipped to [0, 10]; the "increasing" op set; rotate/shear/translate fill with the
  backbone's mean colour (timm's ``img_mean``; 128 for a 0.5-mean backbone, as in DTL).

Each op follows timm's PIL implementation (same magnitude-to-argument rules, same formulas for
the enhance ops); images are rounded to integers after every op, as PIL's uint8 pipeline does.
Differences that remain: the crop is resampled from the cached 256 x 256 image (not the original
file) by ``grid_sample`` (bicubic, no antialiasing), and geometric ops resample with
``grid_sample``. ``tests/test_fewshot.py`` compares every op with timm's on real pixels.

Every random number comes from one CPU generator seeded from the run's seed, so a run's
augmentation stream is the same on any device and in any process.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import BenchError

# timm's _RAND_INCREASING_TRANSFORMS, in its order
OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
GEOMETRIC = frozenset(
    i for i, name in enumerate(OPS) if name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
)
_RAND = re.compile(r"^rand(?P<opts>(-[a-z]+[0-9.]+)*)$")
_SEED_SALT = 0x5EEDA06  # the augmentation stream differs from the data-order stream of the same seed


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def train_augment(preset, seed: int, device: torch.device, mean: tuple[float, ...]) -> Callable:
    """The preset's training augmentation as a function of a uint8 batch (identity for ``none``)."""
    if preset.augmentation == "none":
        return _identity
    return DeviceAugment.from_spec(
        preset.augmentation, preset.img_size, seed=seed, device=device, fill=tuple(round(255 * m) for m in mean)
    )


class DeviceAugment:
    """``rrc``, ``flip`` and ``rand-...`` (timm's RandAugment string) joined by ``+``."""

    def __init__(
        self,
        size: int,
        *,
        seed: int,
        device: torch.device,
        fill: tuple[int, ...] = (128, 128, 128),
        crop: bool = True,
        flip: bool = True,
        rand: dict[str, float] | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ):
        self.size, self.device, self.crop, self.flip = size, device, crop, flip
        self.scale, self.ratio = scale, ratio
        self.rand = rand
        self.fill = torch.tensor(fill, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.generator = torch.Generator().manual_seed(seed ^ _SEED_SALT)

    @classmethod
    def from_spec(cls, spec: str, size: int, **kwargs) -> DeviceAugment:
        parts = spec.split("+")
        rand = None
        for part in parts:
            if part.startswith("rand"):
                rand = parse_rand(part)
            elif part not in ("rrc", "flip"):
                raise BenchError(f"augmentation {spec!r}: unknown part {part!r}; known: rrc, flip, rand-m<M>-…")
        return cls(size, crop="rrc" in parts, flip="flip" in parts, rand=rand, **kwargs)

    # -- sampling (CPU generator) -----------------------------------------------------------

    def _uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, dtype=torch.float64)

    def crop_boxes(self, n: int, height: int, width: int) -> torch.Tensor:
        """timm's RandomResizedCrop boxes ``[n, 4]`` = (top, left, h, w), ten tries then the whole image."""
        area = height * width
        target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * self._uniform(n, 10))
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(lo + (hi - lo) * self._uniform(n, 10))
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        ok = (w <= width) & (h <= height)
        first = torch.argmax(ok.to(torch.int8), dim=1)
        found = ok.any(dim=1)
        rows = torch.arange(n)
        w, h = w[rows, first], h[rows, first]
        u = self._uniform(n, 2)
        top = torch.floor(u[:, 0] * (height - h + 1))
        left = torch.floor(u[:, 1] * (width - w + 1))
        # fallback: the whole image when its aspect ratio is inside `ratio` (always, for square caches)
        in_ratio = width / height
        fw = float(width if in_ratio <= self.ratio[1] else round(height * self.ratio[1]))
        fh = float(height if in_ratio >= self.ratio[0] else round(width / self.ratio[0]))
        top = torch.where(found, top, torch.tensor((height - fh) // 2, dtype=torch.float64))
        left = torch.where(found, left, torch.tensor((width - fw) // 2, dtype=torch.float64))
        h = torch.where(found, h, torch.tensor(fh, dtype=torch.float64))
        w = torch.where(found, w, torch.tensor(fw, dtype=torch.float64))
        return torch.stack([top, left, h, w], dim=1)

    # -- applying --------------------------------------------------------------------------

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> float ``[B, 3, size, size]`` with integer values in [0, 255]."""
        n, _, height, width = images.shape
        x = images.float()
        if self.crop:
            box = self.crop_boxes(n, height, width)
        else:
            box = torch.tensor([[0.0, 0.0, height, width]], dtype=torch.float64).repeat(n, 1)
        flip = self._uniform(n) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        top, left, h, w = box.unbind(1)
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = (w / width) * torch.where(flip, -1.0, 1.0)
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * top + h) / height - 1
        if self.crop or self.flip or (height, width) != (self.size, self.size):
            x = _warp(x, self._to_device(theta.float()), self.size, fill=None)
        if self.rand is not None:
            for _ in range(int(self.rand["n"])):
                x = self._rand_layer(x)
        return x

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A small CPU tensor to the device without making the host wait for the GPU (pinned, async)."""
        if self.device.type != "cuda":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    def _rand_layer(self, x: torch.Tensor) -> torch.Tensor:
        """One RandAugment layer on the whole batch.

        The images are sorted by the op they drew (on the CPU, where the draws are), so every op
        runs once on a contiguous slice: one gather, one scatter and one small launch sequence per
        op that was drawn, one copy to the device, and no host-device synchronisation.
        """
        n = x.shape[0]
        op = torch.randint(len(OPS), (n,), generator=self.generator)
        apply = self._uniform(n) < self.rand["p"]
        magnitude = self.rand["m"] + self.rand["mstd"] * torch.randn(n, generator=self.generator, dtype=torch.float64)
        magnitude = magnitude.clamp(0.0, self.rand.get("mmax", 10.0))
        sign = torch.where(self._uniform(n) > 0.5, -1.0, 1.0).to(torch.float64)  # timm: negate if random() > 0.5
        chosen = torch.where(apply, op, -1)  # -1: this image keeps this layer's input
        key = torch.tensor([len(OPS) if int(k) in GEOMETRIC else int(k) for k in chosen])  # geometric ops last
        order = torch.argsort(key, stable=True)
        key, chosen, magnitude, sign = key[order], chosen[order], magnitude[order], sign[order]
        params = self._to_device(torch.stack([order.double(), magnitude, sign], 1))
        order_d, magnitude_d, sign_d = params[:, 0].long(), params[:, 1], params[:, 2]
        xs = x.index_select(0, order_d)
        bounds = torch.searchsorted(key, torch.arange(len(OPS) + 2) - 1).tolist()  # slice of each key
        for k in range(len(OPS)):
            a, b = bounds[k + 1], bounds[k + 2]
            if a < b and k not in GEOMETRIC:
                xs[a:b] = apply_color_op(xs[a:b], k, magnitude_d[a:b], sign_d[a:b])
        g = bounds[len(OPS) + 1]
        if g < n:
            theta = torch.stack([_op_theta(int(chosen[i]), float(magnitude[i]), float(sign[i])) for i in range(g, n)])
            xs[g:] = _warp(xs[g:], self._to_device(theta), x.shape[-1], fill=self.fill)
        return torch.empty_like(xs).index_copy_(0, order_d, xs)


def parse_rand(spec: str) -> dict[str, float]:
    """timm's RandAugment config string (``rand-m9-mstd0.5-inc1``) -> its settings."""
    m = _RAND.match(spec)
    if not m:
        raise BenchError(f"augmentation part {spec!r} is not a RandAugment string like rand-m9-mstd0.5-inc1")
    opts = {"m": 10.0, "n": 2.0, "p": 0.5, "mstd": 0.0, "inc": 0.0}
    for token in filter(None, m.group("opts").split("-")):
        key = re.match(r"[a-z]+", token).group(0)
        if key not in ("m", "n", "p", "mstd", "mmax", "inc"):
            raise BenchError(f"augmentation part {spec!r}: unknown RandAugment option {key!r}")
        opts[key] = float(token[len(key) :])
    if opts["inc"] != 1:
        raise BenchError(f"augmentation part {spec!r}: only the increasing op set (inc1) is implemented")
    if opts["mstd"] > 100 or math.isinf(opts["mstd"]):
        raise BenchError(f"augmentation part {spec!r}: uniform magnitude sampling (mstd > 100) is not implemented")
    return opts


def _warp(x: torch.Tensor, theta: torch.Tensor, size: int, fill: torch.Tensor | None) -> torch.Tensor:
    """Resample ``x`` on the affine grid ``theta`` (output -> input, normalised coordinates), bicubic."""
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    if fill is None:
        out = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
    else:  # outside the image: the fill colour, as PIL's fillcolor
        out = F.grid_sample(x - fill, grid, mode="bicubic", padding_mode="zeros", align_corners=False) + fill
    return out.round().clamp(0, 255)


def _op_theta(k: int, magnitude: float, sign: float) -> torch.Tensor:
    """The output->input affine map of a geometric op, following PIL's ``Image.transform`` matrices."""
    name = OPS[k]
    level = magnitude / 10.0
    if name == "Rotate":  # PIL rotates counter-clockwise for positive degrees
        r = math.radians(sign * level * 30.0)
        return torch.tensor([[math.cos(r), -math.sin(r), 0.0], [math.sin(r), math.cos(r), 0.0]])
    if name == "ShearX":  # PIL: x_in = x + f*y, origin at the top-left corner
        f = sign * level * 0.3
        return torch.tensor([[1.0, f, f], [0.0, 1.0, 0.0]])
    if name == "ShearY":
        f = sign * level * 0.3
        return torch.tensor([[1.0, 0.0, 0.0], [f, 1.0, f]])
    if name == "TranslateXRel":  # PIL: x_in = x + pct * width
        return torch.tensor([[1.0, 0.0, 2 * sign * level * 0.45], [0.0, 1.0, 0.0]])
    if name == "TranslateYRel":
        return torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 2 * sign * level * 0.45]])
    raise ValueError(name)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")``: ITU-R 601-2 luma, rounded."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.round((r * 299 + g * 587 + b * 114) / 1000)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.blend(degenerate, x, factor)``: truncated to integers, clipped."""
    return torch.floor(degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp(0, 255)


_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0


def apply_color_op(x: torch.Tensor, k: int, magnitude: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """A non-geometric op on float images with integer values; per-image magnitudes and signs."""
    name = OPS[k]
    level = (magnitude / 10.0).to(x.device, torch.float32)
    sign = sign.to(x.device, torch.float32)
    if name == "AutoContrast":  # per image and channel: min..max -> 0..255
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        out = torch.where(hi > lo, torch.floor((x - lo) * (255.0 / (hi - lo).clamp_min(1e-6))), x)
    elif name == "Equalize":
        from torchvision.transforms.v2.functional import equalize

        out = equalize(x.round().clamp(0, 255).to(torch.uint8)).float()
    elif name == "Invert":
        out = 255.0 - x
    elif name == "PosterizeIncreasing":  # keep 4 - int(4 * level) high bits
        bits = 4 - torch.floor(level * 4)
        step = torch.pow(2.0, 8 - bits).view(-1, 1, 1, 1)
        out = torch.floor(x / step) * step
    elif name == "SolarizeIncreasing":  # invert pixels >= 256 - int(256 * level)
        thresh = (256 - torch.clamp(torch.floor(level * 256), max=256)).view(-1, 1, 1, 1)
        out = torch.where(x < thresh, x, 255.0 - x)
    elif name == "SolarizeAdd":
        add = torch.clamp(torch.floor(level * 110), max=128).view(-1, 1, 1, 1)
        out = torch.where(x < 128, torch.clamp(x + add, max=255), x)
    else:  # the enhance ops: factor 1 +- 0.9 * level, at least 0.1
        factor = torch.clamp(1.0 + sign * level * 0.9, min=0.1)
        if name == "ColorIncreasing":
            out = _blend(_grey(x).expand_as(x), x, factor)
        elif name == "ContrastIncreasing":
            mean = torch.floor(_grey(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5)
            out = _blend(mean.expand_as(x), x, factor)
        elif name == "BrightnessIncreasing":
            out = _blend(torch.zeros_like(x), x, factor)
        elif name == "SharpnessIncreasing":  # PIL's SMOOTH filter; the one-pixel border stays unfiltered
            kernel = _SMOOTH.to(x.device).expand(x.shape[1], 1, 3, 3)
            smooth = x.clone()
            smooth[:, :, 1:-1, 1:-1] = torch.round(F.conv2d(x, kernel, groups=x.shape[1]))
            out = _blend(smooth, x, factor)
        else:
            raise ValueError(name)
    return out.round().clamp(0, 255)
