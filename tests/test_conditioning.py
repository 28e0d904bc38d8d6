"""The optional `positive` input: conditioning other nodes worked on reaches the source and every edit, through
ComfyUI's own executor on small random-weight models. In each case the source is the stock KSampler's picture
with the same conditioning (at the same batch, so bit for bit), the conditioning changes the picture, and the
edit still differs from the source."""

import logging
from pathlib import Path

import pytest
import torch

from p2p_graphs import (
    SOURCE,
    add_guided_run,
    add_sigmas,
    assert_stock_source_and_an_edit,
    p2p_graph,
    relative_error,
    samples,
)
from tools.host import HostError

LORA = "p2p_test_lora.safetensors"


@pytest.fixture(scope="module")
def lora(host):
    import folder_paths

    from tools.random_models import write_lora

    folder = Path(folder_paths.get_folder_paths("loras")[0])
    folder.mkdir(parents=True, exist_ok=True)
    write_lora(folder / LORA)
    return LORA



def _mask(g, n, positive):
    """The prompt on the right half only (a uniform mask would weigh every pixel alike and change nothing)."""
    empty = g.node("SolidMask", "empty", value=0.0, width=128, height=128)
    half = g.node("SolidMask", "half", value=1.0, width=64, height=128)
    mask = g.node("MaskComposite", "mask", destination=empty, source=half, x=64, y=0, operation="add")
    return g.node("ConditioningSetMask", "cond", conditioning=positive, mask=mask, strength=0.8,
                  set_cond_area="default")


def _area(g, n, positive):
    return g.node("ConditioningSetArea", "cond", conditioning=positive, width=64, height=128, x=64, y=0,
                  strength=1.0)


def _timestep_range(g, n, positive):
    return g.node("ConditioningSetTimestepRange", "cond", conditioning=positive, start=0.0, end=0.5)


def _lora_hook(g, n, positive):
    hook = g.node("CreateHookLora", "hook", lora_name=LORA, strength_model=1.0, strength_clip=0.0)
    return g.node("ConditioningSetProperties", "cond", cond_NEW=positive, strength=1.0, set_cond_area="default",
                  hooks=hook)


def _controlnet(g, n, positive, color=0xFF8000):
    control = g.nodes.get("controlnet") or g.node("RandomControlNetLoader", "controlnet", seed=3)
    hint = g.node("EmptyImage", f"hint_{color}", width=128, height=128, batch_size=1, color=color)
    return g.node("ControlNetApplyAdvanced", f"apply_{color}", positive=positive, negative=n["negative"],
                  control_net=control, image=hint, strength=1.0, start_percent=0.0, end_percent=1.0)


CASES = {"mask": _mask, "area": _area, "timestep_range": _timestep_range, "lora_hook": _lora_hook,
         "controlnet": _controlnet}


def conditioned_graph(kind: str):
    """P2PSampler with the conditioning of `kind` on `positive` ("p2p"), the stock KSampler with it at the same
    batch ("plain"), and P2PSampler without it ("bare")."""
    g, n = p2p_graph(shape="sd15-64" if kind == "controlnet" else "sd15")
    positive = g.node("CLIPTextEncode", "positive", clip=n["clip"], text=SOURCE)
    cond = CASES[kind](g, n, positive)
    p2p = n["p2p"].inputs
    g.node("P2PSampler", "bare", **dict(p2p))
    negative = n["negative"]
    if kind == "controlnet":  # ControlNet Apply conditions the negative as well
        cond, negative = cond.out(0), cond.out(1)
        p2p["negative"] = negative
    p2p["positive"] = cond
    latent = g.node("RepeatLatentBatch", "latent2", samples=n["latent"], amount=2)
    g.node("KSampler", "plain", model=n["model"], positive=cond, negative=negative, latent_image=latent,
           seed=p2p["seed"], steps=p2p["steps"], cfg=p2p["cfg"], sampler_name=p2p["sampler_name"],
           scheduler=p2p["scheduler"], denoise=1.0)
    return g, n


