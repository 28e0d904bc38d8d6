"""A procedural world of coloured shapes, with captions and exact object masks.

Scenes are 32x32 RGB images with one to three objects on a plain background. Captions name each
object's colour and shape, and only sometimes its size, position, texture and the background; wherever
the caption is silent the scene is free (continuous positions and sizes around the named ones, any
background), so a generator trained here is free, like a real one, to redraw the whole layout when one
word of the prompt changes.

    scene = sample_scene(random.Random(0))
    image, masks = render(scene)      # [32, 32, 3] float in 0..1, one bool mask [32, 32] per object
    scene.caption
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = [
    "SIZE", "SHAPES", "COLORS", "BACKGROUNDS", "SIZES", "POSITIONS", "TEXTURE",
    "Obj", "Scene", "sample_scene", "render", "caption", "with_article", "coverage", "world_vocabulary",
]

SIZE = 32
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (0.86, 0.16, 0.16),
    "green": (0.16, 0.70, 0.24),
    "blue": (0.16, 0.28, 0.86),
    "yellow": (0.94, 0.86, 0.16),
    "purple": (0.60, 0.20, 0.75),
    "orange": (0.98, 0.55, 0.12),
}
BACKGROUNDS = {"white": (0.96, 0.96, 0.96), "black": (0.06, 0.06, 0.06), "gray": (0.50, 0.50, 0.50)}
SIZES = {"small": (2.8, 4.2), "big": (6.0, 8.0)}  # radius range in pixels
POSITIONS = {  # anchor (x, y) in pixels; the phrase used in captions
    "left": ((8.5, 16.0), "on the left"),
    "right": ((23.5, 16.0), "on the right"),
    "top": ((16.0, 8.5), "at the top"),
    "bottom": ((16.0, 23.5), "at the bottom"),
    "center": ((16.0, 16.0), "in the center"),
}
TEXTURE = "striped"
STRIPE_SHADE = 0.45  # stripes alternate the colour and this fraction of it
JITTER = 2.5  # pixels around a named position


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str  # "small" | "big"
    radius: float
    x: float
    y: float
    position: str | None  # a key of POSITIONS, or None (free placement)
    striped: bool = False
    say_size: bool = True
    say_position: bool = True


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str
    say_background: bool = True
    caption: str = field(default="", compare=False)

    def with_caption(self) -> Scene:
        return replace(self, caption=caption(self))


def with_article(phrase: str) -> str:
    """'a big red circle', 'an orange square'."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _object_phrase(o: Obj) -> str:
    words = []
    if o.say_size:
        words.append(o.size)
    if o.striped:
        words.append(TEXTURE)
    words += [o.color, o.shape]
    if o.say_position and o.position is not None:
        words.append(POSITIONS[o.position][1])
    return with_article(" ".join(words))


def caption(scene: Scene) -> str:
    text = " and ".join(_object_phrase(o) for o in scene.objects)
    if scene.say_background:
        text += f" on a {scene.background} background"
    return text


def world_vocabulary() -> str:
    """Every word a caption can use, once."""
    words = ["a", "an", "and", "on", "background", TEXTURE, *SHAPES, *COLORS, *SIZES, *BACKGROUNDS]
    words += [w for _, phrase in POSITIONS.values() for w in phrase.split()]
    return " ".join(dict.fromkeys(words))


def _fits(x: float, y: float, r: float) -> bool:
    return r <= x <= SIZE - r and r <= y <= SIZE - r


def sample_scene(rng: random.Random, max_objects: int = 3) -> Scene:
    """A random scene; what the caption omits is left free."""
    count = rng.choices([1, 2, 3][:max_objects], weights=[0.55, 0.3, 0.15][:max_objects])[0]
    positions = rng.sample(list(POSITIONS), count)
    objects: list[Obj] = []
    for position in positions:
        for _ in range(50):
            size = rng.choice(list(SIZES))
            radius = rng.uniform(*SIZES[size])
            named = rng.random() < 0.75
            if named:
                (ax, ay), _ = POSITIONS[position]
                x, y = ax + rng.uniform(-JITTER, JITTER), ay + rng.uniform(-JITTER, JITTER)
            else:
                x, y = rng.uniform(radius, SIZE - radius), rng.uniform(radius, SIZE - radius)
            separated = all(math.hypot(x - o.x, y - o.y) > radius + o.radius + 1.0 for o in objects)
            if _fits(x, y, radius) and separated:
                objects.append(Obj(
                    shape=rng.choice(SHAPES), color=rng.choice(list(COLORS)), size=size, radius=radius, x=x, y=y,
                    position=position if named else None, striped=rng.random() < 0.2,
                    say_size=rng.random() < 0.7, say_position=True,
                ))
                break
    if not objects:  # extremely unlikely; keep the scene valid
        return sample_scene(rng, max_objects)
    return Scene(tuple(objects), rng.choice(list(BACKGROUNDS)), say_background=rng.random() < 0.6).with_caption()


def coverage(o: Obj, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Which of the points (xs, ys) (pixel coordinates, any shape) lie inside the object."""
    dx, dy = xs - o.x, ys - o.y
    if o.shape == "circle":
        return dx * dx + dy * dy <= o.radius * o.radius
    if o.shape == "square":
        half = o.radius * 0.86
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # upward equilateral triangle with circumradius `radius`
    r = o.radius
    top, base = -r, r * 0.5
    half_width = (dy - top) / (base - top) * (r * math.sqrt(3) / 2)
    return (dy >= top) & (dy <= base) & (np.abs(dx) <= half_width)


def render(scene: Scene, supersample: int = 4, size: int = SIZE) -> tuple[np.ndarray, list[np.ndarray]]:
    """[size, size, 3] float32 image in 0..1 and one exact bool mask per object (its visible pixels).

    Scenes live in SIZE x SIZE units; `size` renders the same scene at another resolution (finer pixels)."""
    n = size * supersample
    coords = (np.arange(n) + 0.5) / supersample * (SIZE / size)  # pixel centres in scene units
    xs, ys = np.meshgrid(coords, coords)
    canvas = np.empty((n, n, 3), np.float32)
    canvas[:] = BACKGROUNDS[scene.background]
    owner = np.full((n, n), -1)
    for i, o in enumerate(scene.objects):
        inside = coverage(o, xs, ys)
        color = np.array(COLORS[o.color], np.float32)
        if o.striped:
            stripe = (np.floor(ys) % 4) >= 2
            canvas[inside & ~stripe] = color
            canvas[inside & stripe] = color * STRIPE_SHADE
        else:
            canvas[inside] = color
        owner[inside] = i
    image = canvas.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    masks = []
    for i in range(len(scene.objects)):
        share = (owner == i).reshape(size, supersample, size, supersample).mean(axis=(1, 3))
        masks.append(share >= 0.5)
    return image, masks
