"""`make demo`: run the word-swap example workflow headless and write its images to out/.

The workflow file is the one users load in the UI (example_workflows/p2p_word_swap_sd15.json), run by
ComfyUI's own executor. No checkpoint can be downloaded here, so its checkpoint loader is replaced by a
small model built from ComfyUI's classes with random weights: the images show the pipeline running
(source and edit share their structure), not a meaningful picture.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .host import ROOT

WORKFLOW = ROOT / "example_workflows" / "p2p_word_swap_sd15.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out")
    args = parser.parse_args()
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    from . import host as host_module
    from .random_models import RandomModelLoader
    from .workflow import to_api

    host = host_module.start(("--use-pytorch-cross-attention",))  # PyTorch SDPA: ~3x ComfyUI's CPU default here
    import folder_paths  # ComfyUI's, importable once the host is up
    import numpy as np
    from PIL import Image

    host.register({"RandomModelLoader": RandomModelLoader})
    folder_paths.set_output_directory(str(out_dir))
    prompt = to_api(json.loads(WORKFLOW.read_text()), host.nodes.NODE_CLASS_MAPPINGS)
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["class_type"] = "RandomModelLoader"
            node["inputs"] = {"shape": "sd15", "seed": 0, "dtype": "float32"}
    decode = next(nid for nid, n in prompt.items() if n["class_type"] == "VAEDecode")
    images = host.run(prompt, keep=(decode,))[decode][0]  # [source, edit], HWC in 0..1

    names = ["source"] + [f"edit_{i}" for i in range(1, images.shape[0])]
    pixels = [(img.clamp(0, 1).numpy() * 255).round().astype(np.uint8) for img in images]
    for name, array in zip(names, pixels):
        Image.fromarray(array).save(out_dir / f"{name}.png")
    Image.fromarray(np.concatenate(pixels, axis=1)).save(out_dir / "comparison.png")
    print(f"wrote {', '.join(n + '.png' for n in names)} and comparison.png to {out_dir} "
          f"in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
