# Commands for a fresh machine: `make demo` (headless demo, images in out/) and `make test`.
# COMFYUI_PATH=/path/to/ComfyUI uses an existing ComfyUI instead of the one `make setup` fetches.
SHELL := /bin/bash
PY := .venv/bin/python
COMFYUI_PATH ?= $(CURDIR)/.host/ComfyUI
export COMFYUI_PATH
PORT ?= 8188

.PHONY: setup demo test test-fast check serve bench clean

setup: .venv/.setup-done

.venv/.setup-done: tools/setup_host.sh tools/constraints.txt requirements-dev.txt
	bash tools/setup_host.sh
	touch $@

demo: setup
	$(PY) -m tools.demo --out out

test: setup
	$(PY) -m pytest -c tests/pytest.ini -q tests

test-fast: setup
	$(PY) -m pytest -c tests/pytest.ini -q -m "not browser and not slow" tests

# ty checks the pack as the package ComfyUI imports (a link named prompt_to_prompt), then the support code; its
# settings come from tools/ty.toml alone (never from a ty.toml found in a folder above the checkout).
TYPECHECK := .host/typecheck
TY := $(CURDIR)/.venv/bin/ty check --config-file $(CURDIR)/tools/ty.toml --python $(CURDIR)/.venv \
	--extra-search-path $(COMFYUI_PATH)

check: setup
	$(PY) -m ruff check .
	mkdir -p $(TYPECHECK) && ln -sfn $(CURDIR) $(TYPECHECK)/prompt_to_prompt
	cd $(TYPECHECK) && $(TY) --project . prompt_to_prompt/__init__.py prompt_to_prompt/p2p prompt_to_prompt/adapter \
		prompt_to_prompt/nodes
	$(TY) --extra-search-path tests tools tests bench shapes_demo

bench: setup
	$(PY) -m bench.shapesbench

serve: setup
	cd "$(COMFYUI_PATH)" && $(CURDIR)/$(PY) main.py --cpu --listen 127.0.0.1 --port $(PORT)

clean:
	rm -rf .venv .host out test-artifacts
