import os
import sys

import pytest
import torch

# Helpers such as official_reference.py live beside the tests.
sys.path.insert(0, os.path.dirname(__file__))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_model():
    from diffusers_mpdit import MPDiTTransformer2DModel

    torch.manual_seed(0)
    model = MPDiTTransformer2DModel.from_preset("MPDiT-tiny")
    # Zero-initialised modulation and output would hide most mistakes: give every weight a value.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def tiny_inputs(batch_size=2, channels=4, height=16, width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch_size, channels, height, width, generator=g),
        "timestep": torch.rand(batch_size, generator=g),
        "class_labels": torch.randint(0, 11, (batch_size,), generator=g),
    }
