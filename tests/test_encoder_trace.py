"""TargetCLIP's encoder variant against the official coach's own run on the tiny models.

``tests/fixtures/targetclip_encoder_trace.*`` is the golden trace of the shared fixtures, slimmed
(``tests/tools/slim_encoder_trace.py``): the official ``scripts/train.py`` -> ``Coach.train`` with the
README's settings for ``max_steps`` 7 (8 Ranger updates), the tiny e4e, generator and CLIP, 5 sources,
the pictures in order and unflipped. Its pictures are scikit-image's, rebuilt by ``tests/encoder_trace.py``.
Must hold (the shared README): every step's four losses within 1e-4, the held-out essences after
training within 1e-4 in eval mode. The run takes about 15 s on one thread.
"""

from __future__ import annotations

import json

import pytest
import torch
from encoder_trace import trace_data
from safetensors.torch import load_file

from essence.encoding import EncoderSettings, as_inputs, train_encoder, validate
from essence.encoding.objective import generated_features

TRACE = "targetclip_encoder_trace"
LOSS_KEYS = ("step_loss_total", "step_loss_similarity", "step_loss_consistency", "step_loss_l2")


@pytest.fixture(scope="module")
def encoder_trace(fixtures) -> dict[str, torch.Tensor]:
    return load_file(fixtures / f"{TRACE}.safetensors")


@pytest.fixture(scope="module")
def trace_record(fixtures) -> dict:
    return json.loads((fixtures / f"{TRACE}.json").read_text())


@pytest.fixture(scope="module")
def data():
    return trace_data()


@pytest.fixture(scope="module")
def settings(trace_record) -> EncoderSettings:
    hyper = trace_record["hyper"]
    return EncoderSettings(max_steps=hyper["max_steps"], lr=hyper["learning_rate"],
                           lambda_consistency=hyper["lambda_consistency"], lambda_reg=hyper["lambda_reg"],
                           batch_size=hyper["batch_size"], flip=0.0, shuffle=False)


@pytest.fixture(scope="module")
def run(encoder, generator, guide, data, encoder_trace, settings):
    return train_encoder(encoder, generator, guide, data, encoder_trace["sources"], settings)


def test_the_settings_are_the_readme_command(trace_record, settings):
    assert trace_record["step_image_index"] == [k % 6 for k in range(8)]  # in order: what shuffle=False gives
    assert settings.updates == trace_record["hyper"]["optimizer_updates"] == 8
    assert (settings.lr, settings.lambda_consistency, settings.lambda_reg) == (1e-4, 0.5, 3e-3)
    assert EncoderSettings().flip == 0.5 and EncoderSettings().max_steps == 3000


def test_every_step_s_four_losses_match_the_official_run(run, encoder_trace):
    expected = torch.stack([encoder_trace[k] for k in LOSS_KEYS], dim=1)
    assert torch.tensor(run.losses).shape == expected.shape
    assert torch.allclose(torch.tensor(run.losses), expected, rtol=0, atol=1e-4)


def test_every_step_s_gradient_norm_matches(run, encoder_trace):
    expected = encoder_trace["step_grad_norm"].double()
    assert torch.allclose(torch.tensor(run.grad_norms, dtype=torch.float64), expected, rtol=1e-3, atol=0)


def test_the_held_out_essences_after_training_match_in_eval_mode(run, data, encoder_trace):
    with torch.no_grad():
        essences = run.encoder.eval()(as_inputs(data.heldout))
    assert (essences - encoder_trace["heldout_essence_after"]).abs().max() < 1e-4


def test_the_held_out_losses_after_training_match(run, data, encoder, generator, guide, encoder_trace, settings):
    sources = encoder_trace["sources"]
    embed = generated_features(generator, guide)
    with torch.no_grad():
        features = embed(sources)
    losses = validate(run.encoder, data.heldout, sources, features, embed, generator.size, guide, settings)
    assert torch.allclose(losses, encoder_trace["heldout_losses_after"], rtol=0, atol=1e-4)
    assert run.validations[-1][1] == pytest.approx(float(encoder_trace["heldout_losses_after"][:, 0].mean()), abs=1e-4)


def test_the_trained_tensors_and_batchnorm_statistics_match(run, encoder_trace):
    state = run.encoder.state_dict()
    for key in (k for k in encoder_trace if k.startswith("encoder_after.")):
        expected = encoder_trace[key]
        got = state[key.removeprefix("encoder_after.")]
        assert (got - expected).abs().max() <= 1e-5 * max(1.0, float(expected.abs().max())), key


def test_the_first_essence_and_the_untrained_held_out_essences_match(encoder, data, encoder_trace):
    import copy

    model = copy.deepcopy(encoder)
    with torch.no_grad():
        assert (model.eval()(as_inputs(data.heldout)) - encoder_trace["heldout_essence_before"]).abs().max() < 1e-4
        first = model.train()(as_inputs(data.train[:1]))  # train mode, as the coach's first step
    assert (first - encoder_trace["step_essence"][0]).abs().max() < 1e-4


def test_the_rebuilt_pictures_are_the_golden_trace_s(data, shared):
    golden = load_file(shared(f"{TRACE}.safetensors"))
    assert (as_inputs(data.train) - golden["train_images"]).abs().max() < 1e-6
    assert (as_inputs(data.heldout) - golden["heldout_images"]).abs().max() < 1e-6


def test_the_slim_trace_is_the_golden_one_on_what_it_keeps(encoder_trace, shared):
    golden = load_file(shared(f"{TRACE}.safetensors"))
    for key, value in encoder_trace.items():
        assert torch.equal(value, golden[key]), key
