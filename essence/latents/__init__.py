"""Latents and directions: faces as W+ latents, essences as directions, and applying one to the other.

- ``latent_set``: ``LatentSet`` (W+ latents with where they came from), latent files, seeded samples,
  TargetCLIP's ``opt_latents.pt`` / ``w_plus.npy``;
- ``direction``: ``Direction``, the direction file format, the latent space it belongs to and its
  recommended strength;
- ``inversion``: photos to W+ latents (alignment, then e4e in batches, cached by content), and a clip's
  faces inverted once and tuned together (``invert_clip``);
- ``tuning``: pivotal tuning, the generator tuned to a photo around its e4e latent (PTI, STIT), and
  ``PivotalTuning``, the one tuning option every front end passes down;
- ``apply``: ``w + strength * d`` with per-layer presets, mixes, strength sweeps, a photo edited end to end.
"""

from .apply import (LAYER_PRESETS, Strength, apply_direction, apply_to_photo, edit_latents, image_grid,
                    mix_directions, strength_sweep)
from .direction import (AUTO_STRENGTH_KEY, FALLBACK_STRENGTH, Direction, LatentSpace, direction_metadata,
                        load_direction, target_thumbnail)
from .inversion import REFINEMENTS, Inversion, clear_inversion_cache, invert, invert_aligned, invert_clip
from .latent_set import (LatentSet, generator_info, import_targetclip_latents, is_latent_file, load_latents,
                         sample_latents, save_latents, tuned_path)
from .tuning import (DEFAULT_TUNING_FRAMES, PTI, STIT, PivotalTuning, TuningSettings, TuningStep, pivotal_tuning,
                     tune_generator)

__all__ = [
    "LatentSet", "load_latents", "save_latents", "sample_latents", "is_latent_file", "import_targetclip_latents",
    "generator_info", "tuned_path",
    "Direction", "LatentSpace", "load_direction", "direction_metadata", "target_thumbnail", "AUTO_STRENGTH_KEY",
    "FALLBACK_STRENGTH",
    "invert", "invert_aligned", "invert_clip", "Inversion", "clear_inversion_cache", "REFINEMENTS",
    "apply_direction", "edit_latents", "apply_to_photo", "mix_directions", "strength_sweep", "image_grid", "LAYER_PRESETS",
    "Strength",
    "tune_generator", "TuningSettings", "TuningStep", "PTI", "STIT", "PivotalTuning", "pivotal_tuning",
    "DEFAULT_TUNING_FRAMES",
]
