"""Model patches of ComfyUI's core nodes before P2PSampler and P2PGuider: the source stays the stock KSampler's
picture with the same patched model (at the same batch, bit for bit), the edit still differs from it, and the
patch still acts. The README's compatibility table lists these."""

from pathlib import Path

import pytest
import torch

from p2p_graphs import (
    SOURCE,
    add_guided_run,
    add_plain_ksampler,
    add_sigmas,
    assert_stock_source_and_an_edit,
    p2p_graph,
    samples,
)

LORA = "p2p_test_model_lora.safetensors"
HYPERNETWORK = "p2p_test_hypernetwork.pt"


@pytest.fixture(scope="module")
def files(host):
    import folder_paths

    from tools.random_models import write_hypernetwork, write_lora

    for kind, name, write in (("loras", LORA, write_lora), ("hypernetworks", HYPERNETWORK, write_hypernetwork)):
        folder = Path(folder_paths.get_folder_paths(kind)[0])
        folder.mkdir(parents=True, exist_ok=True)
        write(folder / name)


PATCHES = {
    "FreeU_V2": {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2},
    "PerturbedAttentionGuidance": {"scale": 3.0},
    "SelfAttentionGuidance": {"scale": 0.5, "blur_sigma": 2.0},
    "RescaleCFG": {"multiplier": 0.7},
    "LoraLoaderModelOnly": {"lora_name": LORA, "strength_model": 1.0},
    "ModelSamplingDiscrete": {"sampling": "v_prediction", "zsnr": False},
    "HypernetworkLoader": {"hypernetwork_name": HYPERNETWORK, "strength": 1.0},
}



def patched_graph(patch: str):
    def patched(g, model):
        return g.node(patch, "patch", model=model, **PATCHES[patch])

    g, n = p2p_graph(model_node=patched)
    add_plain_ksampler(g, n, SOURCE, batch_size=2)
    unpatched = g.nodes["loader"].out(0)
    g.node("P2PSampler", "unpatched", **(dict(n["p2p"].inputs) | {"model": unpatched}))
    return g, n


@pytest.mark.parametrize("patch", list(PATCHES))
def test_the_source_is_the_stock_run_of_the_patched_model(host, files, patch):
    g, n = patched_graph(patch)
    out = host.run(g.prompt(), keep=("p2p", "plain", "unpatched"))
    assert_stock_source_and_an_edit(out, "unpatched", patch)


@pytest.mark.parametrize("patch", list(PATCHES))
def test_the_guider_gives_the_sampler_batch_on_the_patched_model(host, files, patch):
    g, n = patched_graph(patch)
    add_guided_run(g, n, add_sigmas(g, n, "basic"))
    out = host.run(g.prompt(), keep=("p2p", "guided"))
    assert torch.equal(samples(out, "guided"), samples(out, "p2p"))
