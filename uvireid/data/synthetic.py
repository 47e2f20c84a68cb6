"""An embedded synthetic visible-infrared person re-ID dataset in the SYSU-MM01 raw layout.

``generate(out)`` draws ``ids`` people and writes their images the way the SYSU-MM01
release stores them (``shared/notes/eval_datasets.md`` Sec. 1.1)::

    out/cam1..cam6/<pid %04d>/<idx %04d>.jpg      (1-based indices)
    out/exp/train_id.txt val_id.txt test_id.txt available_id.txt  (one line, "1,5,9")
    out/exp/rand_perm_cam.mat                     (the official sampler's permutations)
    out/manifest.json, out/DONE                   (written last: a complete folder)

Cameras as in SYSU-MM01: 1 and 2 visible indoor, 4 and 5 visible outdoor, 3 infrared
indoor (the room of camera 2), 6 infrared outdoor. Not every person is in every camera.

The data pose a real cross-modality problem. Each identity has modality-shared cues
(body proportions, hair style, garment types and lengths, the geometry of clothing
prints and logos, accessories, gait) and modality-specific ones: clothing, hair and
skin colours are drawn only in visible images; infrared images show emitted heat, set by
each garment's emissivity (its type's level -- thin clothes are warmer -- plus a
per-person deviation), the polarity of its print, skin and hair. The infrared renderer
never reads a colour, so a colour matcher fails across modalities while shape and print
cues carry over (``benchmarks/synthetic_bounds.py`` measures both). That is a thermal
camera's look (RegDB's). SYSU-MM01's infrared cameras are near-infrared: a garment's
brightness there follows its reflectance, which goes partly with its visible brightness
(many dyes are transparent in near-infrared, so only partly). ``nir`` (0 to 1, default 0)
renders that: each material's infrared intensity is ``nir`` times its visible luminance
plus ``1 - nir`` times its thermal level, prints included; 0 is the thermal look above. Scale, translation
and gait jitter, front and back views, camera-specific illumination and backgrounds,
clutter, blur, noise and occasional occlusion make every image different. Side views
are implemented but off by default (``_VIEW_P``): they made the supervised cross-modal
bound drop by about 15 mAP points.

The ranges that set how hard the data are sit in module constants (``_VIEW_P``,
``_IR_*``, ...); changing them changes the images a seed gives, so bump
:data:`GENERATOR_VERSION` with them (cached folders are keyed by it).

Everything is drawn from ``numpy.random.default_rng`` seeded by ``(seed, pid, ...)``:
a seed gives the same bytes on the same Pillow/libjpeg build, and the people of a small
dataset are the first people of a large one with the same seed.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import shlex
import shutil
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from uvireid.data.base import as_root
from uvireid.data.sysu import SYSUMM01
from uvireid.errors import DatasetError, check_seed
from uvireid.registry import DATASETS
from uvireid.types import INFRARED, VISIBLE

logger = logging.getLogger(__name__)

#: bump when the images a seed produces change; caches with another version are rebuilt
GENERATOR_VERSION = 3  # 3: SYSU-MM01's validation share (99/491 of the ids)
#: number of identities when ``ids`` is None: 400 train (incl. val) + 100 test, like SYSU-MM01's 395 + 96
DEFAULT_IDS = 500
JPEG_QUALITY = 90
VISIBLE_CAMS = (1, 2, 4, 5)
INFRARED_CAMS = (3, 6)
CAM_MODALITY = {1: VISIBLE, 2: VISIBLE, 3: INFRARED, 4: VISIBLE, 5: VISIBLE, 6: INFRARED}
#: images per (identity, camera), drawn uniformly in [lo, hi]
IMAGES_PER_CAM = (4, 8)
MARKER = ".uvireid-synthetic"
DONE = "DONE"
MANIFEST = "manifest.json"
#: the official SYSU-MM01 sampler's permutations, in ``exp/`` (:func:`write_rand_perm`)
RAND_PERM = "rand_perm_cam.mat"
#: trials (rows) of each permutation, as in the dataset authors' file
RAND_PERM_TRIALS = 10

# views of a person: seen from the front, the back, or the side (walking left or right)
FRONT, BACK, SIDE = 0, 1, 2
# per camera: probabilities of front / back / side views (cameras see people walk
# mostly in one direction, so views differ between cameras as in real data)
_VIEW_P = {
    1: (0.65, 0.35, 0.0),
    2: (0.40, 0.60, 0.0),
    3: (0.55, 0.45, 0.0),
    4: (0.55, 0.45, 0.0),
    5: (0.35, 0.65, 0.0),
    6: (0.50, 0.50, 0.0),
}

UPPER_PATTERNS = ("plain", "hstripes", "vstripes", "diagonal", "checks", "dots", "logo", "block")
_UPPER_PATTERN_P = (0.02, 0.15, 0.14, 0.14, 0.15, 0.12, 0.15, 0.13)
LOWER_PATTERNS = ("plain", "vstripes", "checks", "sidestripe")
_LOWER_PATTERN_P = (0.15, 0.3, 0.3, 0.25)
#: ranges (lo, hi) of the drawing parameters that set how hard the dataset is
_UPPER_PERIOD = (0.06, 0.16)  # print period, body-height units
_LOWER_PERIOD = (0.05, 0.12)
#: infrared level of each garment type: thin clothes let more body heat through; an
#: identity's garment deviates from its type's level by N(0, _IR_TYPE_SPREAD)
_IR_UPPER_LEVEL = {"none": 0.8, "short": 0.72, "long": 0.63, "coat": 0.52}
_IR_LOWER_LEVEL = {"shorts": 0.76, "skirt": 0.7, "long_skirt": 0.62, "trousers": 0.57}
_IR_TYPE_SPREAD = 0.05
_IR_PATTERN_DELTA = (0.3, 0.42)  # |emissivity of the print - that of the garment|
_IR_BLUR = (0.3, 0.8)  # Gaussian sigma, pixels
_IR_NOISE = (0.01, 0.03)
_IR_CLUTTER = (0.05, 0.35)  # emissivity of background clutter
_CLUTTER_MAX = 1  # clutter objects per image: 0..max
_OCCLUSION_P = 0.05
_LOGO_VIEWS = (0, 1)  # views that show the logo (printed on the front and the back)
LOGO_SHAPES = ("circle", "square", "triangle", "ring", "cross", "bar")
SLEEVES = ("none", "short", "long")
LOWERS = ("shorts", "trousers", "skirt", "long_skirt")
HAIR = ("cropped", "short", "long", "bun")


# --------------------------------------------------------------------------------------
# identities
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """Modality-shared appearance of one person (units: fractions of body height)."""

    height: float  # fraction of the crop height the person fills, before per-image jitter
    build: float  # width multiplier of shoulders, hips and limbs
    hip_ratio: float  # hip width relative to shoulder width
    leg_len: float  # hip height offset (longer legs = hips higher)
    head: float  # head size multiplier
    hair: int  # index in HAIR
    hair_len: float  # for long hair: how far below the shoulders it reaches
    sleeves: int  # index in SLEEVES
    coat: bool  # upper garment reaches the thighs
    lower: int  # index in LOWERS
    upper_pattern: int  # index in UPPER_PATTERNS
    upper_period: float  # pattern period
    upper_angle: float  # stripe orientation for "diagonal" (radians)
    upper_duty: float  # fraction of a period covered by the pattern
    upper_phase: float
    logo_shape: int  # index in LOGO_SHAPES
    logo_size: float
    logo_pos: tuple[float, float]  # chest position of the logo (x, y)
    block_split: float  # "block": height where the second colour starts
    lower_pattern: int  # index in LOWER_PATTERNS
    lower_period: float
    backpack: bool
    backpack_size: float
    handbag: int  # 0 none, 1 on the person's right, 2 on the left
    handbag_size: float
    hat: int  # 0 none, 1 cap, 2 beanie
    stride: float  # gait amplitude
    arm_swing: float


@dataclass(frozen=True)
class Colors:
    """Visible-only appearance: RGB albedos in [0, 1]."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    upper: tuple[float, float, float]
    upper2: tuple[float, float, float]  # pattern / logo / block colour
    lower: tuple[float, float, float]
    lower2: tuple[float, float, float]
    shoes: tuple[float, float, float]
    bag: tuple[float, float, float]
    hat: tuple[float, float, float]


@dataclass(frozen=True)
class Thermal:
    """Infrared-only appearance: emitted intensity of each material in [0, 1].

    Drawn independently of :class:`Colors`, so no colour can be read from an infrared image.
    """

    skin: float
    hair: float
    upper: float
    upper_delta: float  # pattern ink emissivity minus the garment's (sign varies)
    lower: float
    lower_delta: float
    shoes: float
    bag: float
    hat: float


@dataclass(frozen=True)
class Identity:
    """One synthetic person: ``shape`` is seen by both modalities, ``colors`` only by
    visible cameras and ``thermal`` only by infrared ones."""

    pid: int
    shape: Shape
    colors: Colors
    thermal: Thermal


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return (float(r), float(g), float(b))


