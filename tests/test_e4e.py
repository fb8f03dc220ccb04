"""The e4e encoder reproduces omertov/encoder4editing on the golden fixture."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import essence
from essence.networks import EncoderConfig, build_encoder


@pytest.fixture(scope="module")
def e4e_io(fixtures):
    return load_file(fixtures / "e4e_tiny64_io.safetensors")


def test_tiny_encoder_layout_is_read_from_the_checkpoint(encoder):
    cfg = encoder.config
    assert len(cfg.units) == 24 and cfg.taps == (6, 20, 23)
    assert cfg.style_convs == (4, 4, 4, 5, 5, 5, 5, 6, 6, 6)
    assert (cfg.stem_width, cfg.style_dim, encoder.n_latent) == (16, 64, 10)


def test_codes_match_reference(encoder, e4e_io):
    with torch.no_grad():
        codes = encoder.encode(e4e_io["input"])
    assert codes.shape == (2, 10, 64)
    assert (codes - e4e_io["codes"]).abs().max().item() < 1e-4


def test_embedded_decoder_loads_as_generator_and_decodes_the_codes(tiny_files, e4e_io):
    decoder = essence.load_generator(tiny_files.encoder, cache=False)
    with torch.no_grad():
        image = decoder.synthesize(e4e_io["codes"])
    assert (image - e4e_io["image"]).abs().max().item() < 1e-4
    assert torch.allclose(decoder.latent_avg, torch.load(tiny_files.encoder, weights_only=True)["latent_avg"][0])


def test_chunked_encoding_equals_one_batch(encoder, e4e_io):
    with torch.no_grad():
        whole = encoder.encode(e4e_io["input"], batch_size=8)
        chunked = encoder.encode(e4e_io["input"], batch_size=1)
    assert (whole - chunked).abs().max().item() < 1e-5


def test_full_size_encoder_has_exactly_the_e4e_keys_and_shapes(fixtures):
    expected = json.loads((fixtures / "e4e_ffhq_encode_keys.json").read_text())["encoder"]
    model = build_encoder(EncoderConfig.ir_se50(), device="meta")
    state = model.state_dict()
    assert set(state) == set(expected)
    assert {k: list(v.shape) for k, v in state.items()} == expected
    assert EncoderConfig.from_state_dict(state) == EncoderConfig.ir_se50()


@pytest.mark.parametrize("shape", [(1, 3, 128, 128), (1, 4, 256, 256), (3, 256, 256)])
def test_wrong_image_shape_names_the_expected_shape(encoder, shape):
    with pytest.raises(essence.errors.ShapeError, match=r"\[batch, 3, 256, 256\]"):
        encoder.encode(torch.zeros(shape))
