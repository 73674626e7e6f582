# The targets the README names. Everything installs into .venv with the pinned
# versions from constraints.txt, so every machine and CI get the same set.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= datasets/synthetic
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: venv install quickstart test browser lint format clean-data gpu-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv install: $(STAMP)

## set up, generate the synthetic RGB-D data, train mid fusion and the rgb-only baseline, print the table
quickstart: $(STAMP)
	$(BIN)/rgbx-fusion quickstart --root $(DATA)

## set up, then lint, type-check and run the default test suite
test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q

## Debian's chromium and chromium-driver, for the report.html browser test (installed with
## apt-get when missing; RGBX_SKIP_BROWSER=1 skips that test instead)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$RGBX_SKIP_BROWSER" = 1 ]; then echo "RGBX_SKIP_BROWSER=1: browser test skipped"; \
	elif command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y chromium chromium-driver; \
	else \
		echo "chromium/chromedriver missing and no apt-get: install Chromium and its driver" \
			"(chromedriver on PATH), or set RGBX_SKIP_BROWSER=1 to skip the browser test" >&2; \
	fi

## on a CUDA machine: the gpu-marked tests, then the CMX-like and ESANet-like recipes in
## bf16 (inference at batch 1, training at batch 8), results under runs/bench-gpu
GPU_BENCH = $(BIN)/rgbx-fusion benchmark --device cuda --resolutions 480x640 --batch 1,8 \
	--aux-channels 3 --precision bf16-mixed --num-classes 40
gpu-check: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu
	$(GPU_BENCH) --config configs/nyudv2/base.yaml --config configs/nyudv2/cmx_b2.yaml \
		--out runs/bench-gpu/cmx_b2
	$(GPU_BENCH) --config configs/nyudv2/base.yaml --config configs/nyudv2/esanet_r34.yaml \
		--channels-last --out runs/bench-gpu/esanet_r34

lint: $(STAMP)
	$(BIN)/ruff check rgbx_fusion tests
	$(BIN)/ruff format --check rgbx_fusion tests
	$(BIN)/mypy rgbx_fusion

format: $(STAMP)
	$(BIN)/ruff format rgbx_fusion tests
	$(BIN)/ruff check --fix rgbx_fusion tests

clean-data:
	rm -rf $(DATA)