def _garment_color(rng: np.random.Generator) -> tuple[float, float, float]:
    if rng.random() < 0.3:  # black, white and greys are common in clothing
        v = float(rng.choice([0.08, 0.15, 0.35, 0.55, 0.8, 0.92]) + rng.uniform(-0.04, 0.04))
        return (v, v, v)
    return _hsv(rng.random(), rng.uniform(0.35, 0.95), rng.uniform(0.25, 0.95))


def _contrasting(rng: np.random.Generator, c: tuple[float, float, float]):
    for _ in range(20):
        c2 = _garment_color(rng)
        if sum(abs(a - b) for a, b in zip(c, c2, strict=True)) > 0.6:
            return c2
    return tuple(1.0 - x for x in c)


def make_identity(pid: int, seed: int = 0) -> Identity:
    """Draw person ``pid`` of dataset ``seed`` (independent of how many people it has)."""
    rng = np.random.default_rng([seed, pid, 11])
    u = rng.uniform
    upper_pattern = int(rng.choice(len(UPPER_PATTERNS), p=_UPPER_PATTERN_P))
    lower = int(rng.choice(4, p=(0.2, 0.5, 0.2, 0.1)))
    shape = Shape(
        height=u(0.84, 1.0),
        build=u(0.78, 1.3),
        hip_ratio=u(0.7, 1.1),
        leg_len=u(-0.035, 0.035),
        head=u(0.88, 1.15),
        hair=int(rng.choice(4, p=(0.2, 0.35, 0.3, 0.15))),
        hair_len=u(0.0, 0.16),
        sleeves=int(rng.choice(3, p=(0.2, 0.4, 0.4))),
        coat=bool(rng.random() < 0.2),
        lower=lower,
        upper_pattern=upper_pattern,
        upper_period=u(*_UPPER_PERIOD),
        upper_angle=float(rng.choice([-1, 1]) * u(0.5, 1.0)),
        upper_duty=u(0.3, 0.6),
        upper_phase=u(0, 2 * math.pi),
        logo_shape=int(rng.integers(len(LOGO_SHAPES))),
        logo_size=u(0.035, 0.07),
        logo_pos=(float(rng.choice([-0.04, 0.0, 0.04])), u(0.25, 0.33)),
        block_split=u(0.26, 0.4),
        lower_pattern=int(rng.choice(len(LOWER_PATTERNS), p=_LOWER_PATTERN_P)),
        lower_period=u(*_LOWER_PERIOD),
        backpack=bool(rng.random() < 0.35),
        backpack_size=u(0.85, 1.2),
        handbag=int(rng.choice(3, p=(0.7, 0.15, 0.15))),
        handbag_size=u(0.8, 1.25),
        hat=int(rng.choice(3, p=(0.8, 0.12, 0.08))),
        stride=u(0.25, 0.5),
        arm_swing=u(0.15, 0.45),
    )
    # colours and emissivities come from their own streams: changing how colours are
    # drawn can never change an infrared image
    rc = np.random.default_rng([seed, pid, 12])
    skin = _hsv(rc.uniform(0.03, 0.1), rc.uniform(0.25, 0.6), rc.uniform(0.3, 0.95))
    hair_v = rc.uniform(0.05, 0.6)
    hair = _hsv(rc.uniform(0.05, 0.12), rc.uniform(0.2, 0.7), hair_v)
    if rc.random() < 0.1:
        hair = _hsv(rc.random(), 0.7, 0.6)  # dyed
    upper = _garment_color(rc)
    lower_c = _garment_color(rc)
    for _ in range(20):  # the two garments are told apart in visible light
        if sum(abs(a - b) for a, b in zip(upper, lower_c, strict=True)) > 0.45:
            break
        lower_c = _garment_color(rc)
    colors = Colors(
        skin=skin,
        hair=hair,
        upper=upper,
        upper2=_contrasting(rc, upper),
        lower=lower_c,
        lower2=_contrasting(rc, lower_c),
        shoes=_garment_color(rc),
        bag=_garment_color(rc),
        hat=_garment_color(rc),
    )
    rt = np.random.default_rng([seed, pid, 13])
    up_kind = "coat" if shape.coat else SLEEVES[shape.sleeves]
    t_upper = float(np.clip(_IR_UPPER_LEVEL[up_kind] + rt.normal(0, _IR_TYPE_SPREAD), 0.3, 0.9))
    t_lower = LOWERS[shape.lower]
    t_lower = float(np.clip(_IR_LOWER_LEVEL[t_lower] + rt.normal(0, _IR_TYPE_SPREAD), 0.3, 0.9))

    def delta(base: float) -> float:
        d = rt.uniform(*_IR_PATTERN_DELTA) * rt.choice([-1.0, 1.0])
        return float(np.clip(base + d, 0.05, 0.98) - base)

    thermal = Thermal(
        skin=rt.uniform(0.86, 0.97),
        hair=rt.uniform(0.24, 0.38),
        upper=t_upper,
        upper_delta=delta(t_upper),
        lower=t_lower,
        lower_delta=delta(t_lower),
        shoes=rt.uniform(0.22, 0.38),
        bag=rt.uniform(0.25, 0.45),
        hat=rt.uniform(0.35, 0.5),
    )
    return Identity(pid=pid, shape=shape, colors=colors, thermal=thermal)


# --------------------------------------------------------------------------------------
# per-image conditions
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conditions:
    """Everything about one shot that is not the person: pose, framing, camera effects."""

    cam: int
    view: int  # FRONT, BACK or SIDE
    facing: int  # +1 or -1: side views walk right or left; mirrors front/back layouts too
    phase: float  # gait phase
    scale: float
    dx: float  # pixels
    dy: float
    scene_x: float  # horizontal offset of the camera's background, fraction of its width
    clutter_seed: int
    brightness: float
    cast: tuple[float, float, float]
    ir_gain: float
    ir_offset: float
    blur: float  # Gaussian sigma, pixels
    noise: float  # Gaussian noise sigma, [0, 1] units
    occlusion: int  # 0 none, 1 from the bottom, 2 from the left, 3 from the right
    occ_extent: float
    occ_seed: int


def draw_conditions(seed: int, pid: int, cam: int, idx: int) -> Conditions:
    """Conditions of image ``idx`` (1-based) of person ``pid`` in camera ``cam``."""
    rng = np.random.default_rng([seed, pid, cam, idx, 21])
    ir = CAM_MODALITY[cam] == INFRARED
    po = _OCCLUSION_P
    occ = int(rng.choice(4, p=(1 - po, po / 2, po / 4, po / 4)))
    return Conditions(
        cam=cam,
        view=int(rng.choice(3, p=_VIEW_P[cam])),
        facing=int(rng.choice([-1, 1])),
        phase=float(rng.uniform(0, 2 * math.pi)),
        scale=float(rng.uniform(0.92, 1.05)),
        dx=float(rng.uniform(-4, 4)),
        dy=float(rng.uniform(-3, 3)),
        scene_x=float(rng.random()),
        clutter_seed=int(rng.integers(2**31)),
        brightness=float(rng.uniform(0.7, 1.25)),
        cast=tuple(float(x) for x in rng.normal(1.0, 0.05, 3)),
        ir_gain=float(rng.uniform(0.85, 1.15)),
        ir_offset=float(rng.uniform(-0.05, 0.05)),
        blur=float(rng.uniform(*_IR_BLUR) if ir else rng.uniform(0.0, 0.7)),
        noise=float(rng.uniform(*_IR_NOISE) if ir else rng.uniform(0.005, 0.025)),
        occlusion=occ,
        occ_extent=float(rng.uniform(0.18, 0.38)),
        occ_seed=int(rng.integers(2**31)),
    )


# --------------------------------------------------------------------------------------
# drawing primitives: soft (anti-aliased) coverage maps on the pixel grid
# --------------------------------------------------------------------------------------
class _Win:
    """Coverage of a shape inside its bounding window ``img[sy, sx]``.

    ``a``: (h, w) coverage in [0, 1]; ``q``: (h, w) normalised distance from the shape's
    axis (0 on the axis, 1 on the outline), used for shading.
    """

    __slots__ = ("sy", "sx", "a", "q")

    def __init__(self, sy: slice, sx: slice, a: np.ndarray, q: np.ndarray):
        self.sy, self.sx, self.a, self.q = sy, sx, a, q


