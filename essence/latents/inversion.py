"""Inversion: photos -> FFHQ-aligned faces -> e4e -> W+ latents.

``invert`` does what TargetCLIP's notebook does for each photo (dlib + FFHQ alignment at 256 px,
``ToTensor`` + ``Normalize(0.5, 0.5)``, e4e, plus e4e's ``latent_avg``), for many photos at once:
faces are encoded in batches, and every result is kept in a small in-memory cache keyed by the
photo's content (pixel sha256), the encoder's weights and the alignment recipe, so inverting the
same photo again (the same file, or the same pixels from ComfyUI) costs a hash, not a network pass.

With ``tuning`` (a ``PivotalTuning``) the generator is then tuned to each face (pivotal tuning,
``latents.tuning``): e4e's latent stays the face's pivot, and the generator learns to draw the photo's
own crop from it. The tuned weights travel with the latents (``LatentSet.tuned``) and are not cached:
each is a copy of the generator's synthesis weights. ``invert_clip`` is the same for a clip's frames,
cropped along the clip's track: one generator tuned to them all, around the latents its edit reuses.
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from PIL import Image

from ..errors import FaceIndexError, FaceNotFoundError
from ..faces import (RECIPE, AlignedFace, FaceLandmarker, ImageSource, Photo, align_faces, landmarker_from,
                     load_photos, nothing_found, pil_to_model, pil_to_pixels, realign)
from ..networks import INPUT_SIZE, E4EEncoder, StyleGAN2Generator, TunedWeights, encoder_from, generator_from, render
from .latent_set import LatentSet, generator_info
from .tuning import PivotalTuning, TuningSettings, tune_generator

PathLike = str | os.PathLike
CACHE_SIZE = 256  # photos; a W+ latent is 36 kB, a 256 px crop 200 kB
REFINEMENTS = ("none", "pti")  # the front ends' choice after e4e: nothing, or pivotal tuning (``PivotalTuning``)


@dataclass
class Inversion:
    """What ``invert`` found: one row per face.

    ``latents`` [N, n_latent, D] (CPU, float32); ``faces`` the aligned 256 px crops with their
    crop-to-photo transforms; ``sources`` the provenance of each row (for latent files);
    ``reconstructions`` G(latents) [N, 3, S, S] in about [-1, 1] when asked for; ``failures`` the
    photos skipped for having no face (only with ``skip_missing=True``); ``cache_hits`` how many
    photos came from the cache. ``tunings``: with pivotal tuning, the generator weights tuned to each
    face (or to a clip), under the key its source names (``source["tuned"]``).
    """

    latents: torch.Tensor
    faces: list[AlignedFace]
    sources: list[dict[str, Any]]
    reconstructions: torch.Tensor | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    cache_hits: int = 0
    encoder_fingerprint: str = ""
    tunings: dict[str, TunedWeights] = field(default_factory=dict)

    def tuned_rows(self) -> list[TunedWeights | None] | None:
        """Each row's tuned weights, for ``render(..., tuned=)``; None without pivotal tuning."""
        return self.latent_set().tuned_rows() if self.tunings else None

    @property
    def crops(self) -> list[Image.Image]:
        return [face.crop for face in self.faces]

    def latent_set(self, generator: Any = None, encoder_name: str | None = None) -> LatentSet:
        """These latents as a ``LatentSet`` (ready for ``save``), recording the encoder and, when
        given, the generator they will be decoded with."""
        meta: dict[str, Any] = {"encoder": {"fingerprint": self.encoder_fingerprint}}
        if encoder_name:
            meta["encoder"]["name"] = encoder_name
        if generator is not None:
            meta["generator"] = generator_info(generator)
            meta["latent_space"] = {"n_latent": generator.n_latent, "style_dim": generator.style_dim,
                                    "resolution": generator.size}
        latent_set = LatentSet(self.latents, [dict(s) for s in self.sources], meta, dict(self.tunings))
        if generator is not None:
            latent_set.check_fits(generator, "the inverted latents")
        return latent_set


