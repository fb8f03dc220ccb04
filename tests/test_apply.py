"""Applying, mixing and sweeping directions: the numbers, not only the shapes."""

from __future__ import annotations

import pytest
import torch

import essence
from essence.latents import Direction
from essence.latents.apply import apply_direction, image_grid, layer_strengths, mix_directions, strength_sweep


def _dir(seed: int, rows: int = 18, width: int = 8, **meta) -> Direction:
    return Direction(torch.randn(1, rows, width, generator=torch.Generator().manual_seed(seed)),
                     {"name": f"d{seed}", **meta})


# Sums computed here and in the library may round differently (an element that nearly cancels is
# off by ~1e-7 in absolute terms, beyond allclose's default atol); a wrong strength or row is off by
# tenths. Hence atol=1e-6 below.
ATOL = 1e-6


def _w(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(100))


def test_single_strength_adds_alpha_times_direction_to_every_row():
    w = _w(3, 18, 8)
    d = _dir(0)
    assert torch.allclose(apply_direction(w, d, 0.7), w + 0.7 * d.tensor, atol=ATOL)


@pytest.mark.parametrize("preset,rows", [("coarse", range(0, 4)), ("middle", range(4, 8)),
                                         ("fine", range(8, 18)), ("coarse+middle", range(0, 8))])
def test_layer_presets_edit_only_their_rows(preset, rows):
    w = _w(2, 18, 8)
    d = _dir(1)
    edited = apply_direction(w, d, 1.5, layers=preset)
    for row in range(18):
        expected = w[:, row] + (1.5 * d.tensor[0, row] if row in rows else 0)
        assert torch.allclose(edited[:, row], expected, atol=ATOL)


def test_a_full_vector_of_strengths_scales_each_row():
    w = torch.zeros(1, 18, 8)
    d = _dir(2)
    strengths = torch.linspace(0, 1.7, 18)
    edited = apply_direction(w, d, strengths)
    assert torch.allclose(edited, strengths[None, :, None] * d.tensor, atol=ATOL)
    with pytest.raises(essence.errors.ShapeError, match="one value per W\\+ row \\(18\\), got 5"):
        layer_strengths(18, [1.0] * 5)


def test_unknown_preset_is_named():
    with pytest.raises(essence.EssenceError, match="unknown layer preset 'eyes'"):
        layer_strengths(18, 1.0, "eyes")


def test_mix_is_the_weighted_sum_and_records_its_parts():
    a, b = _dir(3, generator_fingerprint="abc"), _dir(4, generator_fingerprint="abc")
    mixed = mix_directions([a, b], [0.3, 0.7])
    assert torch.allclose(mixed.tensor, 0.3 * a.tensor + 0.7 * b.tensor, atol=ATOL)
    assert mixed.meta["mix"] == [{"name": "d3", "weight": 0.3}, {"name": "d4", "weight": 0.7}]
    assert mixed.meta["generator_fingerprint"] == "abc"


def test_mixing_different_latent_spaces_is_refused():
    with pytest.raises(essence.errors.IncompatibleLatentSpaceError, match="d5.*d6.*different latent spaces"):
        mix_directions([_dir(5), _dir(6, rows=10)])


def test_applying_to_a_batch_equals_applying_to_each():
    w = _w(4, 18, 8)
    d = _dir(7)
    batch = apply_direction(w, d, 0.9)
    assert torch.allclose(batch, torch.stack([apply_direction(x, d, 0.9) for x in w]), atol=ATOL)


def test_strength_sweep_renders_each_source_at_each_strength(generator):
    sources = generator.sample_wplus(2, seed=0)
    d = Direction(torch.randn(1, 10, 64) * 0.5, {"name": "x"})
    images = strength_sweep(generator, sources, d, [0.0, 1.0])
    assert images.shape == (4, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(images[0], generator.synthesize(sources[:1])[0], atol=1e-5)
        assert torch.allclose(images[3], generator.synthesize(sources[1:] + d.tensor)[0], atol=1e-5)
    grid = image_grid(images, columns=2)
    assert grid.shape == (3, 2 * 64 + 3 * 2, 2 * 64 + 3 * 2) and 0 <= grid.min() and grid.max() <= 1


@pytest.mark.slow
def test_a_photo_comes_back_whole_with_only_its_face_edited(pictures, generator, encoder):
    import numpy as np
    from PIL import Image

    from essence.faces import model_to_pil
    from essence.networks import render

    photo = pictures.portrait
    d = Direction(torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(0)) * 0.5, {"name": "x"})
    edited = np.asarray(essence.apply_to_photo(photo, d, generator, encoder, 1.0), dtype=np.int16)
    # the same steps by hand: align + invert, add the direction, render, paste back
    inversion = essence.invert([photo], encoder)
    face = model_to_pil(render(generator, inversion.latents + d.tensor))[0]
    by_hand = np.asarray(essence.faces.paste_back(essence.faces.load_image(photo), face, inversion.faces[0].transform),
                         dtype=np.int16)
    original = np.asarray(Image.open(photo).convert("RGB"), dtype=np.int16)
    assert edited.shape == original.shape
    assert np.abs(edited - by_hand).max() <= 1
    outside = essence.faces.paste_mask(inversion.faces[0].transform).numpy() == 0
    assert (edited[outside] == original[outside]).all() and np.abs(edited - original).max() > 50
