"""An experiment, not a part of Essence: does STIT's stitching tuning lower the seam of the face paste?

    python -m bench.stitching PHOTO [--directions 4] [--steps 100] [--fixtures tests/fixtures]

STIT (``edit_video_stitching_tuning.py``) tunes the generator once more for each edited frame: 100
Adam steps at 3e-4 so that the edited image matches the original crop in a band around the mask's
edge, and the untuned edit (weight 0.01) inside it. Here the photo is inverted and tuned with PTI
(tiny fixture models, random AlexNet), a few random directions are applied, and each edit is pasted
back with the face mask with and without stitching tuning. Printed: the seam measure
(``essence.training.seam_energy``) of both pastes and how far the tuning moved the edit inside the
face (mean squared change in [-1, 1] units) beside how far the edit itself moved it: stitching
tuning must keep the edit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import essence
from essence.faces import face_region, load_photos, model_to_pil, paste_back, paste_mask, pil_to_model, realign
from essence.latents import pivotal_tuning
from essence.networks import synthesize_with
from essence.training import seam_energy

from .tuning import models

BAND_REACH = 0.05  # the band reaches this share of the crop outside the face's outline (STIT: 50 of 1024 px)
CONTENT = 0.98  # blend weights above this are the face's inside, where the edit must stay
CONTENT_WEIGHT = 0.01  # STIT's content_loss_lambda
FEATHER = 0.1


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((a - b).square() * mask).sum() / (mask.sum() * a.shape[1])


def stitch(generator, tuned_parameters, latent, original, edited, border, content, steps: int) -> torch.Tensor:
    """The edit drawn by a copy of the tuned weights tuned once more: STIT's ``optimize_border``."""
    with torch.inference_mode(False), torch.enable_grad():
        parameters = {name: value.detach().clone().requires_grad_(True) for name, value in tuned_parameters.items()}
        optimizer = torch.optim.Adam(parameters.values(), lr=3e-4)
        for _ in range(steps):
            image = synthesize_with(generator, parameters, latent, noise="fixed")
            loss = masked_mse(image, original, border) + CONTENT_WEIGHT * masked_mse(image, edited, content)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return synthesize_with(generator, parameters, latent, noise="fixed").clamp(-1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo")
    parser.add_argument("--directions", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100, help="stitching steps (STIT's num_steps: 100)")
    parser.add_argument("--fixtures", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "fixtures")
    args = parser.parse_args()
    torch.manual_seed(0)
    generator, perceptual = models(torch.device("cpu"), args.fixtures)
    encoder = essence.load_encoder(args.fixtures / "e4e_tiny64.pt", cache=False)
    photo = load_photos(args.photo)[0]
    inversion = essence.invert(photo, encoder, generator=generator, tuning=pivotal_tuning(perceptual=perceptual),
                               use_cache=False)
    face, tuned = inversion.faces[0], inversion.tuned_rows()[0]
    transform, size = face.transform, generator.size
    original = pil_to_model([realign(photo, face, size).crop])
    weights = face_region(transform.landmarks, transform.crop_size, FEATHER, resolution=size)
    reach = max(1, round(BAND_REACH * size))
    near = F.max_pool2d((weights > 0).float()[None, None], 2 * reach + 1, stride=1, padding=reach)[0, 0]
    border = ((weights < CONTENT) & (near > 0)).float()[None, None]
    content = (weights >= CONTENT).float()[None, None]
    blend = paste_mask(transform, FEATHER, "face")
    picture = photo.image
    unedited = essence.render(generator, inversion.latents, tuned=tuned)
    print(f"{Path(args.photo).name}: face mask, feather {FEATHER}, {args.steps} stitching steps")
    for seed in range(args.directions):
        noise = torch.randn(1, generator.n_latent, generator.style_dim, generator=torch.Generator().manual_seed(seed))
        latent = inversion.latents + noise * 0.5
        edited = essence.render(generator, latent, tuned=tuned)
        stitched = stitch(generator, tuned.parameters_for(generator), latent, original, edited, border, content,
                          args.steps)
        seams = [seam_energy(picture, paste_back(picture, model_to_pil(image)[0], transform, FEATHER, "face"), blend)
                 for image in (edited, stitched)]
        print(f"  direction {seed}: seam {seams[0]:.3f} -> {seams[1]:.3f} with stitching tuning; inside the face "
              f"the edit changed the face by {float(masked_mse(edited, unedited, content)):.3f} and stitching "
              f"tuning moved it by {float(masked_mse(stitched, edited, content)):.3f}")


if __name__ == "__main__":
    main()
