# medcloud — the front door. Quick start: `make serve`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup serve test dcmtk orthanc bench bench-imaging lint check fmt clean spec

setup: $(STAMP)

# Re-install only when the dependency list changes; safe to run any number of times.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

serve: setup
	$(BIN)/medcloud serve

test: setup dcmtk
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

# dcmtk (echoscu, storescu, findscu, movescu, getscu, storescp): the DIMSE interop peers of
# tests/imaging/dimse and bench/dimse.py.
dcmtk:
	@command -v storescu >/dev/null || (apt-get update && apt-get install -y dcmtk)

bench: setup
	@command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/run.py

# Orthanc + its DICOMweb plugin: the side-by-side peer of bench/imaging.py and bench/dimse.py. The
# Debian package starts a system Orthanc (ports 4242/8042); the benchmarks run their own, so stop it.
orthanc:
	@command -v Orthanc >/dev/null && dpkg -s orthanc-dicomweb >/dev/null 2>&1 || \
		(apt-get update && apt-get install -y orthanc orthanc-dicomweb && \
		 (service orthanc stop >/dev/null 2>&1 || true))

# DICOMweb vs Orthanc (STOW-RS, QIDO-RS, WADO-RS metadata, rendered); BENCH_ARGS=--quick for a smoke run.
BENCH_ARGS ?=
bench-imaging: setup orthanc
	$(BIN)/python bench/imaging.py $(BENCH_ARGS)

lint: setup
	$(BIN)/ruff check medcloud tests bench tools
	$(BIN)/mypy medcloud

check: lint test

fmt: setup
	$(BIN)/ruff format medcloud tests bench tools
	$(BIN)/ruff check --fix medcloud tests bench tools

# Regenerate medcloud/fhir/_spec from ../shared/spec/fhir-r4.
spec: setup
	$(BIN)/python tools/generate_fhir_spec.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