def invert(photos: ImageSource | Sequence[ImageSource], encoder: E4EEncoder | PathLike | None = None, *,
           landmarks: FaceLandmarker | PathLike | None = None, batch_size: int = 4,
           return_reconstruction: bool = False, generator: StyleGAN2Generator | PathLike | None = None,
           all_faces: bool = False, face_index: int = 0, skip_missing: bool = False, use_cache: bool = True,
           progress: Callable[[int, int], None] | None = None, tuning: PivotalTuning | None = None) -> Inversion:
    """Align and e4e-encode ``photos`` (paths, PIL images, arrays, ComfyUI [B, H, W, C] tensors or a
    list of them) into W+ latents, one row per face: face number ``face_index`` of each photo (0 = the
    largest, the default; only that face is aligned and encoded), or every face with ``all_faces``.

    ``encoder``: a loaded ``E4EEncoder`` or its file (default: looked up); ``landmarks``: a loaded
    ``FaceLandmarker`` or the dlib predictor file. A photo without a face raises
    ``FaceNotFoundError`` naming it, or is listed in ``failures`` with ``skip_missing=True`` (but
    when no photo has a face there is nothing to invert, which raises too); a photo with faces, but
    fewer than ``face_index`` asks for, raises ``FaceIndexError`` either way.
    ``return_reconstruction`` also decodes the latents with ``generator`` (a generator or a file;
    default: the encoder file's own decoder when the encoder was given as a file, else looked up).
    Each row's source records ``photo_index``, the photo's place in ``photos`` (a batch tensor
    counts one per image). ``progress(done, total)`` hears each photo aligned; it may raise to stop
    (ComfyUI's Cancel does).

    ``tuning`` (``pivotal_tuning()``: PTI's published settings) tunes ``generator`` (as for the
    reconstruction) to each face, PTI's way; its ``progress`` hears every step of every face.
    """
    model = encoder_from(encoder)
    landmarker = landmarker_from(landmarks)
    fingerprint = encoder_fingerprint(model)
    rows: list[tuple[AlignedFace, torch.Tensor | None, dict[str, Any]]] = []
    failures: list[tuple[str, str]] = []
    hits = 0
    loaded = load_photos(photos)
    for index, photo in enumerate(loaded):
        key = (photo.sha256, fingerprint, RECIPE, str(landmarker.path), _which(all_faces, face_index))
        cached = _cache.get(key) if use_cache else None
        if cached is not None:
            hits += 1
            rows += [(face, latent, _source(face, index)) for face, latent in cached]
        else:
            try:
                faces = align_faces(photo, INPUT_SIZE, landmarks=landmarker, all_faces=all_faces,
                                    face_index=face_index)
            except FaceNotFoundError as exc:
                if isinstance(exc, FaceIndexError) or not skip_missing:
                    raise
                failures.append((photo.name, str(exc)))
                faces = []
            rows += [(face, None, _source(face, index)) for face in faces]
        if progress is not None:
            progress(index + 1, len(loaded))
    if not rows and loaded:
        raise FaceNotFoundError(nothing_found(len(loaded), "photo(s)", "invert"))
    _encode_missing(rows, model, batch_size)
    if use_cache:
        _remember(rows, fingerprint, str(landmarker.path), _which(all_faces, face_index))
    latents = torch.stack([latent for _, latent, _ in rows]) if rows else torch.empty(0, model.n_latent,
                                                                                    model.config.style_dim)
    result = Inversion(latents, [face for face, _, _ in rows], [source for _, _, source in rows],
                       failures=failures, cache_hits=hits, encoder_fingerprint=fingerprint)
    wants_decoder = rows and (tuning is not None or return_reconstruction)
    decoder = generator_from(generator, fallback_encoder=encoder) if wants_decoder else None
    if tuning is not None and rows:
        _tune_faces(result, loaded, decoder, tuning)
    if return_reconstruction and rows:
        result.reconstructions = render(decoder, latents, batch_size, what="reconstructions",
                                        tuned=result.tuned_rows())
    return result