class _Canvas:
    """Drawing of soft (anti-aliased) shapes on an H x W pixel grid, each in its window."""

    def __init__(self, height: int, width: int):
        self.h, self.w = height, width
        self.ys = np.arange(height, dtype=np.float32) + 0.5
        self.xs = np.arange(width, dtype=np.float32) + 0.5

    def window(self, x0: float, y0: float, x1: float, y1: float):
        """Pixel-centre grids of the window covering [x0, x1] x [y0, y1] (None if empty)."""
        i0, i1 = max(int(math.floor(y0)) - 1, 0), min(int(math.ceil(y1)) + 1, self.h)
        j0, j1 = max(int(math.floor(x0)) - 1, 0), min(int(math.ceil(x1)) + 1, self.w)
        if i1 <= i0 or j1 <= j0:
            return None
        return slice(i0, i1), slice(j0, j1), self.ys[i0:i1, None], self.xs[None, j0:j1]

    def capsule(self, p0, p1, r0: float, r1: float | None = None) -> _Win | None:
        """A (tapered) capsule from p0 to p1 with radii r0 and r1 (pixels)."""
        r1 = r0 if r1 is None else r1
        rm = max(r0, r1)
        x0, y0 = p0
        win = self.window(
            min(x0, p1[0]) - rm, min(y0, p1[1]) - rm, max(x0, p1[0]) + rm, max(y0, p1[1]) + rm
        )
        if win is None:
            return None
        sy, sx, y, x = win
        ddx, ddy = p1[0] - x0, p1[1] - y0
        ll = ddx * ddx + ddy * ddy + 1e-6
        t = np.clip(((x - x0) * ddx + (y - y0) * ddy) / ll, 0.0, 1.0)
        ex = x - (x0 + t * ddx)
        ey = y - (y0 + t * ddy)
        dist = np.sqrt(ex * ex + ey * ey)
        r = r0 + (r1 - r0) * t
        return _Win(sy, sx, np.clip(r - dist + 0.5, 0.0, 1.0), dist / r)

    def ellipse(self, c, rx: float, ry: float) -> _Win | None:
        win = self.window(c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry)
        if win is None:
            return None
        sy, sx, y, x = win
        qx = (x - c[0]) / rx
        qy = (y - c[1]) / ry
        q = np.sqrt(qx * qx + qy * qy)
        return _Win(sy, sx, np.clip((1.0 - q) * min(rx, ry) + 0.5, 0.0, 1.0), q)

    def trapezoid(self, y0: float, y1: float, cx0: float, hw0: float, cx1: float, hw1: float):
        """Rows y0..y1 whose centre and half-width vary linearly from (cx0, hw0) to (cx1, hw1)."""
        xa = min(cx0 - hw0, cx1 - hw1)
        xb = max(cx0 + hw0, cx1 + hw1)
        win = self.window(xa, y0, xb, y1)
        if win is None:
            return None
        sy, sx, y, x = win
        t = np.clip((y - y0) / max(y1 - y0, 1e-3), 0.0, 1.0)
        hw = hw0 + (hw1 - hw0) * t
        cx = cx0 + (cx1 - cx0) * t
        ax = np.clip(hw - np.abs(x - cx) + 0.5, 0.0, 1.0)
        ay = np.clip(np.minimum(y - y0, y1 - y) + 0.5, 0.0, 1.0)
        return _Win(sy, sx, ax * ay, np.abs(x - cx) / np.maximum(hw, 0.5))

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> _Win | None:
        win = self.window(x0, y0, x1, y1)
        if win is None:
            return None
        sy, sx, y, x = win
        ax = np.clip(np.minimum(x - x0, x1 - x) + 0.5, 0.0, 1.0)
        ay = np.clip(np.minimum(y - y0, y1 - y) + 0.5, 0.0, 1.0)
        cx, hw = (x0 + x1) / 2, max((x1 - x0) / 2, 0.5)
        return _Win(sy, sx, ax * ay, np.broadcast_to(np.abs(x - cx) / hw, ax.shape))


# a layer of the person: (shape window, material name), drawn back to front
_Layer = tuple[_Win, str]


def _stripes(s: np.ndarray, period: float, duty: float, phase: float, px: float) -> np.ndarray:
    """Soft square wave of coordinate ``s`` (person units); ``px`` = one pixel in those units."""
    f = np.mod(s / period + phase / (2 * math.pi), 1.0)
    edge = px / period
    a = np.clip((duty - f) / edge + 0.5, 0.0, 1.0) * np.clip(f / edge + 0.5, 0.0, 1.0)
    return a.astype(np.float32)


def _logo(u: np.ndarray, v: np.ndarray, kind: str, cx: float, cy: float, r: float, px: float):
    du, dv = u - cx, v - cy
    if kind == "circle":
        d = np.sqrt(du * du + dv * dv) - r
    elif kind == "square":
        d = np.maximum(np.abs(du), np.abs(dv)) - r * 0.85
    elif kind == "triangle":
        d = np.maximum(dv - r * 0.7, np.abs(du) * 1.7 - (r * 0.9 - dv) * 0.95)
    elif kind == "ring":
        d = np.abs(np.sqrt(du * du + dv * dv) - r * 0.75) - r * 0.25
    elif kind == "cross":
        d = np.minimum(
            np.maximum(np.abs(du) - r, np.abs(dv) - r * 0.3),
            np.maximum(np.abs(du) - r * 0.3, np.abs(dv) - r),
        )
    else:  # bar: a horizontal band across the chest
        d = np.maximum(np.abs(dv) - r * 0.4, np.abs(du) - r * 2.2)
    return np.clip(-d / px + 0.5, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------
# the person
# --------------------------------------------------------------------------------------
def _lerp(p, q, t: float) -> tuple[float, float]:
    return (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]))


