"""Write the example workflows (UI format) in example_workflows/.

    .venv/bin/python -m tools.build_workflows

Each workflow is described here once, as a graph; its widget values are laid out from the nodes' own
input definitions, so the files follow the nodes when inputs change.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from p2p.cross_image import AppearanceSpec
from shapes_demo.autoencoder import LATENT_SIZE as DEMO_LATENT
from shapes_demo.autoencoder import PICTURE_SIZE as DEMO_SIZE

from .graph import Graph
from .workflow import to_ui

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "example_workflows"
DEMO_VIEW_SCALE = 256 / DEMO_SIZE  # the demo's pictures shown at 256x256
# P2P Attention Capture in the demo workflows: the full latent resolution, self-attention included
DEMO_CAPTURE: dict[str, Any] = {"enabled": True, "resolution": "1/1", "start": 0.0, "end": 1.0, "layers": "down+up",
                "per_step": False, "self_attention": True}

SD15_CHECKPOINT = {
    "name": "v1-5-pruned-emaonly-fp16.safetensors",
    "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
           "v1-5-pruned-emaonly-fp16.safetensors?download=true",
    "directory": "checkpoints",
}
SDXL_CHECKPOINT = {
    "name": "sd_xl_base_1.0.safetensors",
    "url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
           "sd_xl_base_1.0.safetensors?download=true",
    "directory": "checkpoints",
}

SD15_CANNY_CONTROLNET = {
    "name": "control_v11p_sd15_canny_fp16.safetensors",
    "url": "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
           "control_v11p_sd15_canny_fp16.safetensors?download=true",
    "directory": "controlnet",
}

FLUX_MODELS = {
    "unet": [{"name": "flux1-dev.safetensors",
              "url": "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
              "directory": "diffusion_models"}],
    "clip": [{"name": "t5xxl_fp16.safetensors",
              "url": "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
              "directory": "text_encoders"},
             {"name": "clip_l.safetensors",
              "url": "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
              "directory": "text_encoders"}],
    "vae": [{"name": "ae.safetensors",
             "url": "https://huggingface.co/black-forest-labs/FLUX.1-schnell/resolve/main/ae.safetensors",
             "directory": "vae"}],
}

FLUX_NOTE = """## Prompt-to-Prompt on Flux

The same nodes as on SD1.5/SDXL, through Flux's joint attention (text and image tokens in one attention):
- **self_replace** (0.4): the steps in which the edit takes the source's image queries and keys in every
  block, which keeps the source's layout (Shin et al., ICCV 2025).
- **cross_replace** (0.8): the steps in which each word of the edit attends as the source's word did (its
  image-to-text attention); **P2P Reweight**, **P2P Local Blend** and **word_schedule** work as on UNets.