def invert_clip(frames: Iterable[tuple[int, Photo, AlignedFace]], encoder: E4EEncoder | PathLike | None = None,
                generator: StyleGAN2Generator | PathLike | None = None, tuning: PivotalTuning | None = None, *,
                batch_size: int = 4) -> Inversion:
    """A clip's faces e4e-encoded once and, with ``tuning`` (``pivotal_tuning(clip=True)``: STIT's
    settings), one generator tuned to them all around those very latents, so that the clip stays one
    person and an edit of these frames reuses the latents instead of encoding the frames again.

    ``frames``: (frame number, the frame, its face aligned at 256 px at the clip's smoothed track,
    which ``invert`` cannot know), read once; a frame is kept only as its face cropped again at the
    generator's size (the tuning's target), so a caller that reads a file holds no whole frame. At
    most ``tuning.frames`` of the faces, spread over the clip, are tuned on: a caller reading a file
    passes only those (``PivotalTuning.picks``). ``generator``: a generator or its file, as for
    ``invert``. Each row's source records its frame number (``photo_index``) and names the tuned weights."""
    decoder = None if tuning is None else generator_from(generator, fallback_encoder=encoder)
    numbers, faces, targets = [], [], []
    for number, frame, face in frames:
        numbers.append(number)
        faces.append(face)
        if decoder is not None:
            targets.append(realign(frame, face, decoder.size).crop)
    inversion = invert_aligned(faces, encoder, batch_size=batch_size, photo_indices=numbers)
    if decoder is not None and faces:
        _tune_clip(inversion, targets, decoder, tuning)
    return inversion


def _tune_faces(inversion: Inversion, photos: Sequence[Photo], generator: StyleGAN2Generator,
                tuning: PivotalTuning) -> None:
    """PTI's way: the generator tuned to each face alone, against the face cropped again at the
    generator's size from its photo (``photo_index`` counts ``photos``); the same face given twice is
    tuned once, and its share of the progress still completes."""
    lpips = tuning.loaded(generator.latent_avg.device).perceptual
    steps = tuning.settings.steps
    total = steps * len(inversion.faces)
    for row, (face, source) in enumerate(zip(inversion.faces, inversion.sources)):
        key = f"{face.photo_sha256[:16]}-face{face.index}"
        source["tuned"] = key
        if key not in inversion.tunings:
            crop = realign(photos[source["photo_index"]], face, generator.size).crop
            heard = None if tuning.progress is None else (
                lambda step, _steps, done=row * steps: tuning.progress(done + step, total))
            tuned = _tuned(generator, inversion.latents[row:row + 1], [crop], lpips, tuning.settings, heard)
            tuned.info["source"] = {k: source[k] for k in ("name", "sha256", "face") if k in source}
            inversion.tunings[key] = tuned
        if tuning.progress is not None:
            tuning.progress((row + 1) * steps, total)


def _tune_clip(inversion: Inversion, targets: Sequence[Image.Image], generator: StyleGAN2Generator,
               tuning: PivotalTuning) -> None:
    """STIT's way: one generator tuned to the picked faces of a clip together, named by every row."""
    rows = tuning.picks(list(range(len(targets))))
    lpips = tuning.loaded(generator.latent_avg.device).perceptual
    tuned = _tuned(generator, inversion.latents[rows], [targets[row] for row in rows], lpips, tuning.settings,
                   tuning.progress)
    tuned.info.update(method="pivotal tuning over a clip (STIT)",
                      source={"frames": [inversion.sources[row]["photo_index"] for row in rows]})
    faces = "/".join(f"{face.photo_sha256[:16]}-face{face.index}" for face in inversion.faces)
    key = "clip-" + hashlib.sha256(faces.encode()).hexdigest()[:16]
    inversion.tunings[key] = tuned
    for source in inversion.sources:
        source["tuned"] = key


