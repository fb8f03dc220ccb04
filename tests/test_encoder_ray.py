"""Encoder training on Ray Train's ``TorchTrainer`` (DDP, gloo on the CPU), on the tiny models.

One worker is the single-process ``train_encoder`` run: the same losses, validations, best step and
encoder, even when its worker crashes part way and Ray Train restarts it from its last checkpoint
(``FailureConfig``). Two workers train (each step's batch is two pictures, one per worker), are stopped part way
and run again with the same checkpoint folder: Ray Train gives the workers the last reported
checkpoint (``ray.train.get_checkpoint``) and the run ends where an uninterrupted two-worker run ends,
taken on torch's own DDP launcher (``ddp_reference``: the same loop, outside Ray, in a fraction of a
Ray Train run's start-up). All on the one local Ray of the test session (2 CPUs).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from ddp_reference import ddp_training
from encoder_trace import data, sample_picture, sources  # noqa: F401 (fixtures)

from essence.encoding import (DISTRIBUTED_RUN, EncoderSettings, check_encoder_outputs, load_essence_encoder,
                              save_checkpoint, train_encoder, TrainingState)
from essence.errors import EssenceError

# 2 updates (steps 0 and 1), each validated and checkpointed; flips and shuffling on, as users run it
SETTINGS = EncoderSettings(max_steps=1, flip=0.5, shuffle=True, validate_every=1, checkpoint_every=1, seed=3)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def models(tiny_files):
    pytest.importorskip("ray.train", reason='training on workers needs Ray Train: pip install "ray[train]"')
    from essence.scale import EncoderModels

    return EncoderModels(str(tiny_files.generator), str(tiny_files.guide), str(tiny_files.encoder), device="cpu")


def _same_training(a, b) -> None:
    assert len(a.losses) == len(b.losses) == SETTINGS.updates
    assert torch.allclose(torch.tensor(a.losses), torch.tensor(b.losses), rtol=0, atol=TOLERANCE)
    assert torch.allclose(torch.tensor(a.validations), torch.tensor(b.validations), rtol=0, atol=TOLERANCE)
    assert a.best_step == b.best_step and a.best_loss == pytest.approx(b.best_loss, abs=TOLERANCE)
    theirs = b.encoder.state_dict()
    for key, value in a.encoder.state_dict().items():  # BatchNorm's running statistics included
        assert torch.allclose(theirs[key].float(), value.float(), rtol=0, atol=TOLERANCE), key


@pytest.mark.slow
def test_one_worker_is_the_single_process_run(local_ray, encoder, generator, guide, data, sources, models, tmp_path):
    from essence.scale import run_encoder_training

    single = train_encoder(encoder, generator, guide, data, sources, SETTINGS)
    out, crashed = tmp_path / "enc.safetensors", tmp_path / "crashed-once"
    asked = []

    def crash_once() -> bool:  # in the worker, asked before each step: a crash before step 1, the first time
        asked.append(1)
        if len(asked) > 1 and not crashed.exists():
            crashed.touch()
            raise RuntimeError("a worker crash, injected")
        return False

    file, distributed = run_encoder_training(out, data, sources, SETTINGS, models, workers=1, cpus_per_worker=1,
                                             max_failures=1, should_stop=crash_once)
    assert crashed.exists() and distributed.resumed_from == 1  # restarted from step 0's checkpoint
    _same_training(single, distributed)
    assert distributed.run == single.run  # one worker records no worker count: it is the single-process run
    best = single.best_encoder().state_dict()
    for key, value in load_essence_encoder(out, generator).model.state_dict().items():
        assert torch.allclose(value.float(), best[key].float(), rtol=0, atol=TOLERANCE), key
    assert "workers" not in file.meta


@pytest.fixture(scope="module")
def two_workers(tiny_files, data, sources):
    """The uninterrupted two-worker run, on torch's own DDP launcher."""
    return ddp_training(tiny_files, data, sources, SETTINGS, workers=2)


def _ctrl_c_before_step_1(driver: int, stop_file: Path):
    """``should_stop`` for every worker (a closure: Ray's workers cannot import this module): rank 0,
    before step 1 (after step 0's checkpoint), sends Ctrl-C (SIGINT) to the driver, this test's
    process, and votes to stop once the driver has asked the workers to."""
    asked = []

    def ctrl_c() -> bool:
        import ray.train

        asked.append(1)
        if len(asked) != 2 or ray.train.get_context().get_world_rank() != 0:
            return False
        os.kill(driver, signal.SIGINT)
        deadline = time.monotonic() + 120
        while not stop_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return stop_file.exists()

    return ctrl_c


