"""Write the example workflows (UI format) in example_workflows/.

    .venv/bin/python -m tools.build_workflows

Each workflow is described here once, as a graph; its widget values are laid out from the nodes' own
input definitions, so the files follow the nodes when inputs change.
"""

from __future__ import annotations

import json
from pathlib import Path

from .graph import Graph
from .workflow import to_ui

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "example_workflows"

SD15_CHECKPOINT = {
    "name": "v1-5-pruned-emaonly-fp16.safetensors",
    "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors?download=true",
    "directory": "checkpoints",
}
SDXL_CHECKPOINT = {
    "name": "sd_xl_base_1.0.safetensors",
    "url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors?download=true",
    "directory": "checkpoints",
}

WORD_SWAP_NOTE = """## Prompt-to-Prompt: word swap

The **P2P Sampler** generates the *source prompt* and the *edited prompt* side by side from the same noise,
and injects the source's attention into the edit, so only what the changed word describes changes.
The output batch is **[source, edit]**.

Knobs on **P2P Edit Spec**:
- **cross_replace** (0.8): fraction of the steps with the source's cross-attention. Lower lets the new word
  reshape more; higher keeps more of the layout.
- **self_replace** (0.4): fraction of the steps with the source's self-attention (shapes, details).
  Try 0.2-0.7.
- **mode**: *replace* swaps words (same word count), *refine* adds or removes words, *auto* picks.
- **word_schedule**: per-word windows, e.g. `dog: 0.3`.

Chain more **P2P Edit Spec** nodes through *previous* to make several edits in one run.
"""

SDXL_NOTE = """## Prompt-to-Prompt on SDXL: re-weighting and local blending

- **P2P Reweight** turns words of the edited prompt up or down (`fluffy: 3`, `snow: -1`). It acts while
  cross-attention is injected.
- **P2P Local Blend** keeps the source outside the region of the named words: from *start* (a fraction of
  the steps) on, pixels where neither the source words nor the target words attend more than *threshold*
  of their peak come from the source. SDXL's attention is more spread out than SD1.5's: raise the
  threshold (0.4-0.7) if too much changes.
"""


def _sd15_word_swap() -> tuple[Graph, dict, list, dict]:
    g = Graph()
    ckpt = g.node("CheckpointLoaderSimple", "ckpt", ckpt_name=SD15_CHECKPOINT["name"])
    edit = g.node("P2PEditSpec", "edit", clip=ckpt.out(1),
                  source_prompt="a photo of a cat riding a bicycle in the park, highly detailed",
                  target_prompt="a photo of a dog riding a bicycle in the park, highly detailed",
                  mode="auto", cross_replace=0.8, self_replace=0.4, self_layers="coarse", word_schedule="")
    neg = g.node("CLIPTextEncode", "negative", title="Negative prompt", clip=ckpt.out(1), text="blurry, lowres")
    latent = g.node("EmptyLatentImage", "latent", width=512, height=512, batch_size=1)
    sampler = g.node("P2PSampler", "sampler", model=ckpt.out(0), edit=edit, negative=neg, latent_image=latent,
                     seed=8888, steps=30, cfg=7.5, sampler_name="euler", scheduler="normal", denoise=1.0)
    decode = g.node("VAEDecode", "decode", samples=sampler, vae=ckpt.out(2))
    g.node("SaveImage", "save", images=decode, filename_prefix="p2p_word_swap")
    positions = {"ckpt": (40, 40), "edit": (420, 40), "negative": (420, 540), "latent": (420, 760),
                 "sampler": (880, 40), "decode": (1240, 40), "save": (1240, 130)}
    sizes = {"ckpt": (330, 100), "edit": (420, 460), "negative": (420, 180), "latent": (320, 110),
             "sampler": (320, 330), "decode": (210, 50), "save": (420, 460)}
    notes = [(WORD_SWAP_NOTE, (40, 180), (340, 560))]
    return g, positions, notes, {"models": {"ckpt": [SD15_CHECKPOINT]}, "sizes": sizes}