def _tuned(generator: StyleGAN2Generator, pivots: torch.Tensor, crops: Sequence[Image.Image], lpips: torch.nn.Module,
           settings: TuningSettings, progress: Callable[[int, int], None] | None) -> TunedWeights:
    """``tune_generator`` on aligned crops at the generator's size, kept as 8-bit pixels."""
    heard = None if progress is None else (lambda step, steps, _last: progress(step, steps))
    tuned, _ = tune_generator(generator, pivots, pil_to_pixels(crops), lpips, settings, progress=heard)
    return tuned


def invert_aligned(faces: Sequence[AlignedFace], encoder: E4EEncoder | PathLike | None = None, *,
                   batch_size: int = 4, photo_indices: Sequence[int] | None = None) -> Inversion:
    """e4e-encode faces that are already aligned at 256 px (e.g. video frames cropped at their
    smoothed quads, which ``invert`` cannot know), ``batch_size`` per forward pass; not cached.
    ``photo_indices`` gives each face's place in the caller's batch (default: 0, 1, 2, ...)."""
    model = encoder_from(encoder)
    indices = list(range(len(faces))) if photo_indices is None else list(photo_indices)
    if len(indices) != len(faces):
        raise ValueError(f"got {len(faces)} faces but {len(indices)} photo indices.")
    if faces:
        with torch.no_grad():
            latents = model.encode(pil_to_model([face.crop for face in faces]), batch_size=batch_size).float().cpu()
    else:
        latents = torch.empty(0, model.n_latent, model.config.style_dim)
    return Inversion(latents, list(faces), [_source(face, i) for face, i in zip(faces, indices)],
                     encoder_fingerprint=encoder_fingerprint(model))


def encoder_fingerprint(encoder: E4EEncoder) -> str:
    """A short hash of the encoder's ``latent_avg``, first and last layers, dtype and device: equal
    weights give equal fingerprints whichever object or file they were loaded from."""
    digest = hashlib.sha256()
    last = encoder.styles[-1].linear.weight
    first = encoder.input_layer[0].weight
    for tensor in (encoder.latent_avg, first, last):
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    digest.update(f"{first.dtype}/{first.device}".encode())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- internals


def _encode_missing(rows: list, model: E4EEncoder, batch_size: int) -> None:
    """Fill in the latents of rows that were not cached, ``batch_size`` faces per forward pass
    (a face that appears twice in one call, e.g. the same photo given twice, is encoded once)."""
    todo: dict[str, list[int]] = collections.defaultdict(list)
    for i, (face, latent, _) in enumerate(rows):
        if latent is None:
            todo[f"{face.photo_sha256}/{face.index}"].append(i)
    groups = list(todo.values())
    for start in range(0, len(groups), batch_size):
        chunk = groups[start:start + batch_size]
        batch = pil_to_model([rows[group[0]][0].crop for group in chunk])
        with torch.no_grad():
            codes = model.encode(batch, batch_size=batch_size).float().cpu()
        for group, code in zip(chunk, codes):
            for i in group:
                rows[i] = (rows[i][0], code, rows[i][2])


def _source(face: AlignedFace, photo_index: int) -> dict[str, Any]:
    return {"kind": "photo", "name": face.source, "sha256": face.file_sha256 or face.photo_sha256,
            "pixels_sha256": face.photo_sha256, "photo_index": photo_index, "face": face.index,
            "box": [round(v, 1) for v in face.box], "alignment": face.recipe}


def _which(all_faces: bool, face_index: int) -> str:
    """The faces of a photo an inversion holds, for its cache key."""
    return "all" if all_faces else f"face {face_index}"


def _remember(rows: list, fingerprint: str, landmarks: str, which: str) -> None:
    by_photo: dict[str, list] = collections.defaultdict(list)
    for face, latent, _ in rows:
        by_photo[face.photo_sha256].append((face, latent))
    for sha, entries in by_photo.items():
        _cache.put((sha, fingerprint, RECIPE, landmarks, which), entries)


class _LRUCache:
    """A thread-safe least-recently-used map (the only state this module keeps)."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Any:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: tuple, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


_cache = _LRUCache(CACHE_SIZE)


def clear_inversion_cache() -> None:
    """Forget every cached inversion."""
    _cache.clear()
