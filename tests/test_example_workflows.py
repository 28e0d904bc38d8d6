"""The example workflows: up to date with the nodes, and runnable headless through ComfyUI's executor.

The demo-model workflows run as they are; the SD1.5/SDXL/Flux ones get their checkpoint loader (or UNet, CLIP and
VAE loaders, and ControlNet loader) swapped for a small random model of the same family, at a small size (no
checkpoint can be downloaded here)."""

import json
import shutil
from pathlib import Path

import pytest

from tools.build_workflows import DEMO_SIZE, WORKFLOWS, build
from tools.workflow import to_api

ROOT = Path(__file__).resolve().parents[1]
# sd15-64: the random UNet a random ControlNet fits (channels in multiples of 64, as ComfyUI's loader assumes)
FAMILY = {"p2p_word_swap_sd15": "sd15", "p2p_reweight_local_blend_sdxl": "sdxl", "p2p_controlnet_sd15": "sd15-64",
          "p2p_word_swap_flux": "flux"}
# loaders of one part of a model, and which output of RandomModelLoader (MODEL, CLIP, VAE) stands in for theirs
PART_LOADERS = {"UNETLoader": 0, "DualCLIPLoader": 1, "VAELoader": 2}


def test_every_workflow_is_generated_and_current(host):
    files = {p.stem for p in (ROOT / "example_workflows").glob("*.json")}
    assert files == set(WORKFLOWS)
    from tools.build_workflows import INVERT_SCENE, TRANSFER_SCENE, write_scene

    for name in (INVERT_SCENE, TRANSFER_SCENE):
        scene = ROOT / "test-artifacts" / name
        scene.parent.mkdir(exist_ok=True)
        write_scene(scene)
        assert scene.read_bytes() == (ROOT / "example_workflows" / name).read_bytes()
    for name, workflow in build(host.nodes.NODE_CLASS_MAPPINGS).items():
        committed = json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())
        assert committed == workflow, f"example_workflows/{name}.json is stale: run `python -m tools.build_workflows`"


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_runs_headless(host, name):
    workflow = json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())
    prompt = to_api(workflow, host.nodes.NODE_CLASS_MAPPINGS)
    demo = name.startswith("p2p_demo")
    size = DEMO_SIZE if demo else 128
    for nid, node in prompt.items():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["class_type"], node["inputs"] = "RandomModelLoader", {"shape": FAMILY[name], "seed": 0,
                                                                       "dtype": "float32"}
        elif node["class_type"] in PART_LOADERS:
            output = PART_LOADERS[node["class_type"]]
            node["class_type"], node["inputs"] = "RandomModelLoader", {"shape": FAMILY[name], "seed": 0,
                                                                       "dtype": "float32"}
            for other in prompt.values():  # links to the loader's only output now take the part they need
                other["inputs"].update({key: [ref[0], output] for key, ref in other["inputs"].items()
                                        if isinstance(ref, list) and ref[0] == nid})
        elif node["class_type"] == "ControlNetLoader":
            node["class_type"], node["inputs"] = "RandomControlNetLoader", {"seed": 3}
        elif node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage") and not demo:
            node["inputs"].update(width=128, height=128)
        elif node["class_type"] in ("P2PSampler", "P2PInvert", "BasicScheduler", "KSampler"):
            node["inputs"]["steps"] = 4
        elif node["class_type"] == "LoadImage":  # the picture the example tells users to copy into input/
            import folder_paths

            inputs = Path(folder_paths.get_input_directory())
            inputs.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "example_workflows" / node["inputs"]["image"], inputs)
    decode = next(nid for nid, n in prompt.items() if n["class_type"] == "VAEDecode")
    edits = sum(1 for n in prompt.values() if n["class_type"] == "P2PEditSpec")
    # a P2P run decodes the source and each edit; an appearance transfer its three pictures; a batch sampled
    # otherwise (StyleAligned), the latent batch
    if edits:
        batch = 1 + edits
    elif any(n["class_type"] == "P2PAppearanceTransfer" for n in prompt.values()):
        batch = 3
    else:
        batch = next(n["inputs"]["batch_size"] for n in prompt.values() if n["class_type"] == "EmptyLatentImage")
    images = host.run(prompt, keep=(decode,))[decode][0]
    assert images.shape == (batch, size, size, 3)


SAVED_BEFORE_V3 = ROOT / "tests" / "fixtures" / "saved_before_v3_attention_maps.json"


def test_a_workflow_saved_before_the_v3_nodes_queues_the_prompt_of_today(host):
    """A UI-format workflow saved with the V1 nodes (no `positive` socket on P2P Sampler) still loads and makes the
    same prompt as the current example; the frontend test loads it in the browser too. (Its widget values are the
    demo model's of today: latent size, view scale and seed were set to v3's when v3 became the demo model.)"""
    saved = to_api(json.loads(SAVED_BEFORE_V3.read_text()), host.nodes.NODE_CLASS_MAPPINGS)
    current = json.loads((ROOT / "example_workflows" / "p2p_demo_attention_maps.json").read_text())
    assert saved == to_api(current, host.nodes.NODE_CLASS_MAPPINGS)
    sampler = next(node for node in json.loads(SAVED_BEFORE_V3.read_text())["nodes"] if node["type"] == "P2PSampler")
    assert "positive" not in {i["name"] for i in sampler["inputs"]}, "the fixture must predate the positive input"