def _person_layers(cv: _Canvas, ident: Identity, cond: Conditions):
    """Geometry of one shot, shared by both modalities.

    Returns:
        layers: list of (:class:`_Win`, material), back to front; materials are
            skin, hair, upper, lower, shoes, bag, hat.
        masks: {"upper": (H, W), "lower": (H, W)} float32 pattern coverage of each garment.
    """
    sh = ident.shape
    hp = cv.h * 0.92 * sh.height * cond.scale  # body height in pixels
    top = (cv.h - hp) / 2 + cond.dy
    cx = cv.w / 2 + cond.dx
    view, f = cond.view, cond.facing
    side = view == SIDE
    # where the person's right hand side appears: -1 image left (front view), +1 right
    right = -f if view == FRONT else f

    def P(x: float, y: float) -> tuple[float, float]:  # body units -> pixels
        return (cx + x * hp, top + y * hp)

    def L(x: float) -> float:
        return x * hp

    b = sh.build
    y_sh, y_waist = 0.185, 0.40
    y_hip = 0.50 - sh.leg_len
    y_knee = y_hip + (0.95 - y_hip) * 0.5
    y_ankle = 0.955
    sh_hw = (0.06 if side else 0.105) * b
    waist_hw = (0.055 if side else 0.075) * b * (0.6 + 0.4 * sh.hip_ratio)
    hip_hw = (0.06 if side else 0.085) * b * sh.hip_ratio
    limb_r, leg_r = 0.024 * b, 0.034 * b
    ph = cond.phase
    layers: list[_Layer] = []

    def add(win: _Win | None, mat: str) -> None:
        if win is not None:
            layers.append((win, mat))

    # legs, the one further from the camera first ---------------------------------------
    legs = []
    for k, sgn in enumerate((1.0, -1.0)):
        swing = math.sin(ph + k * math.pi)
        if side:
            th = sh.stride * swing * 0.8
            knee = (math.sin(th) * (y_knee - y_hip), y_hip + math.cos(th) * (y_knee - y_hip))
            th2 = th - max(0.0, -math.cos(ph + k * math.pi)) * 0.6
            ank = (
                knee[0] + math.sin(th2) * (y_ankle - y_knee),
                knee[1] + math.cos(th2) * (y_ankle - y_knee),
            )
            hip, knee, ank = (0.0, y_hip), (knee[0] * f, knee[1]), (ank[0] * f, ank[1])
        else:
            hipx = sgn * hip_hw * 0.55
            lift = max(0.0, swing) * sh.stride * 0.06
            hip, knee, ank = (
                (hipx, y_hip),
                (hipx * 1.05, y_knee - lift * 0.5),
                (hipx * 1.1, y_ankle - lift),
            )
        legs.append((swing if side else 0.0, hip, knee, ank))
    legs.sort(key=lambda t: t[0])
    lower_kind = LOWERS[sh.lower]
    for _, hip, knee, ank in legs:
        foot = P(ank[0] + (0.035 * f if side else 0.0), ank[1] + 0.02)
        add(cv.ellipse(foot, L(0.045 if side else 0.03), L(0.022)), "shoes")
        add(cv.capsule(P(*hip), P(*knee), L(leg_r), L(leg_r * 0.8)), "skin")
        add(cv.capsule(P(*knee), P(*ank), L(leg_r * 0.8), L(leg_r * 0.55)), "skin")
        if lower_kind == "trousers":
            add(cv.capsule(P(*hip), P(*knee), L(leg_r * 1.2), L(leg_r * 1.0)), "lower")
            add(cv.capsule(P(*knee), P(*ank), L(leg_r * 1.0), L(leg_r * 0.85)), "lower")
        elif lower_kind == "shorts":
            mid = _lerp(hip, knee, 0.55)
            add(cv.capsule(P(*hip), P(*mid), L(leg_r * 1.3), L(leg_r * 1.25)), "lower")
    ya, yb = P(0, y_waist - 0.02)[1], P(0, y_hip + 0.03)[1]
    add(cv.trapezoid(ya, yb, cx, L(waist_hw), cx, L(hip_hw * 1.05)), "lower")
    if lower_kind in ("skirt", "long_skirt"):
        y_end = y_knee + 0.02 if lower_kind == "skirt" else y_ankle - 0.07
        flare = 1.5 if lower_kind == "skirt" else 1.35
        ya, yb = P(0, y_hip - 0.04)[1], P(0, y_end)[1]
        add(cv.trapezoid(ya, yb, cx, L(hip_hw * 1.05), cx, L(hip_hw * flare)), "lower")

    # arms ------------------------------------------------------------------------------
    arms = []
    for k, sgn in enumerate((1.0, -1.0)):
        swing = math.sin(ph + k * math.pi + math.pi)  # opposite to the leg on that side
        if side:
            a1 = sh.arm_swing * swing
            a2 = a1 + 0.15 + 0.25 * max(0.0, swing)
            s0 = (0.0, y_sh + 0.01)
            e0 = (s0[0] + f * math.sin(a1) * 0.165, s0[1] + math.cos(a1) * 0.165)
            w0 = (e0[0] + f * math.sin(a2) * 0.15, e0[1] + math.cos(a2) * 0.15)
        else:
            a1 = sgn * (0.12 + 0.03 * swing)
            a2 = a1 + sgn * 0.04
            s0 = (sgn * sh_hw * 0.92, y_sh + 0.01)
            e0 = (s0[0] + math.sin(a1) * 0.165, s0[1] + math.cos(a1) * 0.165)
            w0 = (e0[0] + math.sin(a2) * 0.15, e0[1] + math.cos(a2) * 0.15)
        arms.append((swing, s0, e0, w0))
    arms.sort(key=lambda t: t[0])
    sleeve = SLEEVES[sh.sleeves]

    def add_arm(s0, e0, w0) -> None:
        add(cv.capsule(P(*s0), P(*e0), L(limb_r * 1.05), L(limb_r * 0.9)), "skin")
        add(cv.capsule(P(*e0), P(*w0), L(limb_r * 0.9), L(limb_r * 0.7)), "skin")
        add(cv.ellipse(P(*w0), L(0.02), L(0.024)), "skin")
        if sleeve == "short":
            end = _lerp(s0, e0, 0.6)
            add(cv.capsule(P(*s0), P(*end), L(limb_r * 1.45), L(limb_r * 1.3)), "upper")
        elif sleeve == "long":
            add(cv.capsule(P(*s0), P(*e0), L(limb_r * 1.3), L(limb_r * 1.15)), "upper")
            end = _lerp(e0, w0, 0.9)
            add(cv.capsule(P(*e0), P(*end), L(limb_r * 1.15), L(limb_r * 1.0)), "upper")
        else:  # sleeveless: fabric over the shoulder only
            add(cv.ellipse(P(s0[0], s0[1] + 0.01), L(limb_r * 1.1), L(0.018)), "upper")

    # handbag: hangs at the hip on the person's right or left
    def add_handbag(x_side: float) -> None:
        s = sh.handbag_size
        x = x_side * (sh_hw + 0.03)
        y0 = y_hip - 0.01
        add(cv.capsule(P(x_side * sh_hw * 0.6, y_sh), P(x, y0), L(0.007)), "bag")
        add(cv.rect(*P(x - 0.045 * s, y0), *P(x + 0.045 * s, y0 + 0.08 * s)), "bag")

    bag_far = False
    if sh.handbag:
        bag_right = sh.handbag == 1
        if side:  # walking to the image's right shows the left side: a right bag is far
            bag_far = bag_right != (f < 0)
            if bag_far:
                add_handbag(0.0)
    if side:
        add_arm(*arms[0][1:])

    # torso -----------------------------------------------------------------------------
    y_end = (y_hip + 0.13) if sh.coat else (y_hip - 0.03)
    flare = 1.25 if sh.coat else 1.05
    lean = L(0.015 * f) if side else 0.0
    ya, yb, yc = P(0, y_sh - 0.012)[1], P(0, y_waist)[1], P(0, y_end)[1]
    add(cv.trapezoid(ya, yb, cx + lean, L(sh_hw), cx, L(waist_hw)), "upper")
    add(cv.trapezoid(yb - L(0.005), yc, cx, L(waist_hw), cx, L(hip_hw * flare)), "upper")
    head_rx, head_ry = 0.048 * sh.head, 0.062 * sh.head
    head_c = (0.012 * f if side else 0.0, 0.005 + head_ry)
    add(cv.capsule(P(head_c[0] * 0.5, head_c[1] + head_ry * 0.6), P(0, y_sh), L(0.022 * b)), "skin")
    if side:
        add_arm(*arms[1][1:])
    else:
        for _, s0, e0, w0 in arms:
            add_arm(s0, e0, w0)

    # backpack: a pack on the back, straps from the front, a profile from the side
    if sh.backpack:
        s = sh.backpack_size
        if view == BACK:
            add(cv.rect(*P(-0.075 * s * b, y_sh + 0.02), *P(0.075 * s * b, y_sh + 0.2 * s)), "bag")
        elif view == FRONT:
            for sgn in (1.0, -1.0):
                p0, p1 = P(sgn * sh_hw * 0.55, y_sh - 0.005), P(sgn * sh_hw * 0.6, y_waist - 0.03)
                add(cv.capsule(p0, p1, L(0.012)), "bag")
        else:
            xb = -f * (sh_hw + 0.035 * s)
            add(cv.rect(*P(xb - 0.04 * s, y_sh + 0.02), *P(xb + 0.04 * s, y_sh + 0.19 * s)), "bag")
            add(cv.capsule(P(-f * 0.02, y_sh), P(-f * 0.02, y_waist - 0.04), L(0.01)), "bag")
    if sh.handbag and not side:
        add_handbag(right if sh.handbag == 1 else -right)
    elif sh.handbag and not bag_far:
        add_handbag(0.0)

    # head, hair, hat ---------------------------------------------------------------------
    hair = HAIR[sh.hair]
    hc = P(*head_c)
    rx, ry = L(head_rx), L(head_ry)
    hair_end = y_sh + 0.04 + sh.hair_len
    if hair == "long" and view != BACK:  # hair falling behind the shoulders
        x0, x1 = head_c[0] - head_rx * 1.15, head_c[0] + head_rx * 1.15
        if side:
            x0, x1 = sorted((head_c[0] - f * head_rx * 1.1, head_c[0] - f * head_rx * 0.1))
        win = cv.rect(*P(x0, head_c[1]), *P(x1, hair_end))
        if win is not None:
            layers.insert(0 if not side else len(layers), (win, "hair"))
    add(cv.ellipse(hc, rx, ry), "skin")
    if view == BACK:
        add(cv.ellipse((hc[0], hc[1] - L(0.004)), rx * 1.06, ry * 1.02), "hair")
        if hair == "long":
            x0, x1 = head_c[0] - head_rx * 1.1, head_c[0] + head_rx * 1.1
            add(cv.rect(*P(x0, head_c[1]), *P(x1, hair_end)), "hair")
    else:
        # a cap of hair over the top of the head, deeper for longer styles; from the
        # side it also covers the back of the head
        depth = {"cropped": 0.35, "short": 0.55, "long": 0.6, "bun": 0.5}[hair]
        win = cv.ellipse(
            (hc[0] - (L(0.01) * f if side else 0.0), hc[1] - ry * 0.15), rx * 1.08, ry * 0.95
        )
        if win is not None:
            y = cv.ys[win.sy, None]
            x = cv.xs[None, win.sx]
            cut = np.clip(hc[1] - ry * (1 - 2 * depth) - y + 0.5, 0.0, 1.0)
            if side:
                back = np.clip(-(x - hc[0]) * f + 0.5, 0.0, 1.0) * (y < hc[1] + ry * 0.6)
                cut = np.maximum(cut, back)
            add(_Win(win.sy, win.sx, win.a * cut, win.q), "hair")
    if hair == "bun":
        bx = head_c[0] - (f * head_rx * 0.9 if side else 0.0)
        add(cv.ellipse(P(bx, head_c[1] - head_ry * 0.95), L(0.03), L(0.026)), "hair")
    if sh.hat == 1:  # cap with a brim (pointing forwards in a side view)
        ya, yb = hc[1] - ry * 1.1, hc[1] - ry * 0.35
        add(cv.trapezoid(ya, yb, hc[0], rx * 0.8, hc[0], rx * 1.1), "hat")
        bx = hc[0] + (f * rx * 0.8 if side else 0.0)
        half = rx * (0.9 if side else 1.3)
        add(cv.rect(bx - half, hc[1] - ry * 0.45, bx + half, hc[1] - ry * 0.3), "hat")
    elif sh.hat == 2:  # beanie
        add(cv.ellipse((hc[0], hc[1] - ry * 0.35), rx * 1.12, ry * 0.85), "hat")

    # pattern coordinates in body units: prints move and scale with the person
    u = (cv.xs[None, :] - cx) / hp * (-1.0 if view == BACK else 1.0)
    v = (cv.ys[:, None] - top) / hp
    if side:
        u = u * 1.6  # the garment is seen foreshortened
    u, v = np.broadcast_arrays(u, v)
    px = 1.0 / hp
    masks = {
        "upper": _upper_pattern(sh, u, v, px, view),
        "lower": _lower_pattern(sh, u, v, px, view),
    }
    return layers, masks