@pytest.mark.slow
def test_two_workers_interrupted_by_ctrl_c_resume_and_end_where_an_uninterrupted_run_ends(
        local_ray, two_workers, generator, data, sources, models, ctrl_c_raises, tmp_path):
    from essence.scale import run_encoder_training
    from essence.scale.encoder_train import PROGRESS_FILE, STOP_FILE

    out, folder = tmp_path / "enc.safetensors", tmp_path / "enc.checkpoints"
    shown = []
    with pytest.raises(KeyboardInterrupt):
        run_encoder_training(out, data, sources, SETTINGS, models, workers=2, cpus_per_worker=1,
                             should_stop=_ctrl_c_before_step_1(os.getpid(), folder / STOP_FILE), progress=shown.append)
    assert not out.exists()  # the file appears only when training is complete
    assert (folder / DISTRIBUTED_RUN).is_dir()
    assert not (folder / STOP_FILE).exists() and not (folder / PROGRESS_FILE).exists()
    assert [(p.done, p.updates) for p in shown] == [(1, 2)]  # step 0's progress reached this process
    assert shown[0].validation is not None and shown[0].essences is None

    file, resumed = run_encoder_training(out, data, sources, SETTINGS, models, workers=2, cpus_per_worker=1)
    assert resumed.resumed_from == 1
    _same_training(two_workers, resumed)
    saved = load_essence_encoder(out, generator).model.state_dict()
    assert saved.keys() == two_workers.best_state.keys()
    for key, value in two_workers.best_state.items():
        assert torch.allclose(saved[key].float(), value.float(), rtol=0, atol=TOLERANCE), key
    assert file.meta["workers"] == 2 and file.meta["effective_batch"] == 2 and resumed.run["workers"] == 2


@pytest.mark.slow
def test_two_workers_share_each_step_s_pictures(two_workers, encoder, generator, guide, data, sources):
    """Step 0 of two workers: each takes its row of ``step_batch``'s two pictures, normalises with its
    own statistics (BatchNorm in train mode) and the recorded losses are the two workers' mean."""
    import copy

    from essence.encoding import generated_features, objective, step_batch, target_features

    pictures = step_batch(data, 0, 2, SETTINGS.shuffle, SETTINGS.flip, SETTINGS.seed)
    model = copy.deepcopy(encoder).train()
    embed = generated_features(generator, guide)
    with torch.no_grad():
        features = embed(sources)
        each = [torch.stack(list(objective(model(image[None]), sources, features,
                                           target_features(image[None], generator.size, guide), embed,
                                           SETTINGS.lambda_consistency, SETTINGS.lambda_reg)))
                for image in pictures]
    # computed in another order than the worker's (which differentiates): the consistency term, a
    # normalised difference of features, rounds apart by up to 1.1e-5 on an AVX-512 CPU
    torch.testing.assert_close(torch.tensor(two_workers.losses[0]), torch.stack(each).mean(0), rtol=0, atol=1e-4)


def test_a_run_on_two_workers_is_another_run_than_one(encoder, generator, guide, data, sources):
    """A checkpoint of two workers (two pictures a step) resumes only a run on two workers; one worker
    records what the single process records: it is that run."""
    from essence.encoding import run_record

    one = run_record(encoder, generator, guide, data, sources, SETTINGS)
    assert run_record(encoder, generator, guide, data, sources, SETTINGS, workers=1) == one
    assert run_record(encoder, generator, guide, data, sources, SETTINGS, workers=2) == {"workers": 2, **one}


def test_a_checkpoint_folder_holds_one_kind_of_run(tmp_path):
    folder = tmp_path / "enc.checkpoints"
    (folder / DISTRIBUTED_RUN).mkdir(parents=True)
    with pytest.raises(EssenceError, match="several workers"):
        check_encoder_outputs(tmp_path / "enc.safetensors", None, [])
    assert check_encoder_outputs(tmp_path / "enc.safetensors", None, [], distributed=True) == folder
    single = tmp_path / "single"
    save_checkpoint(single, TrainingState(1, {}, {"state": {}, "param_groups": []}, {}))
    with pytest.raises(EssenceError, match="one process"):
        check_encoder_outputs(tmp_path / "enc.safetensors", single, [], distributed=True)
    assert check_encoder_outputs(tmp_path / "enc.safetensors", single, []) == single


def _cli_args(tiny_files, tmp_path, *extra: str) -> list[str]:
    folder = tmp_path / "pictures"
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(("astronaut", "chelsea", "coffee")):
        sample_picture(name).save(folder / f"{i:02d}_{name}.png")
    return ["train-encoder", "--pictures", str(folder), "--heldout", "1", "--max-steps", "1",
            "--out", str(tmp_path / "enc.safetensors"), *tiny_files.cli, *extra]


def test_the_command_refuses_a_cluster_without_workers_and_a_folder_of_the_other_kind(tiny_files, tmp_path,
                                                                                       capsys):
    from essence import cli

    assert cli.main(_cli_args(tiny_files, tmp_path, "--address", "127.0.0.1:1")) == 2
    assert "--workers" in capsys.readouterr().err
    save_checkpoint(tmp_path / "enc.checkpoints", TrainingState(1, {}, {"state": {}, "param_groups": []}, {}))
    assert cli.main(_cli_args(tiny_files, tmp_path, "--workers", "2")) == 2
    assert "one process" in capsys.readouterr().err
    assert not (tmp_path / "enc.checkpoints" / DISTRIBUTED_RUN).exists()
