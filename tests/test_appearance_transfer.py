"""P2P Appearance Transfer through ComfyUI's own executor (tiny random SD1.5-shaped model): the two pictures retrace
their inversions, without the swap the output is the structure picture, the swap changes it, swap guidance pushes
it further, masked AdaIN over whole pictures is plain AdaIN, bad inputs name the input."""

from typing import Any

import pytest
import torch

from p2p_graphs import relative_error
from tools.graph import Graph
from tools.host import HostError

STEPS = 4
DEFAULTS = {"sampler_name": "euler", "start": 0.1, "end": 0.9, "end_half": 0.7, "contrast": 1.67, "adain_start": 0.2,
            "swap_guidance": 3.5}
NO_SWAP = {"start": 0.0, "end": 0.0, "end_half": 0.0, "adain_start": 1.0}
ADAIN_ALONE = {"start": 0.0, "end": 0.0, "end_half": 0.0}


def transfer_graph(appearance_size=128, appearance_steps=STEPS, masks=None, **inputs):
    """masks: {"structure_mask" or "appearance_mask": (x, y, width, height)}, a square of ones on a 128x128 MASK."""
    g = Graph()
    for name, (x, y, width, height) in (masks or {}).items():
        empty = g.node("SolidMask", f"{name}_empty", value=0.0, width=128, height=128)
        square = g.node("SolidMask", f"{name}_square", value=1.0, width=width, height=height)
        inputs[name] = g.node("MaskComposite", name, destination=empty, source=square, x=x, y=y, operation="add")
    loader = g.node("RandomModelLoader", "loader", shape="sd15", seed=0, dtype="float32")
    neg = g.node("CLIPTextEncode", "negative", clip=loader.out(1), text="")
    inversions = {}
    for name, colour, size, steps in (("structure", 0x3366CC, 128, STEPS),
                                      ("appearance", 0xCC6633, appearance_size, appearance_steps)):
        image = g.node("EmptyImage", f"{name}_image", width=size, height=128, batch_size=1, color=colour)
        inversions[name] = g.node("P2PInvert", name, model=loader.out(0), vae=loader.out(2), image=image,
                                  negative=neg, steps=steps, cfg=5.0, scheduler="normal", method="direct",
                                  inner_steps=2, early_stop=1e-5, learning_rate=1e-2, clip=loader.out(1),
                                  source_prompt="a wall")
    pos = g.node("CLIPTextEncode", "positive", clip=loader.out(1), text="a wall")
    settings: dict[str, Any] = {**DEFAULTS, **inputs}  # P2PAppearanceTransfer's inputs, never Graph.node's own
    g.node("P2PAppearanceTransfer", "transfer", model=loader.out(0), structure=inversions["structure"],
           appearance=inversions["appearance"], positive=pos, negative=neg,
           **settings)
    return g


def _ends(out, model):
    """Each inversion's end (its picture's latent), in the LATENT's space."""
    return {name: model.model.process_latent_out(out[name][0].inversion.trajectory[-1:])[0]
            for name in ("structure", "appearance")}


@pytest.fixture(scope="module")
def runs(host):
    """The default transfer and the one without swap and AdaIN, with the inversions and the model."""
    out = {}
    whole, objects = (0, 0, 128, 128), {"structure_mask": (16, 32, 64, 48), "appearance_mask": (40, 8, 80, 96)}
    for key, inputs in (("default", {}), ("no_swap", NO_SWAP), ("contrast_1", {"contrast": 1.0}),
                        ("adain_alone", ADAIN_ALONE), ("unguided", {"swap_guidance": 1.0}),
                        ("masked_whole", {"masks": {"structure_mask": whole, "appearance_mask": whole}}),
                        ("masked", {"masks": objects})):
        out[key] = host.run(transfer_graph(**inputs).prompt(), keep=("transfer", "structure", "appearance", "loader"))
    return out


def test_the_two_pictures_retrace_their_inversions(runs):
    out = runs["default"]
    ends = _ends(out, out["loader"][0])
    pictures = out["transfer"][1]["samples"]
    assert pictures.shape == (3, 4, 16, 16)
    assert relative_error(pictures[1], ends["structure"]) < 1e-5
    assert relative_error(pictures[2], ends["appearance"]) < 1e-5
    assert torch.equal(out["transfer"][0]["samples"][0], pictures[0])


def test_without_the_swap_the_output_is_the_structure_picture(runs):
    """The output takes the structure's correction each step, so with nothing swapped it retraces the structure
    (the paper's edit-friendly inversion does the same): the baseline the swap is measured against."""
    out = runs["no_swap"]
    ends = _ends(out, out["loader"][0])
    assert relative_error(out["transfer"][0]["samples"][0], ends["structure"]) < 1e-5


def test_the_swap_and_its_contrast_change_the_output(runs):
    outputs = {key: runs[key]["transfer"][0]["samples"][0] for key in runs}
    assert relative_error(outputs["default"], outputs["no_swap"]) > 1e-3
    assert relative_error(outputs["default"], outputs["contrast_1"]) > 1e-4


def test_swap_guidance_pushes_the_output_further_from_its_unswapped_run(runs):
    """Guidance 3.5 extrapolates each swap step's prediction away from the prediction without the swap, so the
    output lands further from the run that never swaps (AdaIN alike in both) than the unguided swap does; the two
    retraced pictures are the same bit for bit."""
    outputs = {key: runs[key]["transfer"][1]["samples"] for key in runs}
    unswapped = outputs["adain_alone"][0]
    assert relative_error(outputs["default"][0], unswapped) > 1.2 * relative_error(outputs["unguided"][0], unswapped)
    assert torch.equal(outputs["default"][1:], outputs["unguided"][1:])


def test_masked_adain_over_whole_pictures_is_plain_adain_and_objects_change_the_output(runs):
    outputs = {key: runs[key]["transfer"][1]["samples"] for key in runs}
    assert torch.equal(outputs["masked_whole"], outputs["default"])
    assert relative_error(outputs["masked"][0], outputs["default"][0]) > 1e-4
    assert torch.equal(outputs["masked"][1:], outputs["default"][1:])


@pytest.mark.parametrize("inputs, name, message", [
    ({"masks": {"structure_mask": (0, 0, 64, 64)}}, "appearance_mask",
     "is missing: masked AdaIN needs both objects' masks, and structure_mask is given"),
    ({"masks": {"structure_mask": (0, 0, 64, 64), "appearance_mask": (8, 8, 8, 8)}}, "appearance_mask",
     r"covers 1 of the latent's 16x16 cells \(a cell is in where the mask averages above 0.5\)"),
    ({"appearance_size": 96}, "appearance", "its latent is 12x16, the structure's 16x16"),
    ({"appearance_steps": 5}, "appearance", r"was inverted with another schedule \(5 steps"),
    ({"start": 0.5, "end": 0.4}, "end", "the swap must end at or after its start"),
], ids=["one mask", "one cell", "size", "schedule", "window"])
def test_bad_inputs_name_the_input(host, inputs, name, message):
    with pytest.raises(HostError, match=rf"P2PAppearanceTransfer: input '{name}': {message}"):
        host.run(transfer_graph(**inputs).prompt(), keep=("transfer",))
