# eip-plugins: two framework environments that can never share one interpreter
# (mace-torch 0.3.16 pins e3nn==0.4.4; nequip 0.19 needs e3nn>=0.6).
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV_MACE := .venv-mace
VENV_NEQUIP := .venv-nequip
PYTEST_ARGS ?=

.PHONY: help venv-mace venv-nequip test test-mace test-nequip lint demo clean-venvs

help:
	@echo "make demo         train + evaluate + MD/UDD with the MACE e2ip head on the shipped data"
	@echo "make test         build both environments if missing and run every suite"
	@echo "make venv-mace    create $(VENV_MACE)   (torch, mace-torch, eip-plugins -e)"
	@echo "make venv-nequip  create $(VENV_NEQUIP) (torch, nequip, eip-plugins -e)"
	@echo "make lint         ruff check + ruff format --check (what pre-commit runs)"

venv-mace: $(VENV_MACE)/.installed
venv-nequip: $(VENV_NEQUIP)/.installed

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(VENV_MACE)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_MACE)
	$(VENV_MACE)/bin/pip install -q $(TORCH_SPEC)
	$(VENV_MACE)/bin/pip install -q -e ".[mace,dev]"
	touch $@

$(VENV_NEQUIP)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_NEQUIP)
	$(VENV_NEQUIP)/bin/pip install -q $(TORCH_SPEC)
	$(VENV_NEQUIP)/bin/pip install -q -e ".[nequip,allegro,dev]"
	touch $@

lint: venv-mace
	$(VENV_MACE)/bin/ruff check .
	$(VENV_MACE)/bin/ruff format --check .

# Core tests run in both environments (e3nn 0.4.4 and 0.6); each framework suite runs in its own;
# tests/docs runs the README blocks marked for each environment.
# A framework suite that collects no test, or whose framework does not import, fails.
# The test processes are single-threaded (their trainings already run two at a time): `make test`
# runs the two suites side by side, and each suite's output is printed whole when it ends.
TEST_THREADS ?= 1

test-mace: venv-mace
	OMP_NUM_THREADS=$(TEST_THREADS) $(VENV_MACE)/bin/python -m pytest -p no:cacheprovider tests/core tests/mace tests/docs $(PYTEST_ARGS)

test-nequip: venv-nequip
	OMP_NUM_THREADS=$(TEST_THREADS) $(VENV_NEQUIP)/bin/python -m pytest -p no:cacheprovider tests/core tests/nequip tests/docs $(PYTEST_ARGS)

test: lint
	@echo "running the MACE and NequIP suites side by side; each prints its results when it ends"
	$(MAKE) --no-print-directory -j2 --output-sync=target test-mace test-nequip

demo: venv-mace
	$(VENV_MACE)/bin/python -m examples.demo

clean-venvs:
	rm -rf $(VENV_MACE) $(VENV_NEQUIP)
