"""`make demo`: run the demo model's word-swap example workflow headless and write its images to out/.

The workflow file is the one users load in the UI (example_workflows/p2p_demo_word_swap.json), run by
ComfyUI's own executor on the demo model this project trains (shapes_demo/, MODEL.md).
Writes out/source.png, out/edit_1.png (...) and out/comparison.png, plus what the workflow's Save Image
node writes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .host import ROOT

WORKFLOW = ROOT / "example_workflows" / "p2p_demo_word_swap.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out")
    parser.add_argument("--workflow", type=Path, default=WORKFLOW)
    args = parser.parse_args()
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    from . import host as host_module
    from .workflow import to_api

    host = host_module.start(("--use-pytorch-cross-attention",))  # PyTorch SDPA: ~3x ComfyUI's CPU default here
    import folder_paths  # ComfyUI's, importable once the host is up
    import numpy as np
    from PIL import Image

    folder_paths.set_output_directory(str(out_dir))
    workflow = json.loads(args.workflow.read_text())
    prompt = to_api(workflow, host.nodes.NODE_CLASS_MAPPINGS)
    save = next(n for n in prompt.values() if n["class_type"] == "SaveImage")
    shown = save["inputs"]["images"][0]  # the node whose images are saved
    images = host.run(prompt, keep=(shown,))[shown][0]  # [source, edit 1, ...], HWC in 0..1

    names = ["source"] + [f"edit_{i}" for i in range(1, images.shape[0])]
    pixels = [(img.clamp(0, 1).numpy() * 255).round().astype(np.uint8) for img in images]
    for name, array in zip(names, pixels, strict=True):
        Image.fromarray(array).save(out_dir / f"{name}.png")
    Image.fromarray(np.concatenate(pixels, axis=1)).save(out_dir / "comparison.png")
    edits = [n for n in prompt.values() if n["class_type"] == "P2PEditSpec"]
    print(f'source: "{edits[0]["inputs"]["source_prompt"]}"')
    for i, e in enumerate(edits, 1):
        print(f'edit {i}: "{e["inputs"]["target_prompt"]}"')
    print(f"wrote {', '.join(n + '.png' for n in names)} and comparison.png to {out_dir} "
          f"in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