def _upper_pattern(sh: Shape, u: np.ndarray, v: np.ndarray, px: float, view: int) -> np.ndarray:
    """(H, W) coverage of the upper garment's print; ``u, v`` body coordinates."""
    kind = UPPER_PATTERNS[sh.upper_pattern]
    p, d, ph = sh.upper_period, sh.upper_duty, sh.upper_phase
    if kind == "hstripes":
        return _stripes(v, p, d, ph, px)
    if kind == "vstripes":
        return _stripes(u, p, d, ph, px)
    if kind == "diagonal":
        a = sh.upper_angle
        return _stripes(u * math.sin(a) + v * math.cos(a), p, d, ph, px)
    if kind == "checks":
        a = _stripes(u, p * 1.4, 0.5, ph, px)
        b = _stripes(v, p * 1.4, 0.5, ph, px)
        return a + b - 2 * a * b
    if kind == "dots":
        q = p * 1.3
        fu = np.mod(u / q + ph, 1.0) - 0.5
        fv = np.mod(v / q + 0.5 * ph, 1.0) - 0.5
        r = np.sqrt(fu * fu + fv * fv) * q
        return np.clip((0.3 * q - r) / px + 0.5, 0.0, 1.0).astype(np.float32)
    if kind == "logo" and view in _LOGO_VIEWS:
        x, y = sh.logo_pos
        return _logo(u, v, LOGO_SHAPES[sh.logo_shape], x, y, sh.logo_size, px)
    if kind == "block":
        return np.clip((v - sh.block_split) / px + 0.5, 0.0, 1.0).astype(np.float32)
    return np.zeros(u.shape, np.float32)


def _lower_pattern(sh: Shape, u: np.ndarray, v: np.ndarray, px: float, view: int) -> np.ndarray:
    """(H, W) coverage of the lower garment's print."""
    kind = LOWER_PATTERNS[sh.lower_pattern]
    p = sh.lower_period
    if kind == "vstripes":
        return _stripes(u, p, 0.35, 0.0, px)
    if kind == "checks":
        a = _stripes(u, p * 1.5, 0.5, 0.0, px)
        b = _stripes(v, p * 1.5, 0.5, 0.0, px)
        return a + b - 2 * a * b
    if kind == "sidestripe":  # a band down the outside of each leg
        w = np.abs(u) - 0.012 if view == SIDE else np.abs(np.abs(u) - 0.07) - 0.01
        return np.clip(-w / px + 0.5, 0.0, 1.0).astype(np.float32)
    return np.zeros(u.shape, np.float32)


# --------------------------------------------------------------------------------------
# backgrounds: one static scene per camera (cam3 films the room of cam2)
# --------------------------------------------------------------------------------------
# horizon (fraction of the height), wall or sky rgb, floor rgb, outdoor
_SCENE_STYLE = {
    1: (0.62, (0.72, 0.68, 0.6), (0.45, 0.42, 0.4), False),
    2: (0.58, (0.8, 0.8, 0.78), (0.5, 0.4, 0.32), False),
    4: (0.5, (0.62, 0.66, 0.7), (0.52, 0.52, 0.5), True),
    5: (0.55, (0.36, 0.45, 0.3), (0.58, 0.54, 0.47), True),
}


def _paint(img: np.ndarray, win: _Win | None, value) -> None:
    """Composite ``value`` (scalar, (3,) or window-shaped) over ``img`` inside ``win``."""
    if win is None:
        return
    a = win.a if img.ndim == 2 else win.a[..., None]
    region = img[win.sy, win.sx]
    img[win.sy, win.sx] = region + (value - region) * a


def _scene_color(rng: np.random.Generator) -> np.ndarray:
    """Muted colours of walls, furniture, plants and signs."""
    c = np.array(_garment_color(rng), np.float32)
    grey = c.mean()
    return (grey + (c - grey) * rng.uniform(0.2, 0.7)) * 0.85


_SCENES: dict[tuple[int, int, int, int], tuple[np.ndarray, np.ndarray]] = {}


