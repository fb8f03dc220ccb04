"""Record traces of PTI's own pivotal tuning on the tiny generator.

    python tests/tools/make_pti_trace.py PATH/TO/PTI --out tests/fixtures/pti_tiny_trace

PATH/TO/PTI is a checkout of danielroich/PTI (nothing of it is copied here; its modules are imported
from that path). Its ``SingleIDCoach.train()`` runs unchanged in its maths (the losses, the early
stop, Adam, the locality regulariser), on the CPU, with these stand-ins for what cannot run here:

* its network: PTI's own copy of rosinality's ``Generator`` (``models/StyleCLIP/models/stylegan2``)
  at the tiny fixture's size and widths, loaded ``strict=True`` from ``stylegan2_tiny64.pt``, in a
  wrapper answering the calls the coach makes of NVIDIA's generator: ``synthesis(w, noise_mode)``
  (``const``: the stored noise, ``none``: zeros), ``mapping(z, c, truncation_psi)`` (truncated
  towards the checkpoint's ``latent_avg``) and ``z_dim``;
* the compiled ``fused_leaky_relu`` / ``upfirdn2d``: ``make_reference_trace.py``'s plain versions
  (checked: the generator reproduces ``stylegan2_tiny64_io.safetensors`` within 1e-4);
* LPIPS's AlexNet backbone: ``tests/perceptual_weights.py``'s deterministic one (its heads are the
  lpips package's own);
* the pivot: read through ``use_last_w_pivots`` from the file written here, Essence's e4e inversion
  of the test portrait with the tiny encoder; the photo: the portrait aligned at the generator's 64 px;
* ``np.random.randn`` in the locality regulariser: drawn from a torch generator seeded 0, as
  Essence draws its probes, so both probe the same faces;
* wandb, the e4e and projector modules, image logging: no-ops; the coach's ``torch.save`` of the
  tuned generator is kept in memory.

Two runs: ``pti``, PTI's published settings but at most 40 steps and an LPIPS threshold that this
run crosses between steps 25 and 40 (so the early stop is exercised); ``locality``, the locality
regularisation on, 12 steps, no early stop. For each: the L2 and LPIPS before every step, the
total loss, and the tuned generator's image of the pivot. Writes ``<out>.safetensors`` and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parents[1]
MODELS = REPO / "tests" / "fixtures"
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(TOOLS)]

import make_reference_trace as stand_ins  # noqa: E402  (the plain ops and the tiny reference generator)
from perceptual_weights import alexnet_state  # noqa: E402


class NvidiaFace(torch.nn.Module):
    """rosinality's generator answering the three NVIDIA-generator calls PTI's coach makes."""

    def __init__(self, generator: torch.nn.Module, latent_avg: torch.Tensor):
        super().__init__()
        self.g = generator
        self.register_buffer("w_avg", latent_avg.clone())
        self.z_dim = latent_avg.shape[0]
        self.num_ws = generator.n_latent

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const", force_fp32: bool = True) -> torch.Tensor:
        if noise_mode == "const":
            image, _ = self.g([ws], input_is_latent=True, randomize_noise=False)
        elif noise_mode == "none":
            zeros = [torch.zeros_like(getattr(self.g.noises, f"noise_{i}")) for i in range(self.g.num_layers)]
            image, _ = self.g([ws], input_is_latent=True, noise=zeros)
        else:
            raise ValueError(noise_mode)
        return image

    def mapping(self, z: torch.Tensor, c, truncation_psi: float = 1.0) -> torch.Tensor:
        w = self.g.style(z.float())
        w = self.w_avg + truncation_psi * (w - self.w_avg)
        return w[:, None, :].repeat(1, self.num_ws, 1)


def essence_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """The pivot (tiny e4e of the test portrait) and the photo (the portrait aligned at 64 px)."""
    from pictures import portrait

    import essence
    from essence.faces import align_faces, pil_to_model

    generator = essence.load_generator(MODELS / "stylegan2_tiny64.pt")
    inversion = essence.invert(portrait(), MODELS / "e4e_tiny64.pt", use_cache=False)
    face = align_faces(portrait(), generator.size, all_faces=False)[0]
    return inversion.latents.clone(), pil_to_model([face.crop])


def load_pti(pti: Path) -> types.SimpleNamespace:
    """PTI's coach and configuration modules, imported from the checkout with the stand-ins."""
    op = types.ModuleType("op")
    op.FusedLeakyReLU, op.fused_leaky_relu = stand_ins.FusedLeakyReLU, stand_ins.fused_leaky_relu
    op.upfirdn2d = stand_ins.upfirdn2d
    sys.modules["models.StyleCLIP.models.stylegan2.op"] = op
    wandb = types.ModuleType("wandb")
    wandb.log, wandb.Image = (lambda *a, **k: None), (lambda *a, **k: None)
    sys.modules["wandb"] = wandb
    psp = types.ModuleType("models.e4e.psp")
    psp.pSp = None  # the pivot is read from its file; e4e is never built
    sys.modules["models.e4e.psp"] = psp
    sys.modules["training.projectors.w_projector"] = types.ModuleType("w_projector")
    log_utils = types.ModuleType("utils.log_utils")
    log_utils.log_image_from_w = log_utils.log_images_from_w = lambda *a, **k: None
    sys.modules["utils.log_utils"] = log_utils
    sys.path.insert(0, str(pti))

    import lpips.pretrained_networks
    import torchvision

    def alexnet(pretrained: bool = True, **_kwargs) -> torch.nn.Module:
        model = torchvision.models.alexnet()
        model.load_state_dict(alexnet_state(), strict=False)  # the features; the classifier is unused
        return model

    lpips.pretrained_networks.tv = types.SimpleNamespace(alexnet=alexnet)

    from configs import global_config, hyperparameters, paths_config
    from criteria import localitly_regulizer
    from models.StyleCLIP.models.stylegan2 import model as model_module
    from training.coaches import base_coach, single_id_coach
    from utils import models_utils
    return types.SimpleNamespace(global_config=global_config, hyperparameters=hyperparameters,
                                 paths_config=paths_config, regulariser=localitly_regulizer,
                                 model_module=model_module, base_coach=base_coach, coach=single_id_coach,
                                 models_utils=models_utils)


