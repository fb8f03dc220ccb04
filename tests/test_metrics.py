"""Measuring directions (``essence.training.metrics``), the recommended strength, ``apply``'s ``auto`` strength,
``essence evaluate`` and the Essence Metrics node, with the tiny fixture models and a randomly
initialised (small) ArcFace network."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_stubs import comfy_env, extra_model_paths  # noqa: F401  (fixtures)
from PIL import Image

import essence
from essence import cli
from essence.faces import load_image, model_to_pil, pil_to_model
from essence.networks import IdentityConfig, build_identity, render
from essence.training import (DEFAULT_MIN_IDENTITY, DirectionMetrics, StrengthCurve, essence_losses, evaluate_direction,
                              metrics_table, parse_strengths, strength_curve)

ATOL = 1e-3  # scores are x100: 1e-5 in cosine


@pytest.fixture(scope="module")
def tiny(generator, guide, pictures):
    torch.manual_seed(0)
    identity = build_identity(IdentityConfig.ir_se50(widths=(8, 16, 24, 32), embed_dim=32))
    noise = torch.randn(1, generator.n_latent, generator.style_dim, generator=torch.Generator().manual_seed(1))
    direction = essence.Direction(noise * 0.3, {"name": "random essence"})
    faces = generator.sample_wplus(3, seed=7, truncation=0.7)
    target = load_image(pictures.portrait)  # a face, small: quick to align
    return generator, guide, identity, direction, faces, target


def clip_units(guide, images):
    embeddings = guide.embed_target(images).float()
    return embeddings / embeddings.norm(dim=-1, keepdim=True)


def test_strength_zero_scores_the_unedited_faces(tiny):
    generator, guide, identity, direction, faces, target = tiny
    result = evaluate_direction(direction, generator, guide, target, faces, strength=0.0, identity=identity)
    assert result.strength == 0 and result.faces == 3
    assert np.allclose(result.identity, 100, atol=ATOL) and np.allclose(result.source_similarity, 100, atol=ATOL)
    assert result.consistency is None  # nothing moved: no direction of movement to compare
    # target similarity: CLIP cosine x100 of the saved 8-bit face and the target, both through CLIP's preprocessing
    unedited = model_to_pil(render(generator, faces))
    expected = (clip_units(guide, unedited) @ clip_units(guide, target).t()).flatten() * 100
    assert np.allclose(result.target_similarity, expected.tolist(), atol=ATOL)
    assert result.mean("target_similarity") == pytest.approx(float(expected.mean()), abs=ATOL)
    assert result.std("target_similarity") == pytest.approx(float(expected.std(unbiased=False)), abs=ATOL)


def test_editing_costs_identity_and_consistency_is_the_training_term(tiny):
    generator, guide, identity, direction, faces, target = tiny
    result = evaluate_direction(direction, generator, guide, target, faces, strength=1.0, identity=identity)
    assert all(value < 100 - 1e-3 for value in result.identity)
    unedited = model_to_pil(render(generator, faces))
    edited = model_to_pil(render(generator, essence.apply_direction(faces, direction, 1.0)))
    _, consistency_loss = essence_losses(clip_units(guide, unedited), clip_units(guide, edited),
                                         clip_units(guide, target))
    assert result.mean("consistency") == pytest.approx(100 * (1 - float(consistency_loss)), abs=ATOL)
    expected_identity = (identity.embed(pil_to_model(edited)) * identity.embed(pil_to_model(unedited))).sum(-1) * 100
    assert np.allclose(result.identity, expected_identity.tolist(), atol=ATOL)


def test_official_protocol_differs_from_the_corrected_one_exactly_where_its_quirks_are(tiny):
    generator, guide, identity, direction, faces, target = tiny
    corrected = evaluate_direction(direction, generator, guide, target, faces, 0.8, identity, "corrected")
    official = evaluate_direction(direction, generator, guide, target, faces, 0.8, identity, "official")
    for metric in ("target_similarity", "source_similarity", "consistency"):
        assert np.allclose(corrected.values(metric), official.values(metric), atol=1e-6), metric
    # the quirk: the edited face reaches ArcFace in [0, 1], its source in [-1, 1]
    edited = pil_to_model(model_to_pil(render(generator, essence.apply_direction(faces, direction, 0.8))))
    source = pil_to_model(model_to_pil(render(generator, faces)))
    quirky = (identity.embed((edited + 1) / 2) * identity.embed(source)).sum(-1) * 100
    assert np.allclose(official.identity, quirky.tolist(), atol=ATOL)
    assert not np.allclose(official.identity, corrected.identity, atol=1.0)
    # even the unedited faces lose "identity" under the official protocol, not under the corrected one
    zero = evaluate_direction(direction, generator, guide, target, faces, 0.0, identity, "official")
    assert max(zero.identity) < 100 - 1e-2
    # the strength the paper used for new faces is the official default
    assert evaluate_direction(direction, generator, guide, target, faces[:2], protocol="official").strength == 1.2
    assert evaluate_direction(direction, generator, guide, target, faces[:2]).strength == 1.0


def test_only_the_official_protocol_compares_identity_with_the_source_photos(tiny):
    generator, guide, identity, direction, faces, target = tiny
    photos = [image.transpose(Image.Transpose.FLIP_TOP_BOTTOM) for image in model_to_pil(render(generator, faces))]
    corrected = evaluate_direction(direction, generator, guide, target, faces, 0.5, identity, "corrected")
    with_photos = evaluate_direction(direction, generator, guide, target, faces, 0.5, identity, "corrected",
                                     source_images=photos)
    assert np.allclose(corrected.identity, with_photos.identity, atol=1e-6)
    official = evaluate_direction(direction, generator, guide, target, faces, 0.5, identity, "official")
    official_photos = evaluate_direction(direction, generator, guide, target, faces, 0.5, identity, "official",
                                         source_images=photos)
    edited = pil_to_model(model_to_pil(render(generator, essence.apply_direction(faces, direction, 0.5))))
    expected = (identity.embed((edited + 1) / 2) * identity.embed(pil_to_model(photos))).sum(-1) * 100
    assert np.allclose(official_photos.identity, expected.tolist(), atol=ATOL)
    assert not np.allclose(official_photos.identity, official.identity, atol=1e-2)
    with pytest.raises(essence.errors.ShapeError, match="one photo per face"):
        evaluate_direction(direction, generator, guide, target, faces, 0.5, identity, source_images=photos[:1])


def test_target_identity_needs_a_face_in_the_target(tiny, pictures):
    generator, guide, identity, direction, faces, target = tiny
    with_face = evaluate_direction(direction, generator, guide, target, faces[:2], 1.0, identity)
    assert with_face.target_identity is not None and len(with_face.target_identity) == 2
    cat = evaluate_direction(direction, generator, guide, pictures.cat, faces[:2], 1.0, identity)
    assert cat.target_identity is None
    assert any("no face found in the target" in note for note in cat.notes)
    without = evaluate_direction(direction, generator, guide, target, faces[:2], 1.0)
    assert without.identity is None and without.target_identity is None
    assert any("no identity model" in note for note in without.notes)


@pytest.mark.slow
def test_curve_measures_each_strength_once_in_order_and_plots(tiny):
    generator, guide, identity, direction, faces, target = tiny
    curve = strength_curve(direction, generator, guide, target, faces, [1.0, 0, 0.5, 0.5], identity)
    assert curve.strengths == [0.0, 0.5, 1.0]
    single = evaluate_direction(direction, generator, guide, target, faces, 0.5, identity)
    assert np.allclose(curve.points[1].identity, single.identity, atol=1e-6)
    rec = curve.recommend()
    assert rec.basis == "identity" and rec.threshold == DEFAULT_MIN_IDENTITY
    plot = curve.plot(rec)
    assert plot.mode == "RGB" and plot.size == (700, 450)
    assert len({tuple(p) for p in np.asarray(plot).reshape(-1, 3)[::97].tolist()}) > 4  # something is drawn
    table = metrics_table([curve], [rec])
    assert "identity preservation" in table and f"recommended strength {rec.strength:g}" in table
    json.dumps(curve.to_dict())  # every number is JSON-able


def _point(strength: float, target: float, preserved: float, proxy: float = 99.0) -> DirectionMetrics:
    return DirectionMetrics(strength, "corrected", 2, target_similarity=[target, target],
                            source_similarity=[proxy, proxy], identity=[preserved - 1, preserved + 1])


def test_recommend_takes_the_best_target_similarity_that_keeps_identity():
    points = [_point(0, 50, 100), _point(0.5, 60, 80), _point(1.0, 70, 60), _point(1.25, 70, 55),
              _point(1.5, 80, 40)]
    curve = StrengthCurve("d", points, clip_baseline=80.0, has_identity=True)
    rec = curve.recommend()
    assert rec.strength == 1.0 and rec.met_threshold  # 1.5 is better but loses identity; the tie goes to 1.0
    assert rec.target_similarity == 70 and rec.preservation == 60 and rec.threshold == 50
    assert curve.recommend(min_identity=70).strength == 0.5
    none = curve.recommend(min_identity=95)
    assert none.strength == 0.5 and not none.met_threshold and "falls below" in none.note
    meta = rec.metadata()
    assert meta["value"] == 1.0 and meta["basis"] == "identity" and meta["threshold"] == 50


def test_without_identity_the_proxy_threshold_is_halfway_to_another_face():
    points = [_point(0, 50, 0, proxy=100), _point(0.5, 60, 0, proxy=95), _point(1.0, 70, 0, proxy=85)]
    curve = StrengthCurve("d", points, clip_baseline=80.0, has_identity=False)
    rec = curve.recommend()
    assert rec.basis == "clip-proxy" and rec.threshold == 90.0 and rec.strength == 0.5
    assert "proxy" in rec.note
    lone = StrengthCurve("d", points, clip_baseline=None, has_identity=False)
    with pytest.raises(essence.EssenceError, match="at least two faces"):
        lone.recommend()


def test_bad_strengths_and_protocols_are_refused(tiny):
    generator, guide, _, direction, faces, target = tiny
    assert parse_strengths("0, 0.5;1.2") == [0.0, 0.5, 1.2]
    with pytest.raises(essence.EssenceError, match="comma-separated"):
        parse_strengths("0,half")
    with pytest.raises(essence.EssenceError, match="protocol"):
        evaluate_direction(direction, generator, guide, target, faces, protocol="paper")


# ----------------------------------------------------------------------------- auto strength


def test_auto_strength_is_stored_in_the_file_and_old_files_fall_back_to_one(tiny, tmp_path, targetclip_files):
    direction = tiny[3]
    assert direction.auto_strength is None
    value, note = direction.resolve_strength("auto")
    assert value == 1.0 and "no recommended strength" in note
    assert direction.resolve_strength(0.7) == (0.7, None)
    recorded = direction.with_auto_strength({"value": 0.75, "basis": "identity"})
    assert direction.auto_strength is None  # a copy
    path = recorded.save(tmp_path / "d.safetensors")
    again = essence.load_direction(path)
    assert again.auto_strength == 0.75 and again.resolve_strength("AUTO") == (0.75, None)
    assert again.meta["name"] == "random essence"  # the rest of the metadata is kept
    official = essence.load_direction(targetclip_files["direction"])
    assert official.resolve_strength("auto")[0] == 1.0
    with pytest.raises(essence.EssenceError, match="number or 'auto'"):
        direction.resolve_strength("strong")


# ----------------------------------------------------------------------------- CLI


@pytest.fixture()
def identity_file(tmp_path) -> Path:
    torch.manual_seed(0)
    model = build_identity(IdentityConfig.ir_se50(widths=(8, 16, 24, 32), embed_dim=32))
    path = tmp_path / "model_ir_se50.pth"
    torch.save(model.state_dict(), path)
    return path


def test_cli_evaluate_prints_the_table_writes_json_plot_and_the_recommendation(tmp_path, tiny_files, pictures,
                                                                              identity_file, capsys):
    direction_file = tmp_path / "d.safetensors"
    noise = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(2))
    essence.Direction(noise * 0.3, {"name": "cli essence"}).save(direction_file)
    models = ["--generator", str(tiny_files.generator), "--guide", str(tiny_files.guide), "--device", "cpu"]
    code = cli.main(["evaluate", str(direction_file), "--target", str(pictures.portrait), "--sample", "3",
                     "--strengths", "0,0.5,1", "--identity", str(identity_file), "--json", str(tmp_path / "m.json"),
                     "--plot", str(tmp_path / "curve.png"), "--recommend", *models])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "identity preservation" in out and "target identity" in out and "consistency" in out
    assert len([line for line in out.splitlines() if line.startswith("cli essence ")]) == 3
    report = json.loads((tmp_path / "m.json").read_text())
    points = report["curves"][0]["points"]
    assert [p["strength"] for p in points] == [0.0, 0.5, 1.0] and len(points[0]["per_face"]["identity"]) == 3
    assert Image.open(tmp_path / "curve.png").size == (700, 450)
    recorded = essence.load_direction(direction_file)
    assert recorded.auto_strength == report["recommended"][0]["value"] in (0.5, 1.0)
    assert recorded.meta["auto_strength"]["basis"] == "identity"

    assert cli.main(["info", str(direction_file)]) == 0
    assert f"recommended strength (auto): {recorded.auto_strength:g}" in capsys.readouterr().out
    code = cli.main(["apply", str(direction_file), "--strength", "auto", "--sample", "1", "-o",
                     str(tmp_path / "a.png"), "--generator", str(tiny_files.generator)])
    out = capsys.readouterr().out
    assert code == 0 and f"Strength auto = {recorded.auto_strength:g}" in out


def test_cli_apply_auto_without_a_recommendation_uses_one_and_says_so(tmp_path, tiny_files, targetclip_files, capsys):
    code = cli.main(["apply", str(targetclip_files["direction"]), "--strength", "auto", "--sample", "1",
                     "-o", str(tmp_path / "a.png"), "--generator", str(tiny_files.generator)])
    # the official direction is for the 1024 px space: refused, but only after saying what auto means
    out, err = capsys.readouterr()
    assert "has no recommended strength; using 1" in err
    assert code == 2 and "latent space" in err


def test_cli_evaluate_refuses_to_record_into_an_npy(tmp_path, pictures, targetclip_files, capsys):
    code = cli.main(["evaluate", str(targetclip_files["direction"]), "--target", str(pictures.portrait),
                     "--recommend"])
    assert code == 2 and ".safetensors" in capsys.readouterr().err


# ----------------------------------------------------------------------------- nodes


def test_metrics_node_measures_records_the_strength_and_apply_uses_it(comfy_env, pictures, caplog):
    from test_nodes import sample, target_image

    torch.manual_seed(0)
    model = build_identity(IdentityConfig.ir_se50(widths=(8, 16, 24, 32), embed_dim=32))
    comfy_env.dir("essence_identity").mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), comfy_env.dir("essence_identity") / "model_ir_se50.pth")
    (generator,) = comfy_env.run("EssenceGeneratorLoader", generator_file="stylegan2_tiny64.pt")
    (guide,) = comfy_env.run("EssenceGuideLoader", clip_file="clip_tiny.pt")
    (identity,) = comfy_env.run("EssenceIdentityLoader", identity_file="model_ir_se50.pth")
    latents = sample(comfy_env, generator, count=3, seed=11)
    noise = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(3))
    direction = comfy_env.pack.essence.Direction(noise * 0.3, {"name": "node essence"})
    measured, report, data, plot = comfy_env.run(
        "EssenceMetrics", generator=generator, guide=guide, direction=direction, target=target_image(pictures),
        latents=latents, strengths="0,0.5,1", protocol="corrected", min_identity=50.0, identity=identity)
    numbers = json.loads(data)
    assert measured.auto_strength == numbers["recommended"]["value"] and direction.auto_strength is None
    assert "identity preservation" in report and "recommended strength" in report
    assert plot.shape == (1, 450, 700, 3) and plot.dtype == torch.float32 and 0 <= plot.min() <= plot.max() <= 1

    (edited,) = comfy_env.run("EssenceApply", latents=latents, direction=measured, strength=0.1, layers="all",
                              auto_strength=True)
    delta = edited.latents - latents.latents
    assert torch.allclose(delta, measured.auto_strength * measured.tensor.expand(3, -1, -1), atol=1e-5)
    assert edited.sources[0]["edits"][0]["strength_from"] == "recommended (auto)"
    with caplog.at_level(logging.WARNING):
        (fallback,) = comfy_env.run("EssenceApply", latents=latents, direction=direction, strength=0.1,
                                    layers="all", auto_strength=True)
    assert torch.allclose(fallback.latents - latents.latents, direction.tensor.expand(3, -1, -1), atol=1e-5)
    assert "no recommended strength; using 1" in caplog.text


def test_metrics_node_without_identity_uses_the_clip_proxy(comfy_env, pictures):
    from test_nodes import sample, target_image

    (generator,) = comfy_env.run("EssenceGeneratorLoader", generator_file="stylegan2_tiny64.pt")
    (guide,) = comfy_env.run("EssenceGuideLoader", clip_file="clip_tiny.pt")
    noise = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(3))
    direction = comfy_env.pack.essence.Direction(noise * 0.3, {"name": "proxy essence"})
    measured, report, data, _ = comfy_env.run(
        "EssenceMetrics", generator=generator, guide=guide, direction=direction, target=target_image(pictures),
        latents=sample(comfy_env, generator, count=2), strengths="0.5,1", protocol="official", min_identity=50.0)
    assert measured.meta["auto_strength"]["basis"] == "clip-proxy"
    assert "proxy" in report and "identity preservation" not in report
    assert json.loads(data)["protocol"] == "official"


def test_cli_official_protocol_adds_the_papers_row_over_directions(tmp_path, tiny_files, pictures, capsys):
    files = []
    for seed in (4, 5):
        noise = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(seed))
        files.append(str(essence.Direction(noise * 0.3, {"name": f"d{seed}"}).save(tmp_path / f"d{seed}.safetensors")))
    code = cli.main(["evaluate", *files, "--target", str(pictures.portrait), "--sample", "2", "--strengths",
                     "1.2", "--protocol", "official", "--generator", str(tiny_files.generator),
                     "--guide", str(tiny_files.guide), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "no identity model" in err and "CLIP proxy" in err
    rows = [line for line in out.splitlines() if line.startswith(("d4 ", "d5 "))]
    assert len(rows) == 2 and all(" 1.2 " in row for row in rows)
    assert "paper-style, over the 2 directions at strength 1.2 (std over directions)" in out
