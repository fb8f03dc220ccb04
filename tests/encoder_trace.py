"""The pictures of the official encoder trace, rebuilt from scikit-image's wheel.

The trace (``tests/fixtures/targetclip_encoder_trace.*``, slimmed from the shared fixtures' golden one)
holds no picture: its training pictures (astronaut, chelsea, coffee, rocket, camera,
hubble_deep_field, in that order) and held-out ones (retina, horse) are scikit-image's public-domain /
CC0 samples, made here as the trace's tool made them (``skimage.data.<name>()`` as 8-bit pixels; the
horse, a boolean mask, becomes 0 and 1) and then read as the official dataset reads a picture:
RGB, resized to 256 x 256 (bilinear) and normalised to [-1, 1]. The rebuilt inputs equal the golden
trace's ``train_images`` and ``heldout_images`` exactly (``tests/test_encoder_trace.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

TRAIN = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field")
HELDOUT = ("retina", "horse")


def sample_picture(name: str) -> Image.Image:
    """scikit-image's sample ``name`` as the trace's tool saved it (a boolean mask as 0 and 1)."""
    import skimage.data

    pixels = getattr(skimage.data, name)()
    return Image.fromarray(pixels.astype(np.uint8) if pixels.dtype == bool else pixels)


def trace_data():
    """The trace's pictures as ``essence.encoding.EncoderData`` (train in the trace's order, held out)."""
    from essence.encoding import picture_data

    return picture_data([sample_picture(n) for n in TRAIN], [sample_picture(n) for n in HELDOUT],
                        names=[f"skimage:{n}" for n in TRAIN + HELDOUT])


# ----------------------------------------------------------------------------- fixtures of the encoder's tests


@pytest.fixture(scope="module")
def data():
    """Three training pictures and one held out, for short encoder trainings."""
    from essence.encoding import picture_data

    return picture_data([sample_picture(n) for n in ("astronaut", "chelsea", "coffee")], [sample_picture("horse")])


@pytest.fixture(scope="module")
def sources(generator):
    """Three seeded source latents of the tiny generator."""
    import essence

    return essence.sample_latents(generator, 3, seed=5).latents
