"""Pictures the tests may use and anyone may redistribute, cut from the two that ship in
scikit-image's wheel (a dev dependency): NASA's portrait of the astronaut Eileen Collins (public
domain) and Chelsea the cat (CC0, Stefan van der Walt).

TargetCLIP's own photos (face_a.jpg, keanu.jpg, ...) carry no licence, so the repository cannot
hold them; the few tests about those very photos read them from the shared fixtures folder
(``conftest.shared``). Everywhere else these stand in:

* ``portrait``: 384 x 336, one face about 90 px wide, with background around it (a "photo").
  The whole 512 px astronaut photo is not used for that: dlib also reports a false face on her suit.
* ``headshot``: 180 x 180, the face filling half of it; dlib still finds it at 80 px, so it serves
  small video frames and tracking scenes.
* ``cat``: 451 x 300, no human face (the target TargetCLIP falls back to a random start for).
* ``trace_target``: 140 x 140, her face filling most of it: the target of the reference traces in
  ``tests/fixtures`` (``tests/tools/make_reference_trace.py`` cuts the same box; the fixtures'
  README says why this one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from essence.faces import scikit_image_picture

PORTRAIT_BOX = (64, 0, 448, 336)   # in the 512 x 512 astronaut photo; her face is at about (175, 76, 265, 166)
HEADSHOT_BOX = (140, 30, 320, 210)
TRACE_TARGET_BOX = (150, 40, 290, 180)


def astronaut() -> Image.Image:
    with Image.open(scikit_image_picture("astronaut.png")) as image:
        return image.convert("RGB")


def portrait() -> Image.Image:
    return astronaut().crop(PORTRAIT_BOX)


def headshot() -> Image.Image:
    return astronaut().crop(HEADSHOT_BOX)


def trace_target() -> Image.Image:
    return astronaut().crop(TRACE_TARGET_BOX)


def cat() -> Image.Image:
    with Image.open(scikit_image_picture("chelsea.png")) as image:
        return image.convert("RGB")


@dataclass(frozen=True)
class Pictures:
    """The pictures as files: JPEG photos (as cameras write them) and the cat as PNG."""

    portrait: Path
    headshot: Path
    cat: Path


def write_pictures(folder: Path) -> Pictures:
    folder.mkdir(parents=True, exist_ok=True)
    pictures = Pictures(folder / "portrait.jpg", folder / "headshot.jpg", folder / "cat.png")
    portrait().save(pictures.portrait, quality=95)
    headshot().save(pictures.headshot, quality=95)
    cat().save(pictures.cat)
    return pictures
