"""Synthetic training runs for the tests of postsvd.track: checkpoints on the straight path between two models."""
import os
import shutil

FAMILY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "models")


def interpolated_checkpoints(root, steps, last_step, base=None, post=None):
    """Writes root/checkpoint-<step> for each step: W = (1 - t) W_base + t W_post, t = step / last_step
    (float32 weights; config and tokenizer copied from the base). Returns the folders."""
    import torch
    from safetensors.torch import load_file, save_file

    base = base or os.path.join(FAMILY, "base")
    post = post or os.path.join(FAMILY, "instruct")
    base_tensors = load_file(os.path.join(base, "model.safetensors"))
    post_tensors = load_file(os.path.join(post, "model.safetensors"))
    folders = []
    for step in steps:
        t = step / last_step
        folder = os.path.join(os.fspath(root), f"checkpoint-{step}")
        shutil.copytree(base, folder, ignore=shutil.ignore_patterns("*.safetensors"))
        mixed = {name: ((1 - t) * tensor.to(torch.float64) + t * post_tensors[name].to(torch.float64))
                 .to(torch.float32).contiguous() for name, tensor in base_tensors.items()}
        save_file(mixed, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        folders.append(folder)
    return folders
