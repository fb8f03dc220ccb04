"""Training the encoder: resumable and loss-free, its file, and encoding with it.

On the tiny models with three of the trace's pictures, flips and shuffling on (what users run): a run
stopped part way and run again from its checkpoint folder ends where an uninterrupted run ends, the
encoder file appears only when training is complete and says what it was trained for, loads strictly
and refuses another generator, and an essence encoded with it is a standard direction file.
"""

from __future__ import annotations

import pytest
import torch
from encoder_trace import data, sample_picture, sources  # noqa: F401 (fixtures)
from safetensors.torch import load_file

import essence
from essence.encoding import (EncoderSettings, as_inputs, check_encoder_outputs, encode_essence, generated_data,
                              load_checkpoint, load_essence_encoder, objective_backward, step_batch,
                              target_features, train_encoder_file)
from essence.encoding.objective import generated_features
from essence.errors import EssenceError, IncompatibleWeightsError, TrainingCancelled

SETTINGS = EncoderSettings(max_steps=2, flip=0.5, shuffle=True, validate_every=1, checkpoint_every=2, seed=3)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, encoder, generator, guide, data, sources):
    out = tmp_path_factory.mktemp("whole") / "enc.safetensors"
    file, training = train_encoder_file(out, encoder, generator, guide, data, sources, SETTINGS)
    return out, file, training


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, encoder, generator, guide, data, sources):
    """Stopped before step 2 (its last checkpoint is step 0's; the best files of steps 0 and 1 may both be
    there), a leftover temporary file of a checkpoint write that was killed, then the same call again."""
    out = tmp_path_factory.mktemp("resumed") / "enc.safetensors"
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(TrainingCancelled):
        train_encoder_file(out, encoder, generator, guide, data, sources, SETTINGS, should_stop=stop)
    folder = out.with_name("enc.checkpoints")
    assert not out.exists()  # the file appears only when training is complete
    assert load_checkpoint(folder).step == 1
    (folder / ".checkpoint.safetensors.0123456789ab.tmp").write_bytes(b"half a checkpoint")
    file, training = train_encoder_file(out, encoder, generator, guide, data, sources, SETTINGS)
    return out, file, training


def test_a_stopped_run_resumes_and_ends_where_an_uninterrupted_run_ends(uninterrupted, resumed):
    (_, _, whole), (_, _, again) = uninterrupted, resumed
    assert again.resumed_from == 1 and whole.resumed_from == 0
    assert torch.allclose(torch.tensor(again.losses), torch.tensor(whole.losses), rtol=0, atol=1e-6)
    assert torch.allclose(torch.tensor(again.validations), torch.tensor(whole.validations), rtol=0, atol=1e-6)
    assert (again.best_step, again.best_loss) == (whole.best_step, pytest.approx(whole.best_loss, abs=1e-6))
    resumed_state = again.encoder.state_dict()
    for key, value in whole.encoder.state_dict().items():
        assert torch.allclose(resumed_state[key].float(), value.float(), rtol=0, atol=1e-6), key


def test_the_two_encoder_files_hold_the_same_encoder(uninterrupted, resumed):
    a, b = load_file(str(uninterrupted[0])), load_file(str(resumed[0]))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=0, atol=1e-6), key


def test_the_checkpoint_holds_the_optimizer_s_slow_weights_and_the_batchnorm_statistics(uninterrupted):
    out = uninterrupted[0]
    state = load_checkpoint(out.with_name("enc.checkpoints"))
    assert state.step == SETTINGS.updates
    assert any(k.endswith("running_mean") for k in state.encoder)
    assert any(k.endswith(".slow_buffer") for k in (f"{i}.{n}" for i, e in state.optimizer["state"].items()
                                                      for n in e))
    assert state.optimizer["param_groups"][0]["step"] == SETTINGS.updates
    assert len(list(out.with_name("enc.checkpoints").glob("best-*.safetensors"))) == 1


def test_the_encoder_file_says_what_it_was_trained_for(uninterrupted, generator, guide, data, sources):
    out, file, training = uninterrupted
    loaded = load_essence_encoder(out, generator)
    meta = loaded.meta
    assert meta["generator"]["fingerprint"] == generator.fingerprint()
    assert meta["clip_model"] == guide.name
    assert meta["updates"] == SETTINGS.updates and meta["settings"]["max_steps"] == SETTINGS.max_steps
    assert meta["best_step"] == training.best_step and meta["best_validation_loss"] == pytest.approx(training.best_loss)
    assert meta["data"]["kind"] == "pictures" and meta["data"]["sha256"] == data.digest
    assert meta["sources"]["count"] == 3 and torch.equal(loaded.sources, sources)
    best = training.best_encoder().state_dict()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, best[key]), key


