"""Several candidates per target: trained together exactly as alone, started and chosen as documented."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import essence
from essence.networks import IdentityConfig, build_identity
from essence.training import strength_curve
from essence.training import EssenceJob, Selection, TrainingTarget, TrainSettings, train
from essence.training.candidates import (BELOW_THRESHOLD, HELDOUT_SEED, SELECTION_STRENGTHS, candidate_starts,
                                         choose_candidate, heldout_faces, metric_method, metric_scorer,
                                         objective_scorer)
from essence.training.loop import random_initial_direction, training_memory

STEPS = 12


@pytest.fixture(scope="module")
def starts(models, trace):
    generator, _ = models
    return [start for start, _ in candidate_starts(3, generator, trace["init_direction"], seed=1)]


def assert_same_trajectory(batched: essence.training.TrainResult, alone: essence.training.TrainResult) -> None:
    """Per step, the loss terms agree to 1e-4 relative; so do the kept direction and the coefficients."""
    for name in ("losses", "transfer", "consistency"):
        b, a = torch.tensor(getattr(batched, name)), torch.tensor(getattr(alone, name))
        assert b.shape == a.shape == (STEPS,)
        assert ((b - a).abs() <= 1e-4 * a.abs() + 1e-7).all(), (name, b, a)
    assert batched.best_step == alone.best_step
    d_b, d_a = batched.direction.tensor, alone.direction.tensor
    assert ((d_b - d_a).norm() / d_a.norm()).item() < 1e-4
    assert torch.allclose(torch.tensor(batched.coefficients), torch.tensor(alone.coefficients), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"chunk_size": 3}, {"loop": "official", "chunk_size": 6}],
                         ids=["one-pass", "chunk3", "official-chunk6"])
def test_candidates_trained_together_follow_their_single_runs(models, trace, target, starts, options):
    generator, guide = models
    settings = TrainSettings(steps=STEPS, **options)
    batched = train(target, trace["sources"], generator, guide, EssenceJob(settings), start=starts, choose=None).results
    assert len(batched) == len(starts)
    for k, start in enumerate(starts):
        alone = train(target, trace["sources"], generator, guide, EssenceJob(settings), start=start).result
        assert_same_trajectory(batched[k], alone)
        assert batched[k].direction.meta["candidate"] == k and batched[k].direction.meta["candidates"] == 3
    # the candidates really differ: each followed its own start
    assert len({round(r.losses[-1], 6) for r in batched}) == len(starts)


def test_one_candidate_is_train_direction_with_unchanged_metadata(models, trace, target):
    generator, guide = models
    settings = TrainSettings(steps=3)
    [batched] = train(target, trace["sources"], generator, guide, EssenceJob(settings), start=["random"]).results
    alone = train(target, trace["sources"], generator, guide, EssenceJob(settings), start="random").result
    assert batched.losses == alone.losses
    assert torch.equal(batched.direction.tensor, alone.direction.tensor)
    assert "candidate" not in batched.direction.meta and batched.direction.meta["init"] == "random"


def test_progress_reports_the_leading_candidate(models, trace, target, starts):
    generator, guide = models
    seen = []
    results = train(target, trace["sources"], generator, guide, EssenceJob(TrainSettings(steps=4, progress_every=2)),
                    start=starts, choose=None, progress=seen.append).results
    assert [p.step for p in seen] == [2, 4]
    lead = min(range(len(results)), key=lambda k: results[k].best_loss)
    assert seen[-1].candidate == lead
    assert seen[-1].best_loss == pytest.approx(results[lead].best_loss)
    assert seen[-1].direction.shape == starts[0].shape


@pytest.mark.slow
def test_candidates_that_run_out_of_memory_get_the_chunked_results(models, trace, target, starts, monkeypatch):
    from essence.networks import StyleGAN2Generator

    generator, guide = models
    expected = train(target, trace["sources"], generator, guide, EssenceJob(TrainSettings(steps=3, chunk_size=3)),
                     start=starts, choose=None).results
    synthesize = StyleGAN2Generator.synthesize

    def limited(self, latent, *args, **kwargs):
        if latent.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return synthesize(self, latent, *args, **kwargs)

    monkeypatch.setattr(StyleGAN2Generator, "synthesize", limited)
    retries = []
    results = essence.train(
        target, trace["sources"], generator, guide, EssenceJob(TrainSettings(steps=3)), start=starts, choose=None,
        on_retry=retries.append, release=lambda: None).results
    assert retries == [6, 3]  # 12 faces per pass, then 6 (whole candidates: 4), then 3
    for got, want in zip(results, expected):
        assert got.losses == want.losses
        assert torch.equal(got.direction.tensor, want.direction.tensor)
    with pytest.raises(essence.errors.DeviceMemoryError, match=r"3 candidates x 4 source faces, 12 rendered per pass"):
        train(target, trace["sources"], generator, guide, EssenceJob(TrainSettings(steps=1)), start=starts, choose=None,
              fit_memory=False)


def test_training_memory_counts_every_candidates_faces(models):
    generator, _ = models
    one = training_memory(generator, 4, TrainSettings())
    assert training_memory(generator, 4, TrainSettings(), candidates=3) == pytest.approx(3 * one, rel=1e-6)
    assert training_memory(generator, 4, TrainSettings(chunk_size=4), candidates=3) == one


def test_starts_are_the_inversion_then_perturbations_and_random_latents(models, trace):
    generator, _ = models
    inversion = trace["init_direction"]
    starts = candidate_starts(4, generator, inversion, seed=7, perturbation=0.5)
    notes = [note for _, note in starts]
    assert notes == ["e4e inversion of the target", "e4e inversion + 0.5 x random offset (seed 8)",
                     "random (seed 9)", "e4e inversion + 0.5 x random offset (seed 10)"]
    assert torch.equal(starts[0][0], inversion)
    offset = random_initial_direction(generator, 8) - generator.latent_avg
    assert torch.allclose(starts[1][0], inversion + 0.5 * offset)
    assert torch.equal(starts[2][0], random_initial_direction(generator, 9))
    # without an inversion: the seeded random starts, the first being train_direction's "random"
    randoms = candidate_starts(2, generator, seed=3)
    assert torch.equal(randoms[0][0], random_initial_direction(generator, 3))
    assert [note for _, note in randoms] == ["random (seed 3)", "random (seed 4)"]
    with pytest.raises(essence.EssenceError, match="at least 1"):
        candidate_starts(0, generator)


def test_the_proxy_score_is_minus_the_training_objective_on_held_out_faces(models, trace, target):
    generator, guide = models
    faces = heldout_faces(generator, 3)
    assert torch.equal(faces, generator.sample_wplus(3, seed=HELDOUT_SEED, truncation=0.7))
    direction = essence.Direction(trace["init_direction"])
    score = objective_scorer(generator, guide, TrainingTarget.read(target), faces)(direction)
    # the pre-step loss of a run on those faces is the objective with every coefficient 1
    first = train(target, faces, generator, guide, EssenceJob(TrainSettings(steps=1)), start=direction.tensor).result
    assert score == pytest.approx(-first.losses[0], rel=1e-5)


def test_the_best_scoring_candidate_is_chosen_and_every_candidate_records_the_choice(models, trace, target):
    generator, guide = models
    starts = candidate_starts(3, generator, trace["init_direction"], seed=1)
    trained = train(target, trace["sources"], generator, guide, EssenceJob(TrainSettings(steps=2)), start=starts)
    choice = trained.choice
    assert sorted(choice.ranking) == [0, 1, 2]
    assert choice.scores[choice.ranking[0]] == max(choice.scores)
    best = trained.direction.meta["selection"]
    assert best["rank"] == 1 and best["candidate"] == choice.ranking[0] == best["chosen"]
    assert best["scores"] == [pytest.approx(s, abs=1e-6) for s in choice.scores]
    assert best["method"] == metric_method(None) and "CLIP proxy" in best["method"]
    assert best["starts"] == [note for _, note in starts] and trained.start == starts[choice.chosen][1]
    assert sorted(d.meta["selection"]["rank"] for d in trained.candidates) == [1, 2, 3]
    assert trained.direction is trained.candidates[choice.chosen] is trained.result.direction
    # the chosen one carries its metrics and its recommended strength, ready for --strength auto
    assert best["metrics"]["basis"] == "clip-proxy" and best["metrics"]["summary"]["target_similarity"]
    assert trained.direction.auto_strength == best["metrics"]["strength"] in SELECTION_STRENGTHS
    assert trained.direction.meta["auto_strength"]["basis"] == "clip-proxy"


def test_one_job_with_candidates_starts_from_the_start_and_its_training_starts(models, trace, target):
    generator, guide = models
    job = EssenceJob(TrainSettings(steps=1, seed=4), candidates=3, name="x")
    trained = train(target, trace["sources"], generator, guide, job, start=(trace["init_direction"], "mine"),
                    choose=Selection(lambda d: -d.tensor.norm().item(), "smallest"))
    notes = [note for _, note in candidate_starts(3, generator, trace["init_direction"], seed=4)]
    assert trained.candidates[0].meta["selection"]["starts"] == notes
    assert all(d.meta["name"] == "x" and d.meta["candidates"] == 3 for d in trained.candidates)
    assert len(trained.report()) > 3 and "<- chosen" in "\n".join(trained.report())
    with pytest.raises(essence.EssenceError, match="2 starts were given for 3 candidates"):
        train(target, trace["sources"], generator, guide, job, start=["random", "random"])


def test_a_target_known_by_its_embedding_is_ranked_by_the_objective(models, trace, trace_target):
    generator, guide = models
    target = TrainingTarget.from_embedding(trace_target)
    trained = train(target, trace["sources"], generator, guide, EssenceJob(TrainSettings(steps=1)),
                    start=["random", trace["init_direction"]])
    assert trained.direction.meta["selection"]["method"].startswith("proxy: minus the training objective")
    assert trained.direction.thumbnail is None and trained.direction.meta["target"] == "a given CLIP embedding"


@pytest.fixture(scope="module")
def identity():
    torch.manual_seed(0)
    return build_identity(IdentityConfig.ir_se50(widths=(8, 16, 24, 32), embed_dim=32))


@pytest.mark.slow
def test_with_an_identity_model_the_best_target_similarity_that_keeps_identity_is_chosen(models, trace, identity,
                                                                                         pictures):
    generator, guide = models
    target = Image.open(pictures.portrait)  # a face, for the target identity
    starts = candidate_starts(3, generator, trace["init_direction"], seed=1)
    trained = train(target, trace["sources"], generator, guide, EssenceJob(TrainSettings(steps=2)), start=starts,
                    choose=Selection(identity=identity))
    choice = trained.choice
    faces = heldout_faces(generator)
    expected = []  # the documented rule, computed here from the metrics module
    for direction in trained.candidates:
        recommendation = strength_curve(direction, generator, guide, target, faces, SELECTION_STRENGTHS,
                                        identity).recommend()
        assert recommendation.basis == "identity" and recommendation.threshold == 50.0
        expected.append(recommendation.target_similarity if recommendation.met_threshold
                        else BELOW_THRESHOLD + recommendation.preservation)
    assert choice.scores == [pytest.approx(e, abs=1e-3) for e in expected]
    assert choice.ranking[0] == max(range(3), key=lambda i: (expected[i], -i))
    selection = trained.direction.meta["selection"]
    assert selection["method"] == metric_method(identity) and "ArcFace identity preservation" in selection["method"]
    metrics = selection["metrics"]
    assert metrics["basis"] == "identity" and metrics["summary"]["identity"]["mean"] is not None
    assert trained.direction.meta["auto_strength"]["basis"] == "identity"
    assert trained.direction.auto_strength == metrics["strength"]


@pytest.mark.slow
def test_candidates_that_lose_identity_everywhere_rank_below_and_by_preservation(models, trace, target, identity):
    generator, guide = models
    faces = heldout_faces(generator)
    scorer = metric_scorer(generator, guide, TrainingTarget.read(target), faces, identity, strengths=(0.5, 1.0),
                           min_identity=101.0)
    trained = train(target, trace["sources"], generator, guide, EssenceJob(TrainSettings(steps=1)),
                    start=["random", trace["init_direction"]], choose=Selection(scorer, "unreachable threshold"))
    choice = trained.choice
    preservation = [d.meta["auto_strength"]["preservation"] for d in trained.candidates]
    assert all(s < BELOW_THRESHOLD + 101 for s in choice.scores)
    assert choice.scores == [pytest.approx(BELOW_THRESHOLD + p, abs=1e-2) for p in preservation]
    assert choice.ranking[0] == max(range(2), key=lambda i: (preservation[i], -i))
    assert all(not d.meta["selection"]["metrics"]["met_threshold"] for d in trained.candidates)
    assert all(d.auto_strength == 0.5 for d in trained.candidates)  # the smallest strength tried


def test_a_custom_scorer_replaces_the_proxy_and_must_say_how_it_scores(models, trace, target):
    generator, guide = models
    trained = train(target, trace["sources"], generator, guide, EssenceJob(TrainSettings(steps=1)),
                    start=["random", trace["init_direction"]], choose=Selection(lambda d: -d.tensor.norm().item(),
                                                                                "smallest direction"))
    assert trained.direction.meta["selection"]["method"] == "smallest direction"
    assert trained.direction.tensor.norm() == min(d.tensor.norm() for d in trained.candidates)
    directions = trained.candidates
    nan_first = choose_candidate(directions, lambda d: float("nan") if d is directions[0] else 0.0, "x")
    assert nan_first.ranking == [1, 0] and nan_first.selection(0, ["a", "b"])["scores"][0] is None
    with pytest.raises(essence.EssenceError, match="custom scorer needs a method"):
        Selection(scorer=lambda d: 0.0)


@pytest.mark.slow
def test_cli_trains_candidates_writes_the_best_and_with_keep_all_every_one(tiny_files, pictures, tmp_path, capsys):
    from essence import cli

    out = tmp_path / "a.safetensors"
    models = tiny_files.cli
    code = cli.main(["train", str(pictures.portrait), "--out", str(out), "--steps", "2", "--sample", "2",
                     "--candidates", "3", "--keep-all", *models])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    best = essence.load_direction(out)
    selection = best.meta["selection"]
    assert selection["rank"] == 1 and len(selection["scores"]) == 3
    assert selection["starts"][0] == "e4e inversion of the target" and best.meta["name"] == "portrait"
    assert "chosen" in stdout and "no identity model" in stdout
    assert best.auto_strength == selection["metrics"]["strength"] and "Recommended strength" in stdout
    kept = [essence.load_direction(tmp_path / f"a.cand{i}.safetensors") for i in range(3)]
    assert [d.meta["selection"]["candidate"] for d in kept] == [0, 1, 2]
    assert torch.equal(kept[selection["candidate"]].tensor, best.tensor)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.cand0.safetensors", "a.cand1.safetensors",
                                                          "a.cand2.safetensors", "a.safetensors"]
    assert cli.main(["train", str(pictures.portrait), "--out", str(out), "--keep-all", *models]) == 2
    assert "--keep-all writes every candidate" in capsys.readouterr().err
    assert cli.main(["train", str(pictures.portrait), "--out", str(out), "--identity", "x.pth", *models]) == 2
    assert "--identity ranks candidates" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_ranks_candidates_by_arcface_identity_with_identity(tiny_files, pictures, tmp_path, identity):
    from essence import cli

    weights = tmp_path / "model_ir_se50.pth"
    torch.save(identity.state_dict(), weights)
    out = tmp_path / "a.safetensors"
    code = cli.main(["train", str(pictures.portrait), "--out", str(out), "--steps", "1", "--sample", "2",
                     "--candidates", "2", "--identity", str(weights), *tiny_files.cli])
    assert code == 0
    best = essence.load_direction(out)
    assert "ArcFace identity preservation" in best.meta["selection"]["method"]
    assert best.meta["auto_strength"]["basis"] == "identity" and best.auto_strength in SELECTION_STRENGTHS