- Flux.1-dev is guidance-distilled: sample at **cfg 1**, and set its guidance with **FluxGuidance** on the
  source prompt, connected to *positive* (3.5 is FluxGuidance's default).
- The heatmaps are the image-to-text maps of every block.

Chroma and SD3 / SD3.5 work the same way (Chroma and SD3 with real CFG, e.g. cfg 4-5).
"""

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
    _add_attention_maps(g, sampler.out(1), decode, positions, sizes, notes, x=880, y=640)
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


CONTROLNET_NOTE = """## Prompt-to-Prompt with a ControlNet

**ControlNet Apply (Advanced)** works on an ordinary prompt here; its conditioning goes to **P2P Sampler**'s
*positive* input and its *negative* output to the sampler's *negative*. The sampler replaces the prompt's
text with the edit's prompts, row by row, and keeps what was applied to it: the control image steers the
source and the edit alike, and the edit changes only what the words changed.

- The control image: any picture, here the edges (**Canny**) of `p2p_demo_scene.png` (from the pack's
  `example_workflows/` folder; copy it into ComfyUI's `input/` folder), or load your own edge map.
- Other conditioning nodes work the same way on *positive*: Conditioning Set Area / Mask / Timestep Range,
  LoRA hooks. Connect one conditioning (not a Conditioning Combine of several).
"""


def _flux_word_swap() -> tuple[Graph, dict, list, dict]:
    g = Graph()
    unet = g.node("UNETLoader", "unet", unet_name=FLUX_MODELS["unet"][0]["name"], weight_dtype="default")
    clip = g.node("DualCLIPLoader", "clip", clip_name1=FLUX_MODELS["clip"][0]["name"],
                  clip_name2=FLUX_MODELS["clip"][1]["name"], type="flux", device="default")
    vae = g.node("VAELoader", "vae", vae_name=FLUX_MODELS["vae"][0]["name"])
    source = "a photo of a cat sitting on a wooden bench in a sunny garden"
    edit = g.node("P2PEditSpec", "edit", clip=clip, source_prompt=source,
                  target_prompt="a photo of a fox sitting on a wooden bench in a sunny garden",
                  mode="auto", cross_replace=0.8, self_replace=0.4, self_layers="coarse", word_schedule="")
    encoded = g.node("CLIPTextEncode", "source", title="Source prompt (for FluxGuidance)", clip=clip, text=source)
    guidance = g.node("FluxGuidance", "guidance", conditioning=encoded, guidance=3.5)
    neg = g.node("CLIPTextEncode", "negative", title="Negative prompt (unused at cfg 1)", clip=clip, text="")
    latent = g.node("EmptySD3LatentImage", "latent", width=1024, height=1024, batch_size=1)
    sampler = g.node("P2PSampler", "sampler", model=unet, edit=edit, negative=neg, latent_image=latent,
                     positive=guidance, seed=42, steps=20, cfg=1.0, sampler_name="euler", scheduler="simple",
                     denoise=1.0)
    decode = g.node("VAEDecode", "decode", samples=sampler, vae=vae)
    g.node("SaveImage", "save", images=decode, filename_prefix="p2p_flux")
    positions = {"unet": (40, 40), "clip": (40, 180), "vae": (40, 370), "edit": (420, 40), "source": (420, 540),
                 "guidance": (420, 760), "negative": (420, 870), "latent": (880, 540), "sampler": (880, 40),
                 "decode": (1240, 40), "save": (1240, 130)}
    sizes = {"unet": (330, 100), "clip": (330, 150), "vae": (330, 70), "edit": (420, 460), "source": (420, 180),
             "guidance": (320, 70), "negative": (420, 150), "latent": (320, 110), "sampler": (320, 360),
             "decode": (210, 50), "save": (420, 460)}
    notes = [(FLUX_NOTE, (40, 500), (340, 520))]
    _add_attention_maps(g, sampler.out(1), decode, positions, sizes, notes, x=880, y=700)
    return g, positions, notes, {"models": FLUX_MODELS, "sizes": sizes}


def _sd15_controlnet() -> tuple[Graph, dict, list, dict]:
    g = Graph()
    ckpt = g.node("CheckpointLoaderSimple", "ckpt", ckpt_name=SD15_CHECKPOINT["name"])
    source = "a red ball and a blue box on a table, studio photo"
    edit = g.node("P2PEditSpec", "edit", clip=ckpt.out(1), source_prompt=source,
                  target_prompt="a red ball and a wooden box on a table, studio photo", mode="auto",
                  cross_replace=0.8, self_replace=0.4, self_layers="coarse", word_schedule="")
    positive = g.node("CLIPTextEncode", "positive", title="Prompt for the ControlNet (its text is replaced)",
                      clip=ckpt.out(1), text=source)
    neg = g.node("CLIPTextEncode", "negative", title="Negative prompt", clip=ckpt.out(1), text="blurry, lowres")
    controlnet = g.node("ControlNetLoader", "controlnet", control_net_name=SD15_CANNY_CONTROLNET["name"])
    image = g.node("LoadImage", "image", image=INVERT_SCENE)
    edges = g.node("Canny", "edges", image=image.out(0), low_threshold=0.4, high_threshold=0.8)
    apply = g.node("ControlNetApplyAdvanced", "apply", positive=positive, negative=neg, control_net=controlnet,
                   image=edges, strength=0.8, start_percent=0.0, end_percent=1.0)
    latent = g.node("EmptyLatentImage", "latent", width=512, height=512, batch_size=1)
    sampler = g.node("P2PSampler", "sampler", model=ckpt.out(0), edit=edit, negative=apply.out(1),
                     latent_image=latent, seed=42, steps=30, cfg=7.5, sampler_name="euler", scheduler="normal",
                     denoise=1.0, positive=apply.out(0))
    decode = g.node("VAEDecode", "decode", samples=sampler, vae=ckpt.out(2))
    g.node("SaveImage", "save", images=decode, filename_prefix="p2p_controlnet")
    positions = {"ckpt": (40, 40), "edit": (420, 40), "positive": (420, 540), "negative": (420, 760),
                 "controlnet": (40, 760), "image": (40, 880), "edges": (40, 1240), "apply": (880, 540),
                 "latent": (880, 840), "sampler": (880, 40), "decode": (1240, 40), "save": (1240, 130)}
    sizes = {"ckpt": (330, 100), "edit": (420, 460), "positive": (420, 180), "negative": (420, 180),
             "controlnet": (330, 80), "image": (330, 330), "edges": (330, 110), "apply": (320, 190),
             "latent": (320, 110), "sampler": (320, 370), "decode": (210, 50), "save": (420, 460)}
    notes = [(CONTROLNET_NOTE, (40, 180), (340, 540))]
    models = {"ckpt": [SD15_CHECKPOINT], "controlnet": [SD15_CANNY_CONTROLNET]}
    return g, positions, notes, {"models": models, "sizes": sizes}


DEMO_NOTE = f"""## The demo model

**P2P Demo Model** is a small text-to-image model this project trained on {DEMO_SIZE}x{DEMO_SIZE} pictures of
coloured shapes (see MODEL.md). It runs in seconds on a CPU, so every knob can be tried at once.

Its words: *circle, square, triangle; red, green, blue, yellow, purple, orange; small, big; on the left,
on the right, at the top, at the bottom, in the center; striped; on a white / black / gray background*.

Its latent is {DEMO_LATENT}x{DEMO_LATENT} with 4 channels (**Empty Latent Image** at {DEMO_SIZE}x{DEMO_SIZE});
the pictures are scaled x{DEMO_VIEW_SCALE:g} for viewing.
"""

ATTENTION_NOTE = """## Attention heatmaps

**P2P Sampler**'s second output, *attention*, holds the cross-attention map of every word, captured while
sampling. **P2P Attention Maps** draws them inside the node: pick a word with the chips (shift-click adds
words; their maps are summed), switch between the source and each edit, set the opacity. The output
*heatmaps* is the same as a labelled image grid; the output *components* shows the top principal
components of the self-attention maps (the layout the model holds).
- **item**: which picture the image outputs show (0 = the source, 1 = the first edit).
- **words**: only these words or phrases (`circle, blue square`); empty = every word.

**P2P Attention Capture** (optional, on the sampler's *capture* input) chooses what is captured:
- **resolution**: *auto* = layers at 1/4 of the latent (the paper's 16x16 maps for SD1.5 at 512 px);
  finer is sharper but noisier;
- **start / end**: the steps averaged; **layers**: UNet blocks (*down+up* as in the paper);
- **per_step**: also one map per step (rows of the grid); **self_attention**: for the components.
- **enabled** off: nothing is captured, at no cost.
"""

GUIDER_NOTE = """## P2P Guider with SamplerCustomAdvanced

**P2P Guider** is Prompt-to-Prompt as a *guider*, for ComfyUI's custom sampling: any noise node, any
sampler node and any sigmas node (BasicScheduler, KarrasScheduler, AlignYourSteps, SplitSigmas for two
stages). With the same settings it gives exactly P2P Sampler's batch: **[source, edit]**.

- The injection windows (*cross_replace*, *self_replace*, word windows, local-blend *start*) are fractions
  of the sigmas the guider is given: on a split schedule, of each stage's own steps.
- **P2P Guider Attention** takes the guider and the sampler's *output* latent and hands the attention maps
  of that run to **P2P Attention Maps**.
"""


def _demo_guider() -> tuple[Graph, dict, list, dict]:
    g = Graph()
    model = g.node("P2PDemoModel", "model")
    source = "a red circle and a small blue square"
    edit = g.node("P2PEditSpec", "edit", clip=model.out(1), source_prompt=source,
                  target_prompt="a yellow circle and a small blue square", mode="auto", cross_replace=0.8,
                  self_replace=0.4, self_layers="coarse", word_schedule="")
    neg = g.node("CLIPTextEncode", "negative", title="Negative prompt", clip=model.out(1), text="")
    capture = g.node("P2PAttentionCapture", "capture", **DEMO_CAPTURE)
    guider = g.node("P2PGuider", "guider", model=model.out(0), edit=edit, negative=neg, cfg=5.0, capture=capture)
    noise = g.node("RandomNoise", "noise", noise_seed=DEMO_SEEDS["p2p_demo_word_swap"])
    sampler_select = g.node("KSamplerSelect", "sampler_select", sampler_name="euler")
    sigmas = g.node("BasicScheduler", "sigmas", model=model.out(0), scheduler="normal", steps=30, denoise=1.0)
    latent = g.node("EmptyLatentImage", "latent", width=DEMO_SIZE, height=DEMO_SIZE, batch_size=1)
    sampler = g.node("SamplerCustomAdvanced", "sampler", noise=noise, guider=guider, sampler=sampler_select,
                     sigmas=sigmas, latent_image=latent)
    decode = g.node("VAEDecode", "decode", samples=sampler.out(0), vae=model.out(2))
    scale = g.node("ImageScaleBy", "scale", image=decode, upscale_method="nearest-exact", scale_by=DEMO_VIEW_SCALE)
    g.node("SaveImage", "save", images=scale, filename_prefix="p2p_demo_guider")
    attention = g.node("P2PGuiderAttention", "attention", guider=guider, latent=sampler.out(0))
    positions = {"model": (40, 40), "edit": (380, 40), "negative": (40, 560), "capture": (380, 540),
                 "guider": (820, 40), "noise": (820, 300), "sampler_select": (820, 420), "sigmas": (820, 520),
                 "latent": (820, 680), "sampler": (1180, 40), "decode": (1180, 300), "scale": (1180, 390),
                 "save": (1540, 40), "attention": (1180, 540)}
    sizes = {"model": (300, 100), "edit": (400, 460), "negative": (300, 160), "capture": (400, 250),
             "guider": (320, 210), "noise": (320, 90), "sampler_select": (320, 70), "sigmas": (320, 130),
             "latent": (320, 110), "sampler": (320, 150), "decode": (210, 50), "scale": (320, 90),
             "save": (560, 320), "attention": (320, 70)}
    notes = [(f"{DEMO_NOTE}\n{GUIDER_NOTE}", (40, 780), (300, 520))]
    _add_attention_maps(g, attention.out(0), decode, positions, sizes, notes, x=1540, y=420)
    return g, positions, notes, {"sizes": sizes}


DEMO_WORKFLOWS = {
    # name: (note, source, targets with (mode, reweight, blend) options)
    "p2p_demo_word_swap": ("Word swap: the circle changes colour, everything else stays.",
                           "a red circle and a small blue square",
                           [("a yellow circle and a small blue square", {})]),
    "p2p_demo_refinement": ("Refinement: words are added; the new ones keep their own attention.",
                            "a purple triangle",
                            [("a striped purple triangle on a gray background", {})]),
    "p2p_demo_reweight": ("Re-weighting: the same prompt three times, with *green* weighted 0, 2 and 4: a fader on "
                          "how much of the picture takes the colour.",
                          "a big green square",
                          [("a big green square", {"weights": "green: 0"}),
                           ("a big green square", {"weights": "green: 2"}),
                           ("a big green square", {"weights": "green: 4"})]),
    "p2p_demo_local_blend": ("Local blend: only the circle may change; the square is kept pixel for pixel.",
                             "a red circle on the left and a blue square on the right",
                             [("a green circle on the left and a blue square on the right",
                               {"blend": ("red circle", "green circle")})]),
    "p2p_demo_attention_maps": ("Attention heatmaps of a word swap, drawn inside P2P Attention Maps (queue, then "
                                f"pick words). The demo's latent is {DEMO_LATENT}x{DEMO_LATENT}, so its maps "
                                f"are captured at 1/1 ({DEMO_LATENT}x{DEMO_LATENT}).",
                                "a red circle and a small blue square",
                                [("a yellow circle and a small blue square", {})]),
}


DEMO_SEEDS = {  # from tools/pick_demo_seeds.py
    "p2p_demo_word_swap": 1, "p2p_demo_refinement": 0, "p2p_demo_reweight": 2, "p2p_demo_local_blend": 2,
    "p2p_demo_attention_maps": 1, "p2p_demo_style_aligned": 2, "p2p_demo_attention_segments": 1,
}


def _demo(name: str):
    intro, source, targets = DEMO_WORKFLOWS[name]
    g = Graph()
    model = g.node("P2PDemoModel", "model")
    previous, positions, sizes = None, {"model": (40, 40)}, {"model": (300, 100)}
    x = 380
    for k, (target, options) in enumerate(targets):
        chained: dict[str, Any] = {"previous": previous} if previous is not None else {}
        edit = g.node("P2PEditSpec", f"edit{k}", clip=model.out(1), source_prompt=source, target_prompt=target,
                      mode="auto", cross_replace=0.8, self_replace=0.4, self_layers="coarse", word_schedule="",
                      **chained)
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
    latent = g.node("EmptyLatentImage", "latent", width=DEMO_SIZE, height=DEMO_SIZE, batch_size=1)
    sampler = g.node("P2PSampler", "sampler", model=model.out(0), edit=previous, negative=neg, latent_image=latent,
                     seed=DEMO_SEEDS[name], steps=30, cfg=5.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    decode = g.node("VAEDecode", "decode", samples=sampler, vae=model.out(2))
    scale = g.node("ImageScaleBy", "scale", image=decode, upscale_method="nearest-exact", scale_by=DEMO_VIEW_SCALE)
    g.node("SaveImage", "save", images=scale, filename_prefix=name)
    positions |= {"negative": (40, 560), "latent": (40, 780), "sampler": (x, 40), "decode": (x, 420),
                  "scale": (x, 510), "save": (x + 360, 40)}
    sizes |= {"negative": (300, 160), "latent": (300, 110), "sampler": (320, 330), "decode": (210, 50),
              "scale": (320, 90), "save": (560, 320)}
    note = f"{DEMO_NOTE}\n**This workflow.** {intro}\n"
    notes = [(note, (40, 180), (300, 360))]
    if name == "p2p_demo_attention_maps":
        sampler.inputs["capture"] = g.node("P2PAttentionCapture", "capture", **DEMO_CAPTURE)
        _add_attention_maps(g, sampler.out(1), decode, positions, sizes, notes, x=x, y=640)
        positions["capture"], sizes["capture"] = (x - 440, 640), (400, 250)
    return g, positions, notes, {"sizes": sizes}


def _add_attention_maps(g: Graph, attention, decode, positions: dict, sizes: dict, notes: list, x: int, y: int) -> None:
    """P2P Attention Maps on a run's `attention` output and decoded batch, with previews of its image outputs and
    a note."""
    maps = g.node("P2PAttentionMaps", "maps", attention=attention, images=decode, item=1, components=6,
                  words="")
    g.node("PreviewImage", "heatmaps", title="Heatmaps grid", images=maps.out(0))
    g.node("PreviewImage", "components", title="Self-attention components", images=maps.out(1))
    positions |= {"maps": (x, y), "heatmaps": (x + 440, y), "components": (x + 440, y + 330)}
    sizes |= {"maps": (420, 640), "heatmaps": (520, 300), "components": (520, 300)}
    notes.append((ATTENTION_NOTE, (x + 1000, y), (420, 560)))


INVERT_NOTE = """## Editing a real image

**P2P Invert** finds the noise from which the model regenerates your picture, so **P2P Sampler** can edit it
like a generated one: the source item is your picture, each edit starts from it.

- **image**: any picture; it is centre-cropped (not resized) to a multiple of the model's size step (64 px
  for SD, 32 px for the demo model). This example uses `p2p_demo_scene.png` (from the pack's
  `example_workflows/` folder; copy it into ComfyUI's `input/` folder), a rendered scene the demo model
  never generated.
- **source_prompt** describes the picture; P2P Edit Spec must use the same text.
- **method**: *direct* (default) reproduces the picture exactly at the cost of one inversion; *null_text*
  optimises the unconditional prompt per step (slow, for the classic results); *negative_prompt* and *ddim*
  are quick and approximate.
- **steps / scheduler / cfg**: P2P Sampler must use the same steps and scheduler (and, for null_text, cfg),
  and a deterministic sampler (euler, ddim, heun, dpmpp_2m, lms, ...).

The inversion does not depend on the edited prompt, so changing the target prompt, weights or blend
words re-runs only the sampler: ComfyUI keeps the inversion. **P2P Save Inversion** writes it to
`output/p2p_inversions/`; **P2P Load Inversion** reads it back.
"""

INVERT_SCENE = "p2p_demo_scene.png"
INVERT_SOURCE = "a red circle on the left and a blue square on the right"


def _demo_invert() -> tuple[Graph, dict, list, dict]:
    g = Graph()
    model = g.node("P2PDemoModel", "model")
    image = g.node("LoadImage", "image", image=INVERT_SCENE)
    neg = g.node("CLIPTextEncode", "negative", title="Negative prompt", clip=model.out(1), text="")
    invert = g.node("P2PInvert", "invert", model=model.out(0), vae=model.out(2), image=image.out(0), negative=neg,
                    steps=30, cfg=5.0, scheduler="normal", method="direct", inner_steps=10, early_stop=1e-5,
                    learning_rate=1e-2, clip=model.out(1), source_prompt=INVERT_SOURCE)
    edit = g.node("P2PEditSpec", "edit", clip=model.out(1), source_prompt=INVERT_SOURCE,
                  target_prompt="a yellow circle on the left and a blue square on the right", mode="auto",
                  cross_replace=0.8, self_replace=0.4, self_layers="coarse", word_schedule="")
    sampler = g.node("P2PSampler", "sampler", model=model.out(0), edit=edit, negative=neg, seed=0, steps=30, cfg=5.0,
                     sampler_name="euler", scheduler="normal", denoise=1.0, inversion=invert.out(0))
    decode = g.node("VAEDecode", "decode", samples=sampler, vae=model.out(2))
    scale = g.node("ImageScaleBy", "scale", image=decode, upscale_method="nearest-exact", scale_by=DEMO_VIEW_SCALE)
    g.node("SaveImage", "save", images=scale, filename_prefix="p2p_demo_invert")
    rec_scale = g.node("ImageScaleBy", "rec_scale", image=invert.out(1), upscale_method="nearest-exact",
                       scale_by=DEMO_VIEW_SCALE)
    g.node("PreviewImage", "reconstruction", title="Reconstruction", images=rec_scale)
    g.node("P2PSaveInversion", "save_inversion", inversion=invert.out(0), filename_prefix="p2p_demo_scene")
    positions = {"model": (40, 40), "image": (40, 560), "negative": (40, 940), "invert": (380, 40),
                 "edit": (380, 600), "sampler": (820, 40), "decode": (820, 420), "scale": (820, 510),
                 "save": (1180, 40), "rec_scale": (820, 650), "reconstruction": (1180, 420),
                 "save_inversion": (820, 790)}
    sizes = {"model": (300, 100), "image": (300, 340), "negative": (300, 160), "invert": (400, 520),
             "edit": (400, 460), "sampler": (320, 330), "decode": (210, 50), "scale": (320, 90), "save": (420, 340),
             "rec_scale": (320, 90), "reconstruction": (420, 320), "save_inversion": (320, 90)}
    notes = [(f"{DEMO_NOTE}\n{INVERT_NOTE}", (1640, 40), (440, 760))]
    return g, positions, notes, {"sizes": sizes}


STYLE_NOTE = """## StyleAligned

**P2P Style Aligned** patches the MODEL so that every picture of a batch takes the style of the first one
(item 0, the reference): each item's self-attention also attends to item 0's keys and values, after matching
its queries and keys to item 0's statistics (AdaIN). Item 0 is exactly what it would be without the patch.

**P2P Prompt Batch** gives each item its own prompt (one per line). Here item 0 names a background and a
texture; the others name only their colour and shape, and take item 0's background. The lower KSampler
runs the same batch without the patch, for comparison.

Any sampler works (KSampler, SamplerCustomAdvanced, P2P Sampler). To use a real picture as the reference,
connect a **P2P Invert** to *reference_inversion*.
"""

STYLE_PROMPTS = ("a big red striped circle on a black background", "a blue square", "a green triangle",
                 "a yellow circle")


def _demo_style_aligned() -> tuple[Graph, dict, list, dict]:
    g = Graph()
    model = g.node("P2PDemoModel", "model")
    style = g.node("P2PStyleAligned", "style", model=model.out(0), layers="all", adain="queries+keys",
                   key_scale=1.0, reference_weight=1.0, share_items="")
    prompts = g.node("P2PPromptBatch", "prompts", clip=model.out(1), prompts="\n".join(STYLE_PROMPTS))
    neg = g.node("CLIPTextEncode", "negative", title="Negative prompt", clip=model.out(1), text="")
    latent = g.node("EmptyLatentImage", "latent", width=DEMO_SIZE, height=DEMO_SIZE, batch_size=len(STYLE_PROMPTS))
    positions = {"model": (40, 40), "style": (380, 40), "prompts": (380, 340), "negative": (380, 600),
                 "latent": (380, 800)}
    sizes = {"model": (300, 100), "style": (400, 260), "prompts": (400, 220), "negative": (400, 160),
             "latent": (400, 110)}
    for row, (suffix, patched, title) in enumerate((("", style, "KSampler (style aligned)"),
                                                   ("_plain", model, "KSampler (without the patch)"))):
        y = 40 + 480 * row
        sampler = g.node("KSampler", f"sampler{suffix}", title=title, model=patched.out(0), positive=prompts,
                         negative=neg, latent_image=latent, seed=DEMO_SEEDS["p2p_demo_style_aligned"], steps=30,
                         cfg=5.0, sampler_name="euler", scheduler="normal", denoise=1.0)
        decode = g.node("VAEDecode", f"decode{suffix}", samples=sampler, vae=model.out(2))
        scale = g.node("ImageScaleBy", f"scale{suffix}", image=decode, upscale_method="nearest-exact",
                       scale_by=DEMO_VIEW_SCALE)
        g.node("SaveImage", f"save{suffix}", images=scale, filename_prefix=f"p2p_demo_style_aligned{suffix}")
        positions |= {f"sampler{suffix}": (820, y), f"decode{suffix}": (1180, y), f"scale{suffix}": (1180, y + 90),
                      f"save{suffix}": (1540, y)}
        sizes |= {f"sampler{suffix}": (320, 330), f"decode{suffix}": (210, 50), f"scale{suffix}": (320, 90),
                  f"save{suffix}": (700, 420)}
    notes = [(f"{DEMO_NOTE}\n{STYLE_NOTE}", (40, 180), (300, 720))]
    return g, positions, notes, {"sizes": sizes}


SEGMENTS_NOTE = f"""## Attention segments as a blend mask

The upper **P2P Sampler** runs the word swap once to capture its attention (self-attention included).
**P2P Attention Segments** splits the source picture into segments by its self-attention (cells that attend
alike belong together) and labels each with the word whose cross-attention falls on it; its *mask* output is
the segments of the chosen words (here *circle*), at the latent's size.

The lower P2P Sampler runs the same edit with **P2P Local Blend** given that mask and no words: outside the
circle's segments the edit is the source, pixel for pixel.

On a real checkpoint capture at resolution 1/2 (SD1.5) for finer segments; the demo's {DEMO_LATENT}x{DEMO_LATENT}
latent is captured at 1/1.
"""

SEGMENTS_PROMPTS = ("a red circle on the left and a blue square on the right",
                    "a yellow circle on the left and a blue square on the right")


def _demo_attention_segments() -> tuple[Graph, dict, list, dict]:
    g = Graph()
    model = g.node("P2PDemoModel", "model")
    source, target = SEGMENTS_PROMPTS
    edit = g.node("P2PEditSpec", "edit", clip=model.out(1), source_prompt=source, target_prompt=target, mode="auto",
                  cross_replace=0.8, self_replace=0.4, self_layers="coarse", word_schedule="")
    neg = g.node("CLIPTextEncode", "negative", title="Negative prompt", clip=model.out(1), text="")
    latent = g.node("EmptyLatentImage", "latent", width=DEMO_SIZE, height=DEMO_SIZE, batch_size=1)
    capture = g.node("P2PAttentionCapture", "capture", **DEMO_CAPTURE)
    run = {"model": model.out(0), "negative": neg, "latent_image": latent,
           "seed": DEMO_SEEDS["p2p_demo_attention_segments"], "steps": 30, "cfg": 5.0, "sampler_name": "euler",
           "scheduler": "normal", "denoise": 1.0}
    first = g.node("P2PSampler", "sampler", title="P2P Sampler (captures attention)", edit=edit, capture=capture,
                   **run)
    decode = g.node("VAEDecode", "decode", samples=first, vae=model.out(2))
    segments = g.node("P2PAttentionSegments", "segments", attention=first.out(1), item=0, segments=5,
                      words="circle", threshold=0.3, images=decode)
    blend = g.node("P2PLocalBlend", "blend", edit=edit, source_words="", target_words="", threshold=0.3, start=0.2,
                   subtract_words="", mask=segments.out(2))
    second = g.node("P2PSampler", "blended", title="P2P Sampler (blended by the segment mask)", edit=blend, **run)
    decode2 = g.node("VAEDecode", "decode_blended", samples=second, vae=model.out(2))
    scale = g.node("ImageScaleBy", "scale", image=decode2, upscale_method="nearest-exact", scale_by=DEMO_VIEW_SCALE)
    g.node("SaveImage", "save", images=scale, filename_prefix="p2p_demo_attention_segments")
    g.node("PreviewImage", "labels_preview", title="Segments", images=segments.out(0))
    positions = {"model": (40, 40), "edit": (380, 40), "negative": (40, 560), "latent": (40, 780),
                 "capture": (380, 540), "sampler": (820, 40), "decode": (820, 420), "segments": (1180, 40),
                 "labels_preview": (1620, 40), "blend": (820, 540), "blended": (1180, 800),
                 "decode_blended": (1540, 800), "scale": (1540, 890), "save": (1900, 800)}
    sizes = {"model": (300, 100), "edit": (400, 460), "negative": (300, 160), "latent": (300, 110),
             "capture": (400, 250), "sampler": (320, 330), "decode": (210, 50), "segments": (400, 680),
             "labels_preview": (640, 300), "blend": (320, 250), "blended": (320, 330), "decode_blended": (210, 50),
             "scale": (320, 90), "save": (560, 320)}
    notes = [(f"{DEMO_NOTE}\n{SEGMENTS_NOTE}", (40, 920), (740, 420))]
    return g, positions, notes, {"sizes": sizes}


TRANSFER_NOTE = """## Appearance transfer

**P2P Appearance Transfer** (cross-image attention) keeps the layout of the *structure* picture and takes the
look of the *appearance* picture. Both pictures are inverted with **P2P Invert** under the same plain prompt
(no colours) and the same steps and scheduler; the transfer samples with that prompt. In the decoder's
self-attention the output's queries attend to the appearance picture's keys and values.

Copy `p2p_demo_scene.png` and `p2p_demo_appearance.png` from the pack's `example_workflows/` folder into
ComfyUI's `input/` folder. The saved batch shows the output, then the two pictures as the run retraced them.

On the demo model the look moves little (MODEL.md measures it); the method is made for large models such as
SD1.5 and SDXL, where the self-attention of two pictures of one kind of object corresponds. *swap_guidance*
is 1 (off) here: on the demo model it costs more layout than the colour it adds; 3.5, the node's default, is
the paper's setting for real checkpoints.
"""

TRANSFER_SCENE = "p2p_demo_appearance.png"
TRANSFER_PROMPT = "a circle on the left and a square on the right"


def _demo_appearance_transfer() -> tuple[Graph, dict, list, dict]:
    g = Graph()
    model = g.node("P2PDemoModel", "model")
    neg = g.node("CLIPTextEncode", "negative", title="Negative prompt", clip=model.out(1), text="")
    positions = {"model": (40, 40), "negative": (40, 560)}
    sizes = {"model": (300, 100), "negative": (300, 160)}
    inversions = {}
    for row, (name, picture) in enumerate((("structure", INVERT_SCENE), ("appearance", TRANSFER_SCENE))):
        image = g.node("LoadImage", f"{name}_image", title=f"{name.capitalize()} picture", image=picture)
        inversions[name] = g.node("P2PInvert", name, title=f"P2P Invert ({name})", model=model.out(0),
                                  vae=model.out(2), image=image.out(0), negative=neg, steps=30, cfg=5.0,
                                  scheduler="normal", method="direct", inner_steps=10, early_stop=1e-5,
                                  learning_rate=1e-2, clip=model.out(1), source_prompt=TRANSFER_PROMPT)
        positions |= {f"{name}_image": (380, 40 + 560 * row), name: (720, 40 + 560 * row)}
        sizes |= {f"{name}_image": (300, 340), name: (400, 520)}
    positive = g.node("CLIPTextEncode", "positive", title="Prompt", clip=model.out(1), text=TRANSFER_PROMPT)
    # the node's defaults, but swap guidance off: on the demo model it costs more layout than it adds colour (MODEL.md)
    settings: dict[str, Any] = dataclasses.asdict(AppearanceSpec(swap_guidance=1.0))
    transfer = g.node("P2PAppearanceTransfer", "transfer", model=model.out(0), structure=inversions["structure"],
                      appearance=inversions["appearance"], positive=positive,
                      negative=neg, sampler_name="euler", **settings)
    decode = g.node("VAEDecode", "decode", samples=transfer.out(1), vae=model.out(2))
    scale = g.node("ImageScaleBy", "scale", image=decode, upscale_method="nearest-exact", scale_by=DEMO_VIEW_SCALE)
    g.node("SaveImage", "save", images=scale, filename_prefix="p2p_demo_appearance_transfer")
    positions |= {"positive": (40, 760), "transfer": (1160, 40), "decode": (1160, 460), "scale": (1160, 550),
                  "save": (1520, 40)}
    sizes |= {"positive": (300, 160), "transfer": (320, 380), "decode": (210, 50), "scale": (320, 90),
              "save": (700, 320)}
    notes = [(f"{DEMO_NOTE}\n{TRANSFER_NOTE}", (1520, 400), (500, 560))]
    return g, positions, notes, {"sizes": sizes}


WORKFLOWS = {
    **{name: (lambda n=name: _demo(n)) for name in DEMO_WORKFLOWS},
    "p2p_demo_appearance_transfer": _demo_appearance_transfer,
    "p2p_demo_style_aligned": _demo_style_aligned,
    "p2p_demo_attention_segments": _demo_attention_segments,
    "p2p_demo_invert_real_image": _demo_invert,
    "p2p_demo_guider": _demo_guider,
    "p2p_word_swap_sd15": _sd15_word_swap,
    "p2p_controlnet_sd15": _sd15_controlnet,
    "p2p_reweight_local_blend_sdxl": _sdxl_reweight_blend,
    "p2p_word_swap_flux": _flux_word_swap,
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
    for name in (INVERT_SCENE, TRANSFER_SCENE):
        write_scene(OUT / name)
        print(f"wrote example_workflows/{name}")


def write_scene(path: Path) -> None:
    """A picture the inversion examples use (by its file name): rendered by the shapes world, not generated by
    the model."""
    import numpy as np
    from PIL import Image

    from shapes_demo.autoencoder import SUPERSAMPLE
    from shapes_demo.world import Obj, Scene, render

    objects = {  # the scene the inversion example edits; the look the appearance example takes
        INVERT_SCENE: (Obj("circle", "red", "big", 6.5, 9.0, 15.0, "left"),
                       Obj("square", "blue", "big", 6.0, 23.5, 17.0, "right")),
        TRANSFER_SCENE: (Obj("circle", "green", "big", 5.5, 8.0, 19.0, "left"),
                         Obj("square", "yellow", "big", 5.0, 24.0, 12.0, "right")),
    }[path.name]
    image, _ = render(Scene(objects, "white"), supersample=SUPERSAMPLE, size=DEMO_SIZE)
    Image.fromarray((image * 255).round().astype(np.uint8)).save(path)


if __name__ == "__main__":
    main()