def _sdxl_reweight_blend() -> tuple[Graph, dict, list, dict]:
    g = Graph()
    ckpt = g.node("CheckpointLoaderSimple", "ckpt", ckpt_name=SDXL_CHECKPOINT["name"])
    edit = g.node("P2PEditSpec", "edit", clip=ckpt.out(1),
                  source_prompt="a cozy cabin in a snowy forest at dusk, warm light in the windows",
                  target_prompt="a cozy cabin in a snowy forest at dusk, warm light in the windows",
                  mode="auto", cross_replace=0.8, self_replace=0.4, self_layers="coarse", word_schedule="")
    reweight = g.node("P2PReweight", "reweight", edit=edit, weights="snowy: 3, warm: 2")
    edit2 = g.node("P2PEditSpec", "edit2", clip=ckpt.out(1),
                   source_prompt="a cozy cabin in a snowy forest at dusk, warm light in the windows",
                   target_prompt="a cozy stone cabin in a snowy forest at dusk, warm light in the windows",
                   mode="auto", cross_replace=0.8, self_replace=0.4, self_layers="coarse", word_schedule="",
                   previous=reweight)
    blend = g.node("P2PLocalBlend", "blend", edit=edit2, source_words="cabin", target_words="stone cabin",
                   threshold=0.5, start=0.2, subtract_words="")
    neg = g.node("CLIPTextEncode", "negative", title="Negative prompt", clip=ckpt.out(1), text="blurry, lowres")
    latent = g.node("EmptyLatentImage", "latent", width=1024, height=1024, batch_size=1)
    sampler = g.node("P2PSampler", "sampler", model=ckpt.out(0), edit=blend, negative=neg, latent_image=latent,
                     seed=1234, steps=30, cfg=7.0, sampler_name="dpmpp_2m", scheduler="karras", denoise=1.0)
    decode = g.node("VAEDecode", "decode", samples=sampler, vae=ckpt.out(2))
    g.node("SaveImage", "save", images=decode, filename_prefix="p2p_sdxl")
    positions = {"ckpt": (40, 40), "edit": (420, 40), "reweight": (420, 540), "negative": (420, 680),
                 "edit2": (880, 40), "blend": (880, 540), "latent": (880, 810), "sampler": (1340, 40),
                 "decode": (1700, 40), "save": (1700, 130)}
    sizes = {"ckpt": (330, 100), "edit": (420, 460), "reweight": (420, 100), "negative": (420, 180),
             "edit2": (420, 460), "blend": (420, 230), "latent": (320, 110), "sampler": (320, 330),
             "decode": (210, 50), "save": (420, 460)}
    notes = [(SDXL_NOTE, (40, 180), (340, 460))]
    return g, positions, notes, {"models": {"ckpt": [SDXL_CHECKPOINT]}, "sizes": sizes}


DEMO_NOTE = """## The demo model

**P2P Demo Model** is a small text-to-image model this project trained on 32x32 pictures of coloured shapes
(see MODEL.md). It runs in seconds on a CPU, so every knob can be tried at once.

Its words: *circle, square, triangle; red, green, blue, yellow, purple, orange; small, big; on the left,
on the right, at the top, at the bottom, in the center; striped; on a white / black / gray background*.

The latent is 32x32 pixels (**Empty Chroma Radiance Latent Image**); the images are scaled x8 for viewing.
"""