@pytest.mark.parametrize("kind", list(CASES))
def test_the_source_is_the_plain_pipeline_with_the_same_conditioning(host, lora, kind):
    g, n = conditioned_graph(kind)
    out = host.run(g.prompt(), keep=("p2p", "plain", "bare"))
    # Outside the area or mask the prompts do not reach (their prediction there is 0, which guidance extrapolates
    # to large values) the edit is the source: compare inside (the right half).
    inside = (..., slice(8, None)) if kind in ("area", "mask") else (...,)
    assert_stock_source_and_an_edit(out, "bare", "the conditioning", inside)


def test_the_guider_takes_the_same_conditioning(host):
    g, n = conditioned_graph("controlnet")
    add_guided_run(g, n, add_sigmas(g, n, "basic"), positive=n["p2p"].inputs["positive"])
    out = host.run(g.prompt(), keep=("p2p", "guided"))
    assert torch.equal(samples(out, "guided"), samples(out, "p2p"))


def test_the_control_image_steers_the_edits(host):
    g, n = conditioned_graph("controlnet")
    other = _controlnet(g, n, g.nodes["positive"], color=0x0040FF)
    g.node("P2PSampler", "other", **(dict(n["p2p"].inputs) | {"positive": other.out(0), "negative": other.out(1)}))
    out = host.run(g.prompt(), keep=("p2p", "other"))
    assert not torch.equal(samples(out, "other")[1], samples(out, "p2p")[1])


def test_identical_prompts_with_full_windows_reproduce_the_source_under_a_controlnet(host):
    """The control reaches the edit rows as it reaches the source's: with the source's maps injected everywhere,
    the edit is the source (as without a ControlNet, test_p2p_sampler (iii))."""
    g, n = p2p_graph(SOURCE, SOURCE, shape="sd15-64", cross=1.0, self_replace=1.0, self_layers="all")
    apply = _controlnet(g, n, g.node("CLIPTextEncode", "positive", clip=n["clip"], text=SOURCE))
    n["p2p"].inputs.update(positive=apply.out(0), negative=apply.out(1))
    out = samples(host.run(g.prompt(), keep=("p2p",)), "p2p")
    assert relative_error(out[1], out[0]) < 1e-4


def test_several_conditionings_are_refused_with_what_is_supported(host):
    g, n = p2p_graph()
    a = g.node("CLIPTextEncode", "a", clip=n["clip"], text="a cat")
    b = g.node("CLIPTextEncode", "b", clip=n["clip"], text="a dog")
    n["p2p"].inputs["positive"] = g.node("ConditioningCombine", "both", conditioning_1=a, conditioning_2=b)
    with pytest.raises(HostError, match=r"^P2PSampler: input 'positive': holds 2 conditionings .*Prompt-to-Prompt "
                       r"takes one"):
        host.run(g.prompt(), keep=("p2p",))


def test_a_conditioning_of_another_text_encoder_is_refused(host):
    g, n = p2p_graph()
    other = g.node("RandomModelLoader", "sdxl", shape="sdxl", seed=0, dtype="float32")
    n["p2p"].inputs["positive"] = g.node("CLIPTextEncode", "wide", clip=other.out(1), text=SOURCE)
    with pytest.raises(HostError, match=r"^P2PSampler: input 'positive': was encoded by a text encoder of width 64"):
        host.run(g.prompt(), keep=("p2p",))


def test_an_area_with_local_blend_is_refused(host):
    g, n = conditioned_graph("area")
    n["p2p"].inputs["edit"] = g.node("P2PLocalBlend", "blend", edit=n["edit"], source_words="red circle",
                                     target_words="blue circle", threshold=0.3, start=0.2)
    with pytest.raises(HostError, match=r"^P2PSampler: input 'positive': sets an area .*P2P Local Blend"):
        host.run(g.prompt(), keep=("p2p",))


def test_an_area_with_capture_says_the_maps_cover_the_area(host, caplog):
    g, _ = conditioned_graph("area")
    with caplog.at_level(logging.WARNING, logger="prompt_to_prompt"):
        host.run(g.prompt(), keep=("p2p",))
    assert "the captured attention maps cover that area only" in caplog.text
