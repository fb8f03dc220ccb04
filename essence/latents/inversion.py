"""Inversion: photos -> FFHQ-aligned faces -> e4e -> W+ latents.

``invert`` does what TargetCLIP's notebook does for each photo (dlib + FFHQ alignment at 256 px,
``ToTensor`` + ``Normalize(0.5, 0.5)``, e4e, plus e4e's ``latent_avg``), for many photos at once:
faces are encoded in batches, and every result is kept in a small in-memory cache keyed by the
photo's content (pixel sha256), the encoder's weights and the alignment recipe, so inverting the
same photo again (the same file, or the same pixels from ComfyUI) costs a hash, not a network pass.

``refine="pti"`` then tunes the generator to each face (pivotal tuning, ``latents.tuning``): e4e's
latent stays the face's pivot, and the generator learns to draw the photo's own crop from it. The
tuned weights travel with the latents (``LatentSet.tuned``) and are not cached: each is a copy of
the generator's synthesis weights.
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from ..errors import EssenceError, FaceIndexError, FaceNotFoundError
from ..faces import (RECIPE, AlignedFace, FaceLandmarker, ImageSource, align_faces, load_landmarker, load_photos,
                     nothing_found, pil_to_model, pil_to_pixels, realign)
from ..networks import INPUT_SIZE, E4EEncoder, TunedWeights, load_encoder, load_generator, perceptual_network, render
from .latent_set import LatentSet, generator_info
from .tuning import PTI, TuningSettings, tune_generator

PathLike = str | os.PathLike
CACHE_SIZE = 256  # photos; a W+ latent is 36 kB, a 256 px crop 200 kB
REFINEMENTS = ("none", "pti")  # after e4e: nothing, or pivotal tuning of the generator to each face


@dataclass
class Inversion:
    """What ``invert`` found: one row per face.

    ``latents`` [N, n_latent, D] (CPU, float32); ``faces`` the aligned 256 px crops with their
    crop-to-photo transforms; ``sources`` the provenance of each row (for latent files);
    ``reconstructions`` G(latents) [N, 3, S, S] in about [-1, 1] when asked for; ``failures`` the
    photos skipped for having no face (only with ``skip_missing=True``); ``cache_hits`` how many
    photos came from the cache. ``tunings``: with ``refine="pti"``, the generator weights tuned to
    each face, under the key its source names (``source["tuned"]``).
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
           return_reconstruction: bool = False, generator: Any = None, all_faces: bool = False,
           face_index: int = 0, skip_missing: bool = False, use_cache: bool = True,
           progress: Callable[[int, int], None] | None = None, refine: str = "none",
           perceptual: Any = None, tuning: TuningSettings = PTI,
           tuning_progress: Callable[[int, int], None] | None = None) -> Inversion:
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

    ``refine="pti"`` tunes ``generator`` (as for the reconstruction) to each face with ``tuning``
    (PTI's published settings by default) and the LPIPS network ``perceptual`` (default: looked up,
    ``load_perceptual``); ``tuning_progress(step, steps)`` hears every tuning step of every face.
    """
    if refine not in REFINEMENTS:
        raise EssenceError(f"unknown refinement {refine!r}; choose one of {', '.join(REFINEMENTS)}.")
    model = _encoder(encoder)
    landmarker = landmarks if isinstance(landmarks, FaceLandmarker) else load_landmarker(landmarks)
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
    decoder = _generator(generator, encoder) if rows and (refine == "pti" or return_reconstruction) else None
    if refine == "pti" and rows:
        tune_faces(result, loaded, decoder, perceptual, tuning, progress=tuning_progress)
    if return_reconstruction and rows:
        result.reconstructions = render(decoder, latents, batch_size, what="reconstructions",
                                        tuned=result.tuned_rows())
    return result


def tune_faces(inversion: Inversion, photos: Sequence[ImageSource], generator: Any, perceptual: Any = None,
               settings: TuningSettings = PTI, *, together: bool = False,
               progress: Callable[[int, int], None] | None = None) -> None:
    """Pivotal tuning of ``generator`` to the faces of ``inversion`` (found in ``photos``, which
    ``photo_index`` counts), each against its face cropped again at the generator's size; the tuned
    weights go into ``inversion.tunings`` and each row's source names its own (``source["tuned"]``).

    One face at a time, PTI's way; or, ``together``, one generator for every face (the frames of a
    clip, STIT's way: pass ``STIT`` settings), so that the clip stays one person. ``perceptual``: the
    LPIPS network or its backbone file (default: looked up). ``progress(step, steps)`` hears every step.
    """
    if not inversion.faces:
        return
    lpips = perceptual_network(perceptual, generator.latent_avg.device)
    loaded = load_photos(photos)
    keys = [f"{face.photo_sha256[:16]}-face{face.index}" for face in inversion.faces]
    if together:
        key = "clip-" + hashlib.sha256("/".join(keys).encode()).hexdigest()[:16]
        tuned = _tune_rows(inversion, loaded, range(len(keys)), generator, lpips, settings, progress)
        tuned.info["source"] = {"frames": [source["photo_index"] for source in inversion.sources]}
        inversion.tunings[key] = tuned
        for source in inversion.sources:
            source["tuned"] = key
        return
    total = settings.steps * len(keys)
    for row, (key, source) in enumerate(zip(keys, inversion.sources)):
        source["tuned"] = key
        if key not in inversion.tunings:  # the same face given twice is tuned once
            def heard(step: int, _steps: int, done: int = row * settings.steps) -> None:
                if progress is not None:
                    progress(done + step, total)

            tuned = _tune_rows(inversion, loaded, [row], generator, lpips, settings, heard)
            tuned.info["source"] = {k: source[k] for k in ("name", "sha256", "face") if k in source}
            inversion.tunings[key] = tuned
        if progress is not None:  # a face tuned before, or stopped early by PTI's LPIPS stop, completes its share
            progress((row + 1) * settings.steps, total)


def _tune_rows(inversion: Inversion, photos: list, rows: Sequence[int], generator: Any, lpips: torch.nn.Module,
               settings: TuningSettings, progress: Callable[[int, int], None] | None) -> TunedWeights:
    """One tuning of ``generator`` over ``rows`` of ``inversion``."""
    crops = [realign(photos[inversion.sources[row]["photo_index"]], inversion.faces[row], generator.size).crop
             for row in rows]
    heard = None if progress is None else (lambda step, steps, _last: progress(step, steps))
    tuned, _ = tune_generator(generator, inversion.latents[list(rows)], pil_to_pixels(crops), lpips, settings,
                              progress=heard)
    return tuned


def invert_aligned(faces: Sequence[AlignedFace], encoder: E4EEncoder | PathLike | None = None, *,
                   batch_size: int = 4, photo_indices: Sequence[int] | None = None) -> Inversion:
    """e4e-encode faces that are already aligned at 256 px (e.g. video frames cropped at their
    smoothed quads, which ``invert`` cannot know), ``batch_size`` per forward pass; not cached.
    ``photo_indices`` gives each face's place in the caller's batch (default: 0, 1, 2, ...)."""
    model = _encoder(encoder)
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


def _encoder(encoder: E4EEncoder | PathLike | None) -> E4EEncoder:
    if isinstance(encoder, E4EEncoder):
        return encoder
    return load_encoder(encoder)


def _generator(generator: Any, encoder: Any) -> Any:
    if generator is not None and not isinstance(generator, (str, os.PathLike)):
        return generator
    if generator is None and isinstance(encoder, (str, os.PathLike)):
        return load_generator(encoder)  # e4e files embed the decoder they were trained with
    return load_generator(generator)


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
