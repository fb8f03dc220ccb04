"""Using directions: ``w + alpha * d`` at one strength or per layer, mixes, and strength sweeps.

Per-layer strengths matter because W+ rows control different scales: the first rows set pose and
face shape (coarse), the next ones features (middle), the rest colour and texture (fine). The
presets follow StyleGAN's usual split: for the 18-row FFHQ space, rows 0-3 coarse (4-8 px),
4-7 middle (16-32 px), 8-17 fine (64-1024 px); other spaces use the same first 4 / next 4 / rest.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from ..errors import EssenceError, IncompatibleLatentSpaceError, ShapeError, require_finite
from ..faces import load_image, model_to_pil, paste_back
from ..networks import DEFAULT_BATCH, TunedWeights, render
from .direction import Direction, direction_metadata
from .inversion import invert
from .latent_set import LatentSet
from .tuning import PivotalTuning

LAYER_PRESETS = ("all", "coarse", "middle", "fine", "coarse+middle", "middle+fine")
_BANDS = {"coarse": (0, 4), "middle": (4, 8), "fine": (8, None)}

Strength = float | Sequence[float] | torch.Tensor


def layer_mask(n_latent: int, preset: str = "all") -> torch.Tensor:
    """1.0 on the rows a preset covers, 0.0 elsewhere: [n_latent]."""
    if preset not in LAYER_PRESETS:
        raise EssenceError(f"unknown layer preset {preset!r}; choose one of {', '.join(LAYER_PRESETS)}.")
    mask = torch.zeros(n_latent)
    for band in (_BANDS if preset == "all" else preset.split("+")):
        start, stop = _BANDS[band]
        mask[start:stop] = 1.0
    return mask


def layer_strengths(n_latent: int, strength: Strength = 1.0, layers: str = "all") -> torch.Tensor:
    """Per-row strengths [n_latent]: a scalar spread over a preset's rows, or a full vector."""
    if isinstance(strength, (int, float)):
        require_finite(float(strength), "the strength")
        return float(strength) * layer_mask(n_latent, layers)
    vector = torch.as_tensor(strength, dtype=torch.float32).flatten()
    if vector.numel() != n_latent:
        raise ShapeError(f"per-layer strengths need one value per W+ row ({n_latent}), got {vector.numel()}.")
    require_finite(vector, "the per-layer strengths")
    return vector * layer_mask(n_latent, layers)


def apply_direction(wplus: torch.Tensor, direction: Direction | torch.Tensor, strength: Strength = 1.0,
                    layers: str = "all") -> torch.Tensor:
    """W+ [B, n, D] (or [n, D]) + per-row strength x direction [1, n, D] -> edited W+ of the same shape."""
    tensor = direction.tensor if isinstance(direction, Direction) else direction
    squeeze = wplus.ndim == 2
    batch = wplus[None] if squeeze else wplus
    if batch.ndim != 3 or batch.shape[1:] != tensor.shape[1:]:
        name = direction.name if isinstance(direction, Direction) else "the direction"
        raise IncompatibleLatentSpaceError(
            f"{name!r} is [1, {tensor.shape[1]}, {tensor.shape[2]}] but the latents are {list(wplus.shape)}; "
            f"they must share the W+ rows and width (e.g. [batch, 18, 512]).")
    require_finite(batch, "the latents", fix="Invert or sample those faces again.")
    if not isinstance(direction, Direction):  # a Direction is checked when it is made
        require_finite(tensor, "the direction")
    alpha = layer_strengths(tensor.shape[1], strength, layers).to(batch.device, batch.dtype)
    edited = batch + alpha[None, :, None] * tensor.to(batch.device, batch.dtype)
    return edited[0] if squeeze else edited


def edit_latents(latents: LatentSet, direction: Direction, strength: float | str = 1.0,
                 layers: str = "all") -> tuple[LatentSet, str | None]:
    """``apply_direction`` on a ``LatentSet``: the edited set, every row recording the edit (the
    direction's name, the strength used and whether it was the recommended one, the layers), and
    the note ``Direction.resolve_strength`` gives when ``"auto"`` found no recommended strength."""
    chosen, note = direction.resolve_strength(strength)
    edit: dict[str, Any] = {"direction": direction.name, "strength": chosen, "layers": layers}
    if isinstance(strength, str):
        edit["strength_from"] = "fallback (no recommended strength)" if note else "recommended (auto)"
    return latents.edited(apply_direction(latents.latents, direction, chosen, layers), edit), note