def _scene(seed: int, cam: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera ``cam``'s static scene, 3 crops wide: (H, 3W, 3) rgb and (H, 3W) infrared."""
    key = (seed, cam, height, width)
    if key in _SCENES:
        return _SCENES[key]
    layout = 2 if cam == 3 else cam  # cam3 is in the room of cam2
    horizon, wall, floor, outdoor = _SCENE_STYLE[4 if cam == 6 else layout]
    rng = np.random.default_rng([seed, layout, 31])
    sw = 3 * width
    cv = _Canvas(height, sw)
    yn = cv.ys[:, None, None] / height
    t = np.clip((yn - horizon) * 8 + 0.5, 0.0, 1.0)
    grad = 1.0 + 0.15 * (yn - 0.5)
    rgb = (np.array(wall, np.float32) * (1 - t) + np.array(floor, np.float32) * t) * grad
    rgb = np.ascontiguousarray(np.broadcast_to(rgb, (height, sw, 3)), dtype=np.float32)
    ir_wall, ir_floor = (0.12, 0.32) if outdoor else (0.18, 0.1)
    ir = np.ascontiguousarray(
        np.broadcast_to((ir_wall * (1 - t) + ir_floor * t) * grad, (height, sw, 1))[..., 0],
        dtype=np.float32,
    )
    for _ in range(int(rng.integers(6, 11))):  # furniture, doors, plants, posts
        w = rng.uniform(0.05, 0.35) * sw
        x0 = rng.uniform(-0.1, 1.0) * sw
        y1 = rng.uniform(horizon + 0.02, horizon + 0.25) * height
        y0 = y1 - rng.uniform(0.15, 0.7) * height
        win = cv.rect(x0, y0, x0 + w, y1)
        _paint(rgb, win, _scene_color(rng))
        hot = rng.random() < 0.1  # radiators, screens, engines
        _paint(ir, win, rng.uniform(0.5, 0.75) if hot else rng.uniform(0.05, 0.3))
    _SCENES[key] = (rgb, ir)
    return rgb, ir


def _background(seed: int, cond: Conditions, cv: _Canvas, infrared: bool) -> np.ndarray:
    """(H, W, 3) or (H, W) float32: a crop of the camera's scene plus some clutter."""
    rgb, ir = _scene(seed, cond.cam, cv.h, cv.w)
    full = ir if infrared else rgb
    x0 = int(cond.scene_x * (full.shape[1] - cv.w))
    bg = full[:, x0 : x0 + cv.w].copy()
    rng = np.random.default_rng(cond.clutter_seed)
    for _ in range(int(rng.integers(0, _CLUTTER_MAX + 1))):  # passers-by, bins, signs
        x = rng.uniform(-0.2, 1.0) * cv.w
        y = rng.uniform(0.0, 0.9) * cv.h
        win = cv.rect(x, y, x + rng.uniform(0.1, 0.5) * cv.w, y + rng.uniform(0.05, 0.4) * cv.h)
        col, irv = _scene_color(rng), rng.uniform(*_IR_CLUTTER)
        _paint(bg, win, irv if infrared else col)
    return bg


# --------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------
_CAM_LIGHT = {  # level, colour cast
    1: (0.85, (1.06, 0.96, 0.8)),
    2: (1.0, (0.93, 1.0, 1.0)),
    4: (1.12, (0.97, 1.0, 1.08)),
    5: (1.08, (0.95, 1.05, 0.9)),
}
_CAM_IR = {3: (1.0, -0.02), 6: (0.9, 0.06)}  # gain, offset
# a shot rendered in the other modality (tests, figures) uses the nearest camera's settings
_CAM_LIGHT.update({3: _CAM_LIGHT[2], 6: _CAM_LIGHT[4]})
_CAM_IR.update({1: _CAM_IR[3], 2: _CAM_IR[3], 4: _CAM_IR[6], 5: _CAM_IR[6]})


def _luminance(c) -> float:
    """Rec. 601 luma of an RGB colour in [0, 1]."""
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _near_infrared(ident: Identity, nir: float) -> Thermal:
    """The infrared levels of ``ident`` with a share ``nir`` of each material's visible
    luminance (a near-infrared camera's look; 0: thermal only)."""
    th, co = ident.thermal, ident.colors
    if nir <= 0:
        return th

    def mix(lum: float, heat: float) -> float:
        return nir * lum + (1.0 - nir) * heat

    return Thermal(
        skin=mix(_luminance(co.skin), th.skin),
        hair=mix(_luminance(co.hair), th.hair),
        upper=mix(_luminance(co.upper), th.upper),
        upper_delta=mix(_luminance(co.upper2) - _luminance(co.upper), th.upper_delta),
        lower=mix(_luminance(co.lower), th.lower),
        lower_delta=mix(_luminance(co.lower2) - _luminance(co.lower), th.lower_delta),
        shoes=mix(_luminance(co.shoes), th.shoes),
        bag=mix(_luminance(co.bag), th.bag),
        hat=mix(_luminance(co.hat), th.hat),
    )


def render(
    ident: Identity,
    cond: Conditions,
    height: int = 128,
    width: int = 64,
    seed: int = 0,
    modality: int | None = None,
    nir: float = 0.0,
) -> np.ndarray:
    """One image of ``ident`` under ``cond``.

    Args:
        seed: dataset seed (selects the cameras' scenes).
        modality: :data:`VISIBLE` or :data:`INFRARED`; defaults to the camera's modality.
        nir: near-infrared share of the infrared intensities (module docstring).

    Returns:
        (height, width, 3) uint8. Infrared images repeat one channel three times; with
        ``nir=0`` the infrared path reads ``ident.shape`` and ``ident.thermal``, never
        ``ident.colors``.
    """
    if modality is None:
        modality = CAM_MODALITY[cond.cam]
    ir = modality == INFRARED
    cv = _Canvas(height, width)
    layers, masks = _person_layers(cv, ident, cond)
    img = _background(seed, cond, cv, ir)
    if ir:
        th = _near_infrared(ident, nir)
        flat = {"skin": th.skin, "hair": th.hair, "shoes": th.shoes, "bag": th.bag, "hat": th.hat}
        for win, mat in layers:
            shade = 1.0 - 0.22 * np.minimum(win.q, 1.0) ** 2  # cooler at grazing angles
            if mat == "upper":
                val = th.upper + th.upper_delta * masks["upper"][win.sy, win.sx]
            elif mat == "lower":
                val = th.lower + th.lower_delta * masks["lower"][win.sy, win.sx]
            else:
                val = flat[mat]
            _paint(img, win, val * shade)
        gain, off = _CAM_IR[cond.cam]
        img = img * (gain * cond.ir_gain) + (off + cond.ir_offset)
    else:
        co = ident.colors
        flat = {"skin": co.skin, "hair": co.hair, "shoes": co.shoes, "bag": co.bag, "hat": co.hat}
        flat = {k: np.array(c, np.float32) for k, c in flat.items()}
        garment = {
            "upper": (np.array(co.upper, np.float32), np.array(co.upper2, np.float32)),
            "lower": (np.array(co.lower, np.float32), np.array(co.lower2, np.float32)),
        }
        for win, mat in layers:
            shade = (1.0 - 0.35 * np.minimum(win.q, 1.0) ** 2)[..., None]
            if mat in garment:
                c1, c2 = garment[mat]
                m = masks[mat][win.sy, win.sx, None]
                val = c1 + (c2 - c1) * m
            else:
                val = flat[mat]
            _paint(img, win, val * shade)
        level, cast = _CAM_LIGHT[cond.cam]
        light = (
            level * cond.brightness * np.array(cast, np.float32) * np.array(cond.cast, np.float32)
        )
        img = img * light
    if cond.occlusion:
        rng = np.random.default_rng([cond.occ_seed, 1])
        col, irv = _scene_color(rng), rng.uniform(0.05, 0.5)
        e = cond.occ_extent
        if cond.occlusion == 1:  # from the bottom
            win = cv.rect(-1, height * (1 - e), width + 1, height + 1)
        elif cond.occlusion == 2:  # from the left
            win = cv.rect(-1, height * 0.3, width * e * 1.4, height + 1)
        else:
            win = cv.rect(width * (1 - e * 1.4), height * 0.3, width + 1, height + 1)
        _paint(img, win, irv if ir else col)
    if cond.blur > 0:
        from scipy.ndimage import gaussian_filter  # here: 0.3-0.8 s off `import uvireid`

        img = gaussian_filter(img, cond.blur if ir else (cond.blur, cond.blur, 0), mode="nearest")
    img = img + np.random.default_rng([cond.occ_seed, 2]).normal(0, cond.noise, img.shape)
    out = (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=2) if ir else out


# --------------------------------------------------------------------------------------
# the dataset on disk
# --------------------------------------------------------------------------------------
def split_ids(ids: int, seed: int = 0) -> dict[str, list[int]]:
    """Identities 1..ids split like SYSU-MM01 (296 train + 99 val, 96 test of 491): a fifth
    are test ids, 99/491 of them validation ids (trained on, as in SYSU, unless
    ``validation``), the rest train ids; the test ids are interleaved with the others.
    (Version 2 held a fifteenth out for validation: one identity of a 12-id dataset, whose
    validation R1 is 100 % whatever the features; audit KC.)"""
    pids = np.arange(1, ids + 1)
    rng = np.random.default_rng([seed, 41])
    perm = rng.permutation(pids)
    n_test = max(1, round(ids / 5))
    n_val = max(1, min(round(ids * 99 / 491), ids - n_test - 1))
    test = sorted(int(p) for p in perm[:n_test])
    val = sorted(int(p) for p in perm[n_test : n_test + n_val])
    train = sorted(int(p) for p in perm[n_test + n_val :])
    return {"train": train, "val": val, "test": test, "available": [int(p) for p in pids]}


def camera_counts(pid: int, seed: int = 0) -> dict[int, int]:
    """Images of person ``pid`` per camera (absent cameras omitted); >= 1 visible and >= 1
    infrared camera."""
    rng = np.random.default_rng([seed, pid, 51])
    while True:
        present = {c: rng.random() < (0.75 if c in VISIBLE_CAMS else 0.8) for c in range(1, 7)}
        if any(present[c] for c in VISIBLE_CAMS) and any(present[c] for c in INFRARED_CAMS):
            break
    lo, hi = IMAGES_PER_CAM
    return {c: int(rng.integers(lo, hi + 1)) for c in range(1, 7) if present[c]}


def rand_perm_cells(pids: list[int], seed: int = 0, trials: int = RAND_PERM_TRIALS) -> np.ndarray:
    """The ``rand_perm_cam`` cell array of SYSU-MM01's ``exp/rand_perm_cam.mat`` for the
    people ``pids``: 6 x 1 cells (one per camera) of ``max(pids)`` x 1 cells, the one of
    camera c and person p a (``trials``, n) array whose rows are permutations of 1..n, n the
    person's images in that camera (:func:`camera_counts`); empty where p has none there.
    :func:`uvireid.evaluation.load_rand_perm` reads it, and ``evaluation.sampler=official``
    samples the gallery from it as from the dataset authors' file (``get_testing_set.m``).
    Seeded per (seed, person, camera): a small dataset's permutations are the first of a
    large one's."""
    top = max(pids)
    cells = np.empty((6, 1), dtype=object)
    for cam in range(1, 7):
        per_pid = np.empty((top, 1), dtype=object)
        for i in range(top):
            per_pid[i, 0] = np.zeros((0, 0), dtype=np.uint16)
        for pid in pids:
            n = camera_counts(pid, seed).get(cam, 0)
            if n:
                rng = np.random.default_rng([seed, pid, cam, 61])
                rows = [rng.permutation(n) + 1 for _ in range(trials)]
                per_pid[pid - 1, 0] = np.stack(rows).astype(np.uint16)
        cells[cam - 1, 0] = per_pid
    return cells


def write_rand_perm(root: str | Path, pids: list[int], seed: int) -> Path:
    """Write ``root/exp/rand_perm_cam.mat`` (:func:`rand_perm_cells`), atomically."""
    import scipy.io

    from uvireid.fileio import atomic_write

    cells = rand_perm_cells(pids, seed)
    return atomic_write(
        Path(root) / "exp" / RAND_PERM,
        lambda fh: scipy.io.savemat(fh, {"rand_perm_cam": cells}, do_compression=True),
    )


def _params(ids: int, seed: int, height: int, width: int, nir: float = 0.0) -> dict:
    extra = {"nir": float(nir)} if nir > 0 else {}  # thermal folders keep their manifests
    return {
        **extra,
        "generator": "uvireid.data.synthetic",
        "version": GENERATOR_VERSION,
        "ids": ids,
        "seed": seed,
        "height": height,
        "width": width,
        "images_per_cam": list(IMAGES_PER_CAM),
        "jpeg_quality": JPEG_QUALITY,
    }


def _ignore_sigint() -> None:
    """Rendering processes leave Ctrl-C to the parent, which cancels their jobs (a
    terminal's Ctrl-C reaches the whole group: each worker printed its traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _render_people(args: tuple[str, list[int], int, int, int, float]) -> dict[int, int]:
    """Worker: write every image of the people ``pids`` under ``root``; images per camera."""
    root, pids, seed, height, width, nir = args
    counts = {c: 0 for c in range(1, 7)}
    for pid in pids:
        ident = make_identity(pid, seed)
        for cam, n in camera_counts(pid, seed).items():
            d = Path(root) / f"cam{cam}" / f"{pid:04d}"
            d.mkdir(parents=True, exist_ok=True)
            for idx in range(1, n + 1):
                cond = draw_conditions(seed, pid, cam, idx)
                img = render(ident, cond, height, width, seed, nir=nir)
                Image.fromarray(img).save(d / f"{idx:04d}.jpg", quality=JPEG_QUALITY)
            counts[cam] += n
    return counts


def read_manifest(root: str | Path) -> dict | None:
    """The manifest of a complete synthetic dataset at ``root``, else None."""
    root = Path(root)
    if not (root / DONE).is_file() or not (root / MANIFEST).is_file():
        return None
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _damage(root: Path, manifest: dict | None) -> str | None:
    """What a complete synthetic folder lost since it was written (an interrupted copy, a
    clean-up): its images per camera against the manifest's ``counts``; None when they
    agree (or the manifest records none)."""
    counts = (manifest or {}).get("counts")
    if not isinstance(counts, dict):
        return None
    lost = []
    for cam, want in sorted(counts.items()):
        have = sum(1 for _ in (root / cam).glob("*/*.jpg"))
        if have != want:
            lost.append(f"{cam}: {have} of {want} images")
    if not (root / "exp" / "test_id.txt").is_file():
        lost.append("exp/test_id.txt missing")
    return "; ".join(lost) or None


def _synth_command(out: Path, manifest: dict) -> str:
    """The ``uvireid data synth`` line that writes the dataset of ``manifest`` again."""
    line = f"uvireid data synth --out {shlex.quote(str(out))}"
    line += f" --ids {manifest.get('ids')} --seed {manifest.get('seed')}"
    if _value(manifest, "nir"):
        line += f" --nir {_value(manifest, 'nir')}"
    return line


def _value(d: dict, key: str) -> object:
    """``d[key]``, with nir's default 0.0 where a thermal manifest leaves it out."""
    return d.get(key, 0.0) if key == "nir" else d.get(key)


def _matches(manifest: dict | None, params: dict) -> bool:
    keys = {*params, "nir"}  # a manifest's nir must match a thermal (nir-less) request too
    return manifest is not None and all(_value(manifest, k) == _value(params, k) for k in keys)


def check_params(ids: object, seed: object, nir: object) -> tuple[int, int, float]:
    """``(ids, seed, nir)`` checked and typed (``ids`` None: :data:`DEFAULT_IDS`), else a
    :class:`DatasetError` naming the keyword and its range."""
    if ids is None:
        ids = DEFAULT_IDS
    if isinstance(ids, bool) or not isinstance(ids, (int, np.integer)) or not 3 <= ids <= 9999:
        raise DatasetError(
            f"synthetic dataset: ids must be a whole number in 3..9999 (pids are %04d), got {ids!r}"
        )
    seed = check_seed(seed, "synthetic dataset: seed", DatasetError)
    if isinstance(nir, bool) or not isinstance(nir, (int, float)) or not 0.0 <= nir <= 1.0:
        raise DatasetError(f"synthetic dataset: nir must be a number in 0..1, got {nir!r}")
    return int(ids), seed, float(nir)


def _whole(name: str, value: object, lo: int) -> int:
    """``value`` as an int when it is a whole number >= ``lo`` (numpy integers too, not
    bool), else a :class:`DatasetError` naming the keyword (audit OA: a numpy height was
    rendered in full, then failed writing the manifest; workers=0 divided by zero)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise DatasetError(
            f"synthetic dataset: {name} must be a whole number >= {lo}, got {value!r}"
        )
    return int(value)


def _check_sizes(height: object, width: object, workers: object) -> tuple:
    """``(height, width, workers)`` checked and typed before anything is written."""
    for name, value, lo in (("height", height, 32), ("width", width, 16)):
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value < lo:
            raise DatasetError(
                f"synthetic dataset: {height}x{width} images are too small; use >= 32x16"
            )
        _whole(name, value, lo)
    return int(height), int(width), None if workers is None else _whole("workers", workers, 1)


def _refuse_foreign(out: Path, state: str) -> None:
    """Refuse to replace ``out`` when it holds files the generator did not write:
    replacing deletes the folder (``state``: why it would be replaced). Checked before
    anything in ``out`` changes."""
    owned = {MARKER, DONE, MANIFEST, "exp", *(f"cam{c}" for c in range(1, 7))}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in owned)
    if foreign:
        raise DatasetError(
            f"synthetic dataset: {out} {state} and also files uvireid did not write "
            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); refusing to "
            f"replace it, which would delete them. Move them out, or pass another --out"
        )


def _host() -> str:
    """This machine's name, as a partial folder's name records it (no '-' or '.')."""
    import socket

    return "".join(ch if ch.isalnum() else "_" for ch in socket.gethostname()) or "host"


def _partial(out: Path) -> Path:
    """A folder beside ``out`` named ``.<name>.tmp-<host>-<pid>-<ns>``, this process's:
    the dataset being written, or the one being replaced (removed by
    :func:`_remove_dead_partials` once this process is gone)."""
    return out.parent / f".{out.name}.tmp-{_host()}-{os.getpid()}-{time.time_ns()}"


def _remove_dead_partials(out: Path) -> None:
    """Delete the partial folders (``.<name>.tmp-<host>-<pid>-<ns>``) that killed
    generations of ``out`` on this machine left, those whose process is gone. Another
    machine's (a cluster's nodes share the cache, not their process ids) and a live
    process's are left alone: they may be rendering now."""
    host = _host()
    for tmp in out.parent.glob(f"{glob.escape('.' + out.name)}.tmp-{host}-*-*"):
        try:
            pid = int(tmp.name.rsplit("-", 2)[1])
            os.kill(pid, 0)  # alive (or not ours to signal): left alone
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
            logger.info("removed %s, left by a generation that was killed", tmp)
        except (ValueError, PermissionError, OSError):
            continue


