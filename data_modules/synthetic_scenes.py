"""Scenes of the synthetic visual-question dataset: a few coloured shapes (circle, square, triangle) of a few
sizes on a plain background, placed at random without overlap, and drawn with PIL. A scene is a plain list of
objects, so every answer can be derived from it; each ``(color, shape)`` pair occurs at most once in a scene, so
"the red circle" always names one object. Sampling takes a ``random.Random``, so a seeded generator gives the
same scene, and the same PNG bytes, every time.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, fields

from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 200, 30),
    "purple": (150, 60, 190),
}
BACKGROUND: tuple[int, int, int] = (225, 225, 225)
# Half-extent of each size as a fraction of the image side: 5, 7 and 9 px at 64 px.
SIZES: dict[str, float] = {"small": 0.08, "medium": 0.11, "large": 0.14}
MAX_LAYOUTS = 1000  # layouts tried before a scene is declared not to fit
SUPERSAMPLE = 2  # shapes are drawn at 2x and box-filtered down, so that their edges are smooth


@dataclass(frozen=True)
class SceneObject:
    """One shape; ``(x, y)`` is its centre in pixels (y grows downwards) and ``r`` its half-extent.

    The object fills the box ``[x - r, x + r] x [y - r, y + r]``: a circle inscribed in it, a square filling
    it, or a triangle pointing up with its base on the bottom edge.
    """

    shape: str
    color: str
    size: str
    x: int
    y: int
    r: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` in pixels."""
        return self.x - self.r, self.y - self.r, self.x + self.r, self.y + self.r

    @property
    def name(self) -> str:
        """The words that name the object in a question, e.g. ``"red circle"``."""
        return f"{self.color} {self.shape}"


_OBJECT_FIELDS = tuple(f.name for f in fields(SceneObject))


@dataclass(frozen=True)
class Scene:
    """An image description: its side in pixels, the smallest gap between objects, and the objects."""

    image_size: int
    gap: int
    objects: tuple[SceneObject, ...]

    def to_dict(self) -> dict:
        """A JSON-ready description."""
        objects = [{f: getattr(o, f) for f in _OBJECT_FIELDS} for o in self.objects]
        return {"image_size": self.image_size, "gap": self.gap, "objects": objects}

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """Inverse of :meth:`to_dict`."""
        objects = tuple(SceneObject(**o) for o in data["objects"])
        return cls(image_size=data["image_size"], gap=data["gap"], objects=objects)

    def signature(self) -> tuple:
        """A hashable key that is equal for two scenes exactly when they draw the same image."""
        return (self.image_size, tuple(sorted((o.shape, o.color, o.x, o.y, o.r) for o in self.objects)))


def scene_gap(image_size: int) -> int:
    """Smallest distance in pixels between the boxes of two objects along the axis that separates them."""
    return max(2, round(0.04 * image_size))


def separated(a: SceneObject, b: SceneObject, gap: int, axis: str) -> bool:
    """Whether the boxes of ``a`` and ``b`` are at least ``gap`` apart along ``axis`` (``"x"`` or ``"y"``)."""
    distance = abs(a.x - b.x) if axis == "x" else abs(a.y - b.y)
    return distance >= a.r + b.r + gap


def sample_scene(rng: random.Random, image_size: int = 64, max_objects: int = 4, min_objects: int = 1) -> Scene:
    """Draw a random scene: ``min_objects..max_objects`` objects (uniform), each a distinct ``(color, shape)``.

    Every pair of objects is separated by ``scene_gap(image_size)`` pixels along at least one axis, so that one
    of "left of / right of" or "above / below" holds without ambiguity. Positions are drawn by rejection; a
    layout that does not fit is started again (``ValueError`` after ``MAX_LAYOUTS`` layouts).

    Args:
        rng: the source of randomness.
        image_size: side of the square image in pixels.
        max_objects: most objects in a scene.
        min_objects: fewest objects in a scene.
    """
    if not 1 <= min_objects <= max_objects <= len(SHAPES) * len(COLORS):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(SHAPES) * len(COLORS)}")
    gap = scene_gap(image_size)
    margin = max(1, image_size // 32)
    count = rng.randint(min_objects, max_objects)
    kinds = rng.sample([(c, s) for c in COLORS for s in SHAPES], count)
    for _ in range(MAX_LAYOUTS):
        placed: list[SceneObject] = []
        for color, shape in kinds:
            size = rng.choice(tuple(SIZES))
            r = max(2, round(SIZES[size] * image_size))
            for _ in range(100):
                x = rng.randint(r + margin, image_size - 1 - r - margin)
                y = rng.randint(r + margin, image_size - 1 - r - margin)
                # apart along x or along y: the same test as ``separated``, inlined because it runs most
                if all(abs(x - o.x) >= r + o.r + gap or abs(y - o.y) >= r + o.r + gap for o in placed):
                    placed.append(SceneObject(shape, color, size, x, y, r))
                    break
            else:
                break
        if len(placed) == count:
            return Scene(image_size=image_size, gap=gap, objects=tuple(placed))
    raise ValueError(f"{count} objects do not fit in a {image_size} px image; use fewer or a larger image")


def render_scene(scene: Scene) -> Image.Image:
    """Draw ``scene`` as an RGB image of side ``scene.image_size``."""
    k = SUPERSAMPLE
    side = scene.image_size * k
    image = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        # Pixel (i, j) covers [i, i + 1); the object's box spans its edge pixels, hence the + 1 on the far side.
        left, top, right, bottom = o.box[0] * k, o.box[1] * k, (o.box[2] + 1) * k - 1, (o.box[3] + 1) * k - 1
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif o.shape == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        else:
            draw.polygon([((left + right) / 2, top), (left, bottom), (right, bottom)], fill=fill)
    return image.resize((scene.image_size, scene.image_size), Image.Resampling.BOX)


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image`` (lossless, so colours stay exact; the same image always gives the same bytes)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