def mix_directions(directions: Sequence[Direction], weights: Sequence[float] | None = None,
                   name: str | None = None) -> Direction:
    """Weighted sum of directions from the same latent space (default weights: all 1)."""
    if not directions:
        raise EssenceError("mixing needs at least one direction.")
    weights = [1.0] * len(directions) if weights is None else [float(w) for w in weights]
    if len(weights) != len(directions):
        raise EssenceError(f"got {len(directions)} directions but {len(weights)} weights.")
    for direction, weight in zip(directions, weights):
        if not math.isfinite(weight):
            raise EssenceError(f"the mix weight of {direction.name!r} is {weight}; mix weights must be finite numbers.")
    first = directions[0]
    for other in directions[1:]:
        if other.tensor.shape != first.tensor.shape:
            raise IncompatibleLatentSpaceError(
                f"cannot mix {first.name!r} ({first.space.describe()}) with {other.name!r} "
                f"({other.space.describe()}): they live in different latent spaces.")
    mixed = sum(w * d.tensor for w, d in zip(weights, directions))
    parts = [{"name": d.name, "weight": w} for d, w in zip(directions, weights)]
    meta = direction_metadata(
        name=name or " + ".join(f"{w:g}*{d.name}" for d, w in zip(directions, weights)),
        source="mix", mix=parts, latent_space=first.meta.get("latent_space", {
            "n_latent": first.tensor.shape[1], "style_dim": first.tensor.shape[2]}),
    )
    for key in ("generator_fingerprint", "clip_model"):
        values = {d.meta.get(key) for d in directions}
        if len(values) == 1 and None not in values:
            meta[key] = values.pop()
    licences = sorted({d.meta["licence"] for d in directions if isinstance(d.meta.get("licence"), str)})
    if licences:  # a mix is derived from every part, so it keeps each part's terms
        meta["licence"] = " ".join(licences)
    return Direction(mixed, meta)


@torch.no_grad()
def strength_sweep(generator, wplus: torch.Tensor, direction: Direction, strengths: Sequence[float],
                   layers: str = "all", batch_size: int = DEFAULT_BATCH,
                   between_batches: Callable[[], None] | None = None,
                   tuned: Sequence[TunedWeights | None] | None = None) -> torch.Tensor:
    """Render every source at every strength: images [len(sources) * len(strengths), 3, S, S] float32 on
    the CPU, row-major (one row per source), in the generator's [-1, 1] range, rendered as ``render``
    does (``batch_size`` at a time, smaller on out-of-memory; ``between_batches`` before each).
    ``tuned``: each source's tuned weights (``LatentSet.tuned_rows()``), used at every strength."""
    direction.check_fits(generator)
    require_finite(list(strengths), "the strengths")
    wplus = generator.to_wplus(wplus.to(generator.latent_avg.device))
    edits = torch.cat([apply_direction(w[None], direction, s, layers) for w in wplus for s in strengths])
    per_edit = None if tuned is None else [weights for weights in tuned for _ in strengths]
    return render(generator, edits, batch_size, what="strength-sweep images", between_batches=between_batches,
                  tuned=per_edit)


@torch.no_grad()
def apply_to_photo(photo: Any, direction: Direction, generator, encoder, strength: float = 1.0, *,
                   landmarks: Any = None, layers: str = "all", all_faces: bool = True,
                   feather: float = 0.1, mask: str = "face", tuning: PivotalTuning | None = None) -> Image.Image:
    """The photo with its faces edited: each face aligned, inverted with e4e, moved by
    ``strength`` x ``direction``, rendered and pasted back (``paste_back``: along each face's
    outline with ``mask="face"``, the whole crop with ``"square"``; soft edge ``feather``).

    ``photo``: a path or any single image ``essence.faces.load_image`` takes; ``encoder`` an e4e encoder,
    ``landmarks`` the dlib model (or its file; default: looked up). Every face, or only the largest
    with ``all_faces=False``. A photo without a face raises ``FaceNotFoundError`` naming it.
    With ``tuning`` the generator is first tuned to each face (``invert``'s pivotal tuning), so that
    the edited face keeps the photo's likeness. Returns the full-size RGB photo.
    """
    direction.check_fits(generator)
    inversion = invert([photo], encoder, landmarks=landmarks, all_faces=all_faces, generator=generator,
                       tuning=tuning)
    edits = apply_direction(inversion.latents.to(generator.latent_avg.device), direction, strength, layers)
    result = load_image(photo)  # full size: the faces go back where they were found
    drawn = render(generator, edits, what="edited faces", tuned=inversion.tuned_rows())
    for face, image in zip(inversion.faces, model_to_pil(drawn)):
        result = paste_back(result, image, face.transform, feather, mask)
    return result


def image_grid(images: torch.Tensor, columns: int, padding: int = 2) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> one grid image [3, H', W'] in [0, 1] (torchvision's make_grid)."""
    from torchvision.utils import make_grid

    return make_grid(((images.float().clamp(-1, 1) + 1) / 2).cpu(), nrow=columns, padding=padding, pad_value=1.0)
