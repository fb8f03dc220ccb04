"""The custom socket types Essence nodes exchange, and the face alignment that travels between them
(latents travel as the library's own ``essence.LatentSet``).

ComfyUI matches sockets by type name only, so every name is prefixed (``ESSENCE_...``) to keep the
pack's sockets from connecting to other StyleGAN packs whose objects look alike but are not.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..essence.faces import CropTransform

GENERATOR = "ESSENCE_GENERATOR"   # essence.networks.StyleGAN2Generator
ENCODER = "ESSENCE_ENCODER"       # essence.networks.E4EEncoder
GUIDE = "ESSENCE_GUIDE"           # essence.networks.ClipGuide
LATENT = "ESSENCE_LATENT"         # essence.LatentSet
DIRECTION = "ESSENCE_DIRECTION"   # essence.Direction
LANDMARKS = "ESSENCE_LANDMARKS"   # essence.faces.FaceLandmarker (dlib detector + 68-point predictor)
IDENTITY = "ESSENCE_IDENTITY"     # essence.networks.IdentityEncoder (ArcFace IR-SE-50)
ALIGNMENT = "ESSENCE_ALIGNMENT"   # EssenceAlignment (below)
# essence.encoding.EssenceEncoder: an e4e trained to give essences (TargetCLIP's encoder variant);
# not ENCODER, the plain e4e that gives a face's own latent
TRAINED_ENCODER = "ESSENCE_TRAINED_ENCODER"

CUSTOM_TYPES = (GENERATOR, ENCODER, GUIDE, LATENT, DIRECTION, LANDMARKS, IDENTITY, ALIGNMENT, TRAINED_ENCODER)


@dataclass(frozen=True)
class FacePlacement:
    """Where one aligned face came from: ``transform`` maps its crop into the photo (and knows the
    photo's original size), ``photo_index`` is the photo's place in the aligned IMAGE batch,
    ``face_index`` the face's rank by size in that photo (0 = largest)."""

    transform: CropTransform
    photo_index: int
    face_index: int
    photo_sha256: str

    @property
    def photo_size(self) -> tuple[int, int]:
        """(width, height) of the photo the face was aligned from."""
        return self.transform.photo_size


@dataclass(frozen=True)
class EssenceAlignment:
    """What Paste Back needs to put edited faces back into their photos.

    ``faces`` has one entry per aligned image (in the order of the aligned IMAGE batch, and of the
    latents Invert Face makes from it); ``photo_count`` is the size of the photo batch that was
    aligned, which may hold more photos than faces when photos without a face were skipped.
    """

    faces: tuple[FacePlacement, ...]
    photo_count: int

    def __post_init__(self) -> None:
        if not self.faces:
            raise ValueError("an alignment needs at least one face.")
        if any(not 0 <= f.photo_index < self.photo_count for f in self.faces):
            raise ValueError(f"face photo indices must lie in 0..{self.photo_count - 1}.")

    def __len__(self) -> int:
        return len(self.faces)
