"""Networks: the four pretrained models TargetCLIP uses, LPIPS for pivotal tuning, and their loaders.

- ``ops``: StyleGAN2's resampling and fused activation without compiled extensions;
- ``fused`` + ``fused_kernels``: the opt-in Triton path for the generator's per-pixel passes
  (``StyleGAN2Generator.set_kernels("fused")``): autograd functions, and their kernels' source;
- ``stylegan2``: the generator, key for key rosinality/stylegan2-pytorch's (W+ latents -> images);
- ``irse`` + ``e4e``: the e4e encoder, key for key omertov/encoder4editing's (faces -> W+ latents);
- ``identity``: ArcFace IR-SE-50 (faces -> identity embeddings, the paper's identity metric);
- ``clip_guide``: CLIP's image tower and TargetCLIP's two ways into it;
- ``perceptual``: LPIPS (AlexNet), the perceptual distance pivotal tuning minimises;
- ``loaders``: ``load_generator`` and friends: find the file, build the model, cache it; ``generator_from``
  and friends: a model as given, or loaded from the path given (one rule per model);
- ``tuned``: a generator tuned to a photo (pivotal tuning), kept as float16 differences, and the
  fingerprint of the synthesis weights they belong to;
- ``rendering``: latents to images in batches that fit the device, the one rendering path.

Each network infers its architecture from the weights and loads them with ``strict=True``.
"""

from .clip_guide import ClipGuide, GeneratedMode, import_clip_model, to_unit
from .e4e import INPUT_SIZE, E4EEncoder, EncoderConfig, build_encoder
from .identity import IdentityConfig, IdentityEncoder, build_identity
from .loaders import (encoder_from, generator_from, load_encoder, load_generator, load_guide, load_identity,
                      load_perceptual, optional_identity, perceptual_network)
from .perceptual import perceptual_distance
from .rendering import DEFAULT_BATCH, render
from .stylegan2 import GeneratorConfig, StyleGAN2Generator, build_generator
from .tuned import (MAX_TUNED_DELTA, MissingTuned, TunedFile, TunedWeights, sampled_synthesis_fingerprint,
                    save_tuned, synthesis_fingerprint, synthesis_parameters, synthesize_with)

__all__ = [
    "StyleGAN2Generator", "GeneratorConfig", "build_generator",
    "E4EEncoder", "EncoderConfig", "build_encoder", "INPUT_SIZE",
    "IdentityEncoder", "IdentityConfig", "build_identity",
    "ClipGuide", "GeneratedMode", "to_unit", "import_clip_model",
    "load_generator", "load_encoder", "load_guide", "load_identity", "load_perceptual", "perceptual_network",
    "generator_from", "encoder_from",
    "optional_identity", "perceptual_distance",
    "TunedWeights", "TunedFile", "MissingTuned", "save_tuned", "synthesis_parameters", "synthesize_with",
    "synthesis_fingerprint", "sampled_synthesis_fingerprint", "MAX_TUNED_DELTA",
    "render", "DEFAULT_BATCH",
]
