"""Clear about the device: the command line says once where it runs, every node that runs a network
logs its device and weight type, and work on the CPU of a machine with a GPU says why. This machine
has no GPU, so the GPU cases change what PyTorch and the system report (never Essence's code)."""

from __future__ import annotations

import logging

import pytest
import torch
from comfy_stubs import comfy_env, extra_model_paths  # noqa: F401 (fixtures)

import essence.runtime as runtime
from essence.cli import main as cli_main


def test_a_command_says_once_at_the_start_where_it_runs(fixtures, tmp_path, capsys):
    code = cli_main(["sample", "--count", "1", "--out", str(tmp_path / "s.safetensors"), "--generator",
                     str(fixtures / "stylegan2_tiny64.pt"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0] == "Device: cpu, float32." and out.count("Device:") == 1


def test_a_device_this_machine_cannot_use_is_refused_before_any_work(fixtures, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "gpu_hardware", lambda: None)
    for device, why in [("cuda", "this machine has no GPU that PyTorch can see"), ("xpu", "runs on cpu, cuda"),
                        ("banana", "is not a device")]:
        code = cli_main(["sample", "--count", "1", "--out", str(tmp_path / "s.safetensors"), "--generator",
                         str(fixtures / "stylegan2_tiny64.pt"), "--device", device])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and why in err and "Traceback" not in err, err
    assert not (tmp_path / "s.safetensors").exists()


@pytest.mark.parametrize(("cuda_build", "visible", "expected"), [
    (None, None, "this PyTorch ({version}) is built without GPU support, though the machine has an NVIDIA GPU; "
                 "install a CUDA (or ROCm) build"),
    ("12.8", None, "cannot use the machine's NVIDIA GPU: its driver may be older than this PyTorch needs (CUDA 12.8)"),
    ("12.8", "", "cannot use the machine's NVIDIA GPU: CUDA_VISIBLE_DEVICES='' hides it"),
])
def test_the_cpu_on_a_machine_with_a_gpu_says_why(cuda_build, visible, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "gpu_hardware", lambda: "an NVIDIA GPU")
    monkeypatch.setattr(torch.version, "cuda", cuda_build)
    monkeypatch.setattr(torch.version, "hip", None)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    line = runtime.describe_device("cpu")
    assert line.startswith("cpu, float32 (not the GPU: ")
    assert expected.format(version=torch.__version__) in line


def test_the_cpu_asked_for_on_a_machine_with_a_usable_gpu_names_who_asked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.describe_device("cpu", chosen_by="--device cpu") == \
        "cpu, float32 (not the GPU: --device cpu asked for the CPU)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "gpu_hardware", lambda: None)
    assert runtime.describe_device("cpu") == "cpu, float32"  # no GPU: nothing to explain


def test_nodes_that_run_a_network_log_its_device_and_why_not_the_gpu(comfy_env, caplog, monkeypatch):
    (generator,) = comfy_env.run("EssenceGeneratorLoader", generator_file="stylegan2_tiny64.pt")
    with caplog.at_level(logging.INFO):
        comfy_env.run("EssenceSampleLatents", generator=generator, count=1, seed=0, truncation=0.7)
    assert "Essence: StyleGAN2Generator on cpu, float32" in caplog.text
    caplog.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU ComfyUI was told not to use
    monkeypatch.setattr(comfy_env.model_management, "args", type("Args", (), {"cpu": True})(), raising=False)
    with caplog.at_level(logging.INFO):
        comfy_env.run("EssenceSampleLatents", generator=generator, count=1, seed=0, truncation=0.7)
    assert "on cpu, float32 (not the GPU: ComfyUI's --cpu option asked for the CPU)" in caplog.text