def run(pti: types.SimpleNamespace, face: NvidiaFace, pivot: torch.Tensor, photo: torch.Tensor, *,
        steps: int, threshold: float, locality: bool) -> dict:
    """One ``SingleIDCoach.train()`` on the photo; what it did, step by step."""
    h, g, p = pti.hyperparameters, pti.global_config, pti.paths_config
    h.max_pti_steps, h.LPIPS_value_threshold, h.use_locality_regularization = steps, threshold, locality
    h.use_last_w_pivots, h.first_inv_type = True, "w"
    g.device, g.training_step = "cpu", 1
    random = torch.Generator().manual_seed(0)
    pti.regulariser.np = types.SimpleNamespace(random=types.SimpleNamespace(
        randn=lambda *shape: torch.randn(*shape, generator=random).double().numpy()))
    pti.base_coach.load_old_G = pti.models_utils.load_old_G = lambda: copy.deepcopy(face)
    pti.coach.load_old_G = pti.base_coach.load_old_G
    records: list[tuple[float, float, float]] = []
    calc_loss = pti.base_coach.BaseCoach.calc_loss

    def recording(self, *args, **kwargs):
        loss, l2, lp = calc_loss(self, *args, **kwargs)
        records.append((float(loss), float(l2), float(lp)))
        return loss, l2, lp

    saved: list = []
    with tempfile.TemporaryDirectory() as tmp:
        p.embedding_base_dir, p.checkpoints_dir, p.input_data_id = f"{tmp}/embeddings", f"{tmp}/checkpoints", "trace"
        folder = Path(tmp) / "embeddings" / "trace" / p.pti_results_keyword / "portrait"
        folder.mkdir(parents=True)
        torch.save(pivot.clone(), folder / "0.pt")
        original_save = pti.coach.torch.save
        pti.base_coach.BaseCoach.calc_loss = recording
        pti.coach.torch.save = lambda obj, path, *a, **k: saved.append(obj)
        try:
            coach = pti.coach.SingleIDCoach([(["portrait"], photo.clone())], use_wandb=False)
            coach.train()
        finally:
            pti.base_coach.BaseCoach.calc_loss = calc_loss
            pti.coach.torch.save = original_save
    tuned = [obj for obj in saved if isinstance(obj, torch.nn.Module)][-1]
    with torch.no_grad():
        image = tuned.synthesis(pivot, noise_mode="const")
    totals, l2s, lpipss = (torch.tensor(column, dtype=torch.float64) for column in zip(*records))
    return {"total": totals, "l2": l2s, "lpips": lpipss, "image": image.detach().clone(),
            "updates": len(records) - (1 if float(lpipss[-1]) <= threshold else 0)}