DEMO_WORKFLOWS = {
    # name: (note, source, targets with (mode, reweight, blend) options)
    "p2p_demo_word_swap": ("Word swap: the circle changes colour, everything else stays.",
                           "a red circle and a small blue square",
                           [("a yellow circle and a small blue square", {})]),
    "p2p_demo_refinement": ("Refinement: words are added; the new ones keep their own attention.",
                            "a purple triangle",
                            [("a striped purple triangle on a gray background", {})]),
    "p2p_demo_reweight": ("Re-weighting: the same prompt three times, with *big* weighted 0, 2 and 4.",
                          "a big green square",
                          [("a big green square", {"weights": "big: 0"}),
                           ("a big green square", {"weights": "big: 2"}),
                           ("a big green square", {"weights": "big: 4"})]),
    "p2p_demo_local_blend": ("Local blend: only the circle may change; the square is kept pixel for pixel.",
                             "a red circle on the left and a blue square on the right",
                             [("a green circle on the left and a blue square on the right",
                               {"blend": ("red circle", "green circle")})]),
}


def _demo(name: str):
    intro, source, targets = DEMO_WORKFLOWS[name]
    g = Graph()
    model = g.node("P2PDemoModel", "model")
    previous, positions, sizes = None, {"model": (40, 40)}, {"model": (300, 100)}
    x = 380
    for k, (target, options) in enumerate(targets):
        edit = g.node("P2PEditSpec", f"edit{k}", clip=model.out(1), source_prompt=source, target_prompt=target,
                      mode="auto", cross_replace=0.8, self_replace=0.4, self_layers="coarse", word_schedule="",
                      **({"previous": previous} if previous is not None else {}))
        positions[f"edit{k}"], sizes[f"edit{k}"] = (x, 40), (400, 460)
        previous = edit
        if "weights" in options:
            previous = g.node("P2PReweight", f"reweight{k}", edit=previous, weights=options["weights"])
            positions[f"reweight{k}"], sizes[f"reweight{k}"] = (x, 540), (400, 90)
        if "blend" in options:
            previous = g.node("P2PLocalBlend", f"blend{k}", edit=previous, source_words=options["blend"][0],
                              target_words=options["blend"][1], threshold=0.3, start=0.2, subtract_words="")
            positions[f"blend{k}"], sizes[f"blend{k}"] = (x, 540), (400, 230)
        x += 440
    neg = g.node("CLIPTextEncode", "negative", title="Negative prompt", clip=model.out(1), text="")
    latent = g.node("EmptyChromaRadianceLatentImage", "latent", width=32, height=32, batch_size=1)
    sampler = g.node("P2PSampler", "sampler", model=model.out(0), edit=previous, negative=neg, latent_image=latent,
                     seed=0, steps=30, cfg=5.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    decode = g.node("VAEDecode", "decode", samples=sampler, vae=model.out(2))
    scale = g.node("ImageScaleBy", "scale", image=decode, upscale_method="nearest-exact", scale_by=8.0)
    g.node("SaveImage", "save", images=scale, filename_prefix=name)
    positions |= {"negative": (40, 560), "latent": (40, 780), "sampler": (x, 40), "decode": (x, 420),
                  "scale": (x, 510), "save": (x + 360, 40)}
    sizes |= {"negative": (300, 160), "latent": (300, 110), "sampler": (320, 330), "decode": (210, 50),
              "scale": (320, 90), "save": (560, 320)}
    note = f"{DEMO_NOTE}\n**This workflow.** {intro}\n"
    return g, positions, [(note, (40, 180), (300, 360))], {"sizes": sizes}


WORKFLOWS = {
    **{name: (lambda n=name: _demo(n)) for name in DEMO_WORKFLOWS},
    "p2p_word_swap_sd15": _sd15_word_swap,
    "p2p_reweight_local_blend_sdxl": _sdxl_reweight_blend,
}


def build(node_classes: dict) -> dict[str, dict]:
    out = {}
    for name, make in WORKFLOWS.items():
        graph, positions, notes, extra = make()
        out[name] = to_ui(graph, node_classes, positions, notes, extra.get("models"), extra.get("sizes"))
    return out


def main() -> None:
    from . import host

    h = host.start()
    OUT.mkdir(exist_ok=True)
    for name, workflow in build(h.nodes.NODE_CLASS_MAPPINGS).items():
        (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=2) + "\n")
        print(f"wrote example_workflows/{name}.json")


if __name__ == "__main__":
    main()