def generate(
    out: str | Path,
    ids: int | None = None,
    seed: int = 0,
    height: int = 128,
    width: int = 64,
    *,
    workers: int | None = None,
    nir: float = 0.0,
    replace: bool = True,
) -> Path:
    """Write the synthetic dataset to ``out`` in the SYSU-MM01 raw layout; returns ``out``.

    A complete dataset with the same parameters already at ``out`` is kept as is. A
    half-written one (no ``DONE``) is replaced; one with other parameters is replaced
    with ``replace``, else refused (a :class:`DatasetError` naming its parameters). Images are
    written to a temporary sibling folder that is renamed to ``out`` once ``manifest.json``
    and ``DONE`` are written, so a killed run never leaves a folder that looks complete.

    Args:
        out: destination folder (created); must be empty or a synthetic dataset.
        ids: number of identities (default :data:`DEFAULT_IDS`); a fifth are test ids.
        seed: random seed; the same seed writes the same images, byte for byte (the
            manifest's timing and the .mat file's creation date aside).
        height, width: image size in pixels.
        workers: processes drawing images (default: 2, or 1 for small datasets).
        nir: near-infrared share of the infrared images, 0..1 (module docstring; 0, the
            default, is the thermal look).
        replace: replace a complete synthetic dataset with other parameters at ``out``
            (the cache folders, ``uvireid data synth``); False for a folder a recipe names
            (``data.root``), which is the user's.

    Raises:
        DatasetError: ``out`` holds other files, another synthetic dataset (without
            ``replace``), or the parameters are out of range.
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # a rendering process importing a script that calls generate() outside an
        # `if __name__ == "__main__":` guard: leave at once, the parent renders instead
        sys.exit(1)
    out = Path(out).expanduser().absolute()
    if out.is_symlink():  # a link to a folder on another disk: write there (audit KC)
        out = out.resolve()
    if out.exists() and not out.is_dir():
        raise DatasetError(
            f"synthetic dataset: {out} is a file, not a folder; give a folder to write into"
        )
    ids, seed, nir = check_params(ids, seed, nir)
    height, width, workers = _check_sizes(height, width, workers)
    params = _params(ids, seed, height, width, nir)
    if out.exists():
        found = read_manifest(out)
        if _matches(found, params):
            damage = _damage(out, found)
            if damage is None:
                logger.info("synthetic dataset at %s is complete; reusing it", out)
                if not (out / "exp" / RAND_PERM).is_file():
                    # written before the file was (session 27): the permutations follow
                    # from the seed alone, so the folder gets them without a new render
                    try:
                        write_rand_perm(out, split_ids(ids, seed)["available"], seed)
                        logger.info("synthetic dataset: wrote %s", out / "exp" / RAND_PERM)
                    except OSError as exc:  # a read-only copy is still a dataset (audit MI)
                        logger.warning(
                            "synthetic dataset: could not add %s (%s); the official sampler "
                            "needs it, the seeded one does not",
                            out / "exp" / RAND_PERM,
                            exc,
                        )
                return out
            # images lost since it was written (audit KC)
            if not replace:
                raise DatasetError(
                    f"synthetic dataset: {out} lost images since it was written ({damage}); "
                    f"write it again: {_synth_command(out, found)}"
                )
            _refuse_foreign(
                out, f"holds a synthetic dataset that lost images since it was written ({damage})"
            )
            logger.warning(
                "synthetic dataset at %s lost images (%s); writing it again", out, damage
            )
            (out / DONE).unlink(missing_ok=True)  # never reused as complete meanwhile
            found = None
        if found is not None and not replace:
            keys = [*params, *(["nir"] if "nir" not in params else [])]
            have = {k: _value(found, k) for k in keys if _value(found, k) != _value(params, k)}
            want = {k: _value(params, k) for k in have}
            settable = {k: v for k, v in have.items() if k in ("ids", "seed", "nir")}
            raise DatasetError(
                f"synthetic dataset: {out} holds another synthetic dataset ("
                + ", ".join(f"{k}={v}" for k, v in have.items())
                + "; asked for "
                + ", ".join(f"{k}={v}" for k, v in want.items())
                + "); refusing to replace it. Fix: "
                + (
                    "set " + " ".join(f"data.{k}={v}" for k, v in settable.items()) + " to use it"
                    if settable
                    else f"write it again with this version: {_synth_command(out, found)}"
                )
                + ", or point data.root at another folder (or leave it out: "
                "the cache keeps one folder per setting)"
            )
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise DatasetError(
                f"synthetic dataset: {out} exists and is not a uvireid synthetic dataset "
                f"(no {MARKER}); refusing to overwrite it. Pass an empty or new folder."
            )
        _refuse_foreign(out, "holds a synthetic dataset with other settings")
        if found is not None:
            differ = [k for k in params if found.get(k) != params[k]]
            logger.warning(
                "synthetic dataset: replacing the one at %s (%s) with %s",
                out,
                ", ".join(f"{k}={found.get(k)}" for k in differ),
                ", ".join(f"{k}={params[k]}" for k in differ),
            )
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(out)
    tmp = _partial(out)
    tmp.mkdir()
    try:
        (tmp / MARKER).write_text("written by uvireid.data.synthetic\n")
        split = split_ids(ids, seed)
        if len(split["test"]) < 2:
            logger.warning(
                "synthetic dataset with %d identities: its test split holds one identity, so "
                "every query's first match is right whatever the features (R1 100%%); use "
                "--ids 10 or more for a test that measures something",
                ids,
            )
        if len(split["val"]) < 2:
            logger.warning(
                "synthetic dataset with %d identities: its validation split holds one "
                "identity, so data.validation=true scores R1 100%% whatever the features; "
                "use --ids 10 or more to choose settings on it",
                ids,
            )
        exp = tmp / "exp"
        exp.mkdir()
        for name in ("train", "val", "test", "available"):
            (exp / f"{name}_id.txt").write_text(",".join(str(p) for p in split[name]) + "\n")
        for cam in range(1, 7):
            (tmp / f"cam{cam}").mkdir()
        pids = split["available"]
        write_rand_perm(tmp, pids, seed)
        if workers is None:
            workers = 1 if ids < 60 else min(2, os.cpu_count() or 1)
        # jobs of a few people each (about a second): a Ctrl-C or SIGTERM cancels the
        # rest at once instead of waiting for each process's whole share (audit AV: 107 s)
        size = max(1, min(8, len(pids) // (4 * workers)))
        chunks = [pids[i : i + size] for i in range(0, len(pids), size)]
        jobs = [(str(tmp), c, seed, height, width, float(nir)) for c in chunks if c]
        results = None
        if workers > 1:
            try:
                pool = ProcessPoolExecutor(
                    workers, mp_context=get_context("spawn"), initializer=_ignore_sigint
                )
                try:
                    results = list(pool.map(_render_people, jobs))
                except BaseException:
                    # the jobs under way (a few people each) finish before the folder is
                    # removed: workers left running re-created it (audit BK)
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
                pool.shutdown()
            except BrokenProcessPool:
                # spawned workers import __main__: a script without an
                # `if __name__ == "__main__":` guard starts its body again in them
                logger.warning(
                    "synthetic dataset: the rendering processes failed to start (a script "
                    "without `if __name__ == '__main__':` around its code?); rendering in "
                    "this process instead (pass workers=1 to skip the attempt)"
                )
        if results is None:
            results = [_render_people(j) for j in jobs]
        counts = {f"cam{c}": sum(r[c] for r in results) for c in range(1, 7)}
        manifest = dict(
            params,
            counts=counts,
            n_images=sum(counts.values()),
            n_train_ids=len(split["train"]) + len(split["val"]),
            n_test_ids=len(split["test"]),
            seconds=round(time.perf_counter() - t0, 2),
        )
        on_disk = sum(1 for c in range(1, 7) for _ in (tmp / f"cam{c}").rglob("*.jpg"))
        if on_disk != manifest["n_images"] or not (exp / "test_id.txt").is_file():
            # never publish a folder another process changed while this one rendered
            raise DatasetError(
                f"synthetic dataset: the folder being written ({tmp}) holds {on_disk} of "
                f"the {manifest['n_images']} images rendered (another process removed or "
                f"changed it); run the command again"
            )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        (tmp / DONE).write_text(f"version {GENERATOR_VERSION}\n")
        if _matches(read_manifest(out), params):
            logger.info("synthetic dataset at %s was completed by another process", out)
            return out
        old = None
        if out.exists():
            # moved aside whole, then deleted: a kill while deleting (minutes for a large
            # set) left the folder with its DONE and manifest but cameras gone, reused as
            # complete (audit KC); a dead partial's name, so a later run removes it
            old = _partial(out)
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            if not _matches(read_manifest(out), params):  # not another process's copy
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "synthetic dataset: %d ids, %d images written to %s in %.1f s",
        ids,
        manifest["n_images"],
        out,
        time.perf_counter() - t0,
    )
    return out


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$UVIREID_CACHE``, else ``~/.cache/uvireid``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("UVIREID_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "uvireid"


def ensure_synthetic(
    cache_dir: str | Path | None = None, ids: int | None = None, seed: int = 0, nir: float = 0.0
) -> Path:
    """The folder of the synthetic dataset with these parameters, generated on first use.

    It lives in ``<cache>/synthetic-v<version>-ids<ids>-seed<seed>-128x64`` where
    ``<cache>`` is :func:`cache_root`; a complete folder whose manifest matches is reused.
    """
    ids, seed, nir = check_params(ids, seed, nir)
    # '%g' (the names so far) where it is exact, else every digit: 0.1234567 and 0.1234568
    # shared one folder and replaced each other's dataset (audit OA)
    short = f"{nir:g}"
    tag = f"-nir{short if float(short) == nir else repr(nir)}" if nir > 0 else ""
    root = cache_root(cache_dir) / f"synthetic-v{GENERATOR_VERSION}-ids{ids}-seed{seed}-128x64{tag}"
    return generate(root, ids=ids, seed=seed, nir=nir)


@DATASETS.register("synthetic")
class SyntheticSYSU(SYSUMM01):
    """The embedded synthetic dataset, generated on first use and read as SYSU-MM01.

    Args:
        root: folder to generate into (kept when it already holds this dataset); default:
            the cache folder of :func:`ensure_synthetic` (``$UVIREID_CACHE``, else
            ``~/.cache/uvireid``).
        ids: number of identities (default :data:`DEFAULT_IDS`: 400 train + 100 test).
            With a ``root`` that already holds a complete synthetic dataset, None reads
            it whatever its size; a number that differs regenerates it.
        seed: generator seed (None: 0, or whatever the dataset at ``root`` has).
        nir: near-infrared share of the infrared images (0: thermal, the default; see the
            module docstring); None: 0, or whatever the dataset at ``root`` has.
        validation: train on the train ids and test on the validation ids
            (:class:`~uvireid.data.sysu.SYSUMM01`'s).

    Everything else (``train``, ``test``, ``protocols``, ``meta()``, ``stats()``,
    ``fingerprint()``) is :class:`~uvireid.data.sysu.SYSUMM01`'s; ``meta()`` and
    ``fingerprint()`` add the generator's parameters.
    """

    name = "synthetic"
    title = "synthetic VI-ReID (SYSU-MM01 layout)"

    @classmethod
    def check_args(
        cls,
        root: str | None = None,
        ids: int | None = None,
        seed: int | None = None,
        nir: float | None = None,
        validation: bool = False,
    ) -> None:
        """The keywords' types and ranges (:func:`check_params`), without generating
        anything; ``root`` may be new (it is generated there)."""
        if root is not None:
            as_root(root, cls.title)
        check_params(ids, 0 if seed is None else seed, 0.0 if nir is None else nir)
        SYSUMM01.check_args(None, validation)

    def __init__(
        self,
        root: str | None = None,
        ids: int | None = None,
        seed: int | None = None,
        nir: float | None = None,
        validation: bool = False,
    ):
        self.check_args(root, ids, seed, nir, validation)
        if root is None:
            path = ensure_synthetic(ids=ids, seed=seed or 0, nir=float(nir or 0.0))
        else:
            found = read_manifest(root)
            size = {}
            if found is not None:  # keep what is there unless asked for something else
                ids = found.get("ids") if ids is None else ids
                seed = found.get("seed") if seed is None else seed
                nir = found.get("nir", 0.0) if nir is None else nir
                # generate(height=, width=) made it: read at its size (audit KC)
                size = {k: found[k] for k in ("height", "width") if isinstance(found.get(k), int)}
            path = generate(
                root, ids=ids, seed=seed or 0, nir=float(nir or 0.0), replace=False, **size
            )
        self.manifest = read_manifest(path) or {}
        super().__init__(path, verify=True, validation=validation)

    def _generator(self) -> dict:
        keys = ("version", "ids", "seed", "height", "width")
        out = {k: self.manifest.get(k) for k in keys}
        if self.manifest.get("nir"):
            out["nir"] = self.manifest["nir"]
        return out

    def meta(self) -> dict:
        out = super().meta()
        out["generator"] = self._generator()
        return out

    def fingerprint(self) -> dict:
        out = super().fingerprint()
        out["generator"] = self._generator()
        return out