def crossing(lpips: torch.Tensor, first: int = 25) -> tuple[int, float]:
    """A step (from ``first`` on) whose LPIPS is below every earlier one, and a threshold halfway
    between it and the lowest before, so the stop does not hinge on the last digits."""
    for step in range(first, len(lpips)):
        before = float(lpips[:step].min())
        if float(lpips[step]) < before:
            return step, (before + float(lpips[step])) / 2
    raise SystemExit(f"LPIPS never fell to a new low after step {first}: {lpips.tolist()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pti", type=Path, help="a checkout of danielroich/PTI")
    parser.add_argument("--reference-commit", default="", help="the checkout's commit, recorded in the JSON")
    parser.add_argument("--out", type=Path, required=True, help="output path without extension")
    args = parser.parse_args()
    torch.set_num_threads(1)

    pivot, photo = essence_inputs()
    pti = load_pti(args.pti.resolve())
    generator, size = stand_ins.tiny_generator(pti.model_module, MODELS / "stylegan2_tiny64.pt")
    error = stand_ins.check_generator(generator, MODELS)
    if error > 1e-4:
        raise SystemExit(f"the stand-in ops do not reproduce the reference generator ({error:.2e})")
    checkpoint = torch.load(MODELS / "stylegan2_tiny64.pt", map_location="cpu", weights_only=True)
    face = NvidiaFace(generator, checkpoint["latent_avg"].float())

    free = run(pti, face, pivot, photo, steps=40, threshold=0.0, locality=False)
    stop_step, threshold = crossing(free["lpips"])
    stopped = run(pti, face, pivot, photo, steps=40, threshold=threshold, locality=False)
    if len(stopped["lpips"]) != stop_step + 1:
        raise SystemExit(f"expected the stop at step {stop_step}, it came after {len(stopped['lpips'])} steps")
    local = run(pti, face, pivot, photo, steps=12, threshold=0.0, locality=True)

    tensors = {"pivot": pivot.contiguous(), "photo": photo.contiguous()}
    for name, result in (("pti", stopped), ("locality", local)):
        for key in ("total", "l2", "lpips", "image"):
            tensors[f"{name}_{key}"] = result[key].contiguous()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, f"{args.out}.safetensors")
    h = pti.hyperparameters
    summary = {
        "made_by": "tests/tools/make_pti_trace.py: PTI's SingleIDCoach.train(), on the CPU",
        "reference": "danielroich/PTI" + (f" @ {args.reference_commit}" if args.reference_commit else ""),
        "generator": "stylegan2_tiny64.pt", "generator_size": size, "generator_max_abs_error_vs_fixture": error,
        "lpips_backbone": "tests/perceptual_weights.py (seed 7); heads: the lpips package's v0.1 alex.pth",
        "pivot": "Essence's invert() of tests/pictures.py portrait() with e4e_tiny64.pt",
        "photo": "the same portrait aligned at 64 px, in [-1, 1]",
        "published": {"pti_learning_rate": h.pti_learning_rate, "pt_l2_lambda": h.pt_l2_lambda,
                      "pt_lpips_lambda": h.pt_lpips_lambda, "regulizer_alpha": h.regulizer_alpha,
                      "regulizer_l2_lambda": h.regulizer_l2_lambda,
                      "regulizer_lpips_lambda": h.regulizer_lpips_lambda,
                      "latent_ball_num_of_samples": h.latent_ball_num_of_samples, "lpips_type": h.lpips_type},
        "runs": {
            "pti": {"max_pti_steps": 40, "LPIPS_value_threshold": threshold, "use_locality_regularization": False,
                    "steps_measured": len(stopped["lpips"]), "updates": stopped["updates"]},
            "locality": {"max_pti_steps": 12, "LPIPS_value_threshold": 0.0, "use_locality_regularization": True,
                         "steps_measured": len(local["lpips"]), "updates": local["updates"],
                         "probe_codes": "torch.randn(1, z_dim, generator=torch.Generator().manual_seed(0)), "
                                        "one draw per step"},
        },
        "torch": torch.__version__,
    }
    Path(f"{args.out}.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