def test_the_encoder_file_refuses_another_generator(uninterrupted, generator):
    import copy

    other = copy.deepcopy(generator)
    with torch.no_grad():
        other.style[1].weight.add_(0.5)
    with pytest.raises(IncompatibleWeightsError, match="another generator"):
        load_essence_encoder(uninterrupted[0], other)


def test_an_e4e_file_is_not_an_encoder_file(tiny_files, uninterrupted):
    with pytest.raises(EssenceError):
        load_essence_encoder(tiny_files.encoder)


def test_a_checkpoint_of_another_run_is_refused_before_any_step(uninterrupted, encoder, generator, guide, data,
                                                               sources, tmp_path):
    out = uninterrupted[0]
    asked = []
    with pytest.raises(EssenceError, match="another training run .*settings"):
        train_encoder_file(tmp_path / "other.safetensors", encoder, generator, guide, data, sources,
                           EncoderSettings(max_steps=3, lr=2e-4), checkpoints=out.with_name("enc.checkpoints"),
                           should_stop=lambda: asked.append(1) or False)
    assert not asked


def test_outputs_are_checked_before_any_work(tiny_files, tmp_path):
    with pytest.raises(EssenceError, match="input"):
        check_encoder_outputs(tiny_files.encoder, None, [tiny_files.encoder])
    with pytest.raises(EssenceError, match="must end in"):
        check_encoder_outputs(tmp_path / "enc.pt", None, [])
    (tmp_path / "file").write_text("x")
    with pytest.raises(EssenceError, match="not a folder"):
        check_encoder_outputs(tmp_path / "enc.safetensors", tmp_path / "file", [])


def test_encoding_writes_a_standard_direction_file(uninterrupted, generator, data, tmp_path):
    out, _, _ = uninterrupted
    encoder = load_essence_encoder(out, generator)
    pictures = [sample_picture("astronaut"), sample_picture("chelsea")]
    direction = encode_essence(encoder, pictures, align=False, name="two", encoder_file=out)
    with torch.no_grad():
        essences = encoder.model(as_inputs(data.train[:2]))
    assert torch.allclose(direction.tensor, essences.mean(0, keepdim=True), atol=1e-6)
    path = direction.save(tmp_path / "two.safetensors")
    loaded = essence.load_direction(path)
    assert loaded.meta["source"]["kind"] == "encoder" and loaded.meta["source"]["file"] == out.name
    assert loaded.meta["generator_fingerprint"] == generator.fingerprint() and loaded.meta["init"] == "encoder"
    loaded.check_fits(generator)


def test_the_chunked_gradient_is_the_whole_one(encoder, generator, guide, data, sources):
    import copy

    grads = []
    for chunk in (None, 2):
        model = copy.deepcopy(encoder).train().requires_grad_(True)
        images = as_inputs(data.train[:1])
        embed = generated_features(generator, guide)
        with torch.no_grad():
            features = embed(sources)
        losses = objective_backward(model(images), sources, features, target_features(images, generator.size, guide),
                                    embed, 0.5, 3e-3, chunk)
        grads.append((losses.values(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-5)  # passes of 2 faces round differently
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-3, atol=1e-6 * float(grads[0][1].abs().max()))


def test_each_step_s_pictures_depend_only_on_the_seed_and_the_step(data):
    first = [step_batch(data, step, 1, True, 0.5, seed=3) for step in range(9)]
    again = [step_batch(data, step, 1, True, 0.5, seed=3) for step in (8, 3, 0)]
    assert torch.equal(again[0], first[8]) and torch.equal(again[1], first[3]) and torch.equal(again[2], first[0])
    epoch = {tuple(as_inputs(p[None]).flatten()[:50].tolist()) for p in data.train}
    seen = [b for b in first[:3]]
    unflipped = sum(tuple(b.flatten()[:50].tolist()) in epoch for b in seen)
    assert 0 <= unflipped <= 3
    flipped_ever = any(not any(torch.equal(b[0], as_inputs(p[None])[0]) for p in data.train) for b in first)
    assert flipped_ever  # flips happen (p 0.5 over 9 steps)
    for epoch_start in (0, 3, 6):  # every epoch shows every picture once, flipped or not
        shown = {min(range(3), key=lambda i: min(float((b[0] - as_inputs(data.train[i:i + 1])[0]).abs().mean()),
                                                 float((b[0].flip(-1) - as_inputs(data.train[i:i + 1])[0]).abs().mean())))
                 for b in first[epoch_start:epoch_start + 3]}
        assert shown == {0, 1, 2}


def test_generated_targets_are_seeded_faces_of_the_generator(generator):
    a = generated_data(generator, 3, 1, seed=4)
    b = generated_data(generator, 3, 1, seed=4)
    assert torch.equal(a.train, b.train) and a.train.shape == (3, 3, 256, 256) and a.heldout.shape[0] == 1
    assert a.describe()["kind"] == "generated" and a.describe()["count"] == 3 and a.digest == b.digest
    assert not torch.equal(generated_data(generator, 3, 1, seed=5).train, a.train)
