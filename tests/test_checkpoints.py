"""Weight files from strangers: refused when unsafe, and every failure names the file and the problem."""

from __future__ import annotations

import pickle

import pytest
import torch

import essence
from essence.storage import load_torch_file


class _Payload:
    """Unpickling this would create a marker file: proof that code from the file ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_callable_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {"style.1.weight": torch.zeros(1)}, "x": _Payload(str(marker))}, path)
    with pytest.raises(essence.errors.UnsafeFileError, match=r"evil\.pt.*refused.*full unpickling"):
        essence.load_generator(path, cache=False)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_file_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "legacy.pt"
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(essence.errors.UnsafeFileError, match=r"legacy\.pt.*refused"):
        load_torch_file(path)
    assert not marker.exists()


def test_truncated_file_is_reported_as_damaged(tmp_path, tiny_files):
    data = tiny_files.generator.read_bytes()
    path = tmp_path / "stylegan2-ffhq-config-f.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(essence.errors.CorruptFileError, match=r"stylegan2-ffhq-config-f\.pt.*download it again"):
        essence.load_generator(path, cache=False)


def test_empty_and_missing_files_say_so(tmp_path):
    (tmp_path / "empty.pt").touch()
    with pytest.raises(essence.errors.CorruptFileError, match=r"empty\.pt.*empty"):
        load_torch_file(tmp_path / "empty.pt")
    with pytest.raises(essence.errors.MissingWeightsError, match=r"nowhere\.pt"):
        essence.load_generator(tmp_path / "nowhere.pt")


def test_generator_file_given_as_encoder_is_refused(tiny_files):
    with pytest.raises(essence.errors.WrongFileKindError, match=r"stylegan2_tiny64\.pt.*not an e4e.*StyleGAN2 generator"):
        essence.load_encoder(tiny_files.generator)


def test_clip_file_given_as_generator_is_refused(tiny_files):
    with pytest.raises(essence.errors.WrongFileKindError, match=r"clip_tiny\.pt.*not a StyleGAN2.*CLIP"):
        essence.load_generator(tiny_files.guide)


def test_tensor_file_given_as_generator_is_refused(targetclip_files):
    with pytest.raises(essence.errors.WrongFileKindError, match=r"opt_latents\.pt.*found a Tensor"):
        essence.load_generator(targetclip_files["opt_latents"])


def test_state_dict_with_a_missing_key_names_the_file_and_the_key(tmp_path, tiny_files):
    ckpt = torch.load(tiny_files.generator, weights_only=True)
    del ckpt["g_ema"]["convs.3.noise.weight"]
    torch.save(ckpt, tmp_path / "broken.pt")
    with pytest.raises(essence.errors.IncompatibleWeightsError, match=r"broken\.pt.*missing: convs\.3\.noise\.weight"):
        essence.load_generator(tmp_path / "broken.pt")


def test_state_dict_with_a_mis_shaped_tensor_names_both_shapes(tmp_path, tiny_files):
    ckpt = torch.load(tiny_files.encoder, weights_only=True)
    ckpt["state_dict"]["encoder.latlayer1.bias"] = torch.zeros(7)
    torch.save(ckpt, tmp_path / "e4e.pt")
    with pytest.raises(essence.errors.IncompatibleWeightsError, match=r"latlayer1\.bias \(file \[7\], model \[64\]\)"):
        essence.load_encoder(tmp_path / "e4e.pt")


@pytest.mark.parametrize("made", ["written here", "TargetCLIP's"])
def test_cuda_tensors_load_on_a_cpu_machine(targetclip_files, shared, made):
    """TargetCLIP's opt_latents.pt was saved from the GPU."""
    path = targetclip_files["opt_latents"] if made == "written here" else shared("official/opt_latents.pt")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):  # what a plain torch.load does with it here
            torch.load(path, weights_only=True)
    latents = load_torch_file(path)
    assert latents.device.type == "cpu" and latents.shape == (4, 18, 512)


def test_loaded_models_are_cached_per_file_and_device(tiny_files):
    a = essence.load_generator(tiny_files.generator)
    b = essence.load_generator(tiny_files.generator)
    c = essence.load_generator(tiny_files.generator, cache=False)
    assert a is b and a is not c
    essence.clear_model_cache()
    assert essence.load_generator(tiny_files.generator) is not a


def test_loaded_models_carry_no_gradients_on_their_weights(generator):
    assert not any(p.requires_grad for p in generator.parameters())
