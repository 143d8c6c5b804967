# ssl3d: the commands a user types. `make benchmark` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SSL3D := $(BIN)/ssl3d
OUT ?= results/benchmark
ARGS ?=

.PHONY: setup benchmark test test-heavy paper-shaped report perf gpu-check lint lock clean

setup: $(VENV)/.installed

# constraints.txt pins every dependency to the exact version the tests passed with (torch and
# torchvision install from local disk on the build machines); `make lock` refreshes it.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,ray]"
	touch $@

benchmark: setup
	$(SSL3D) run --out $(OUT) $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

# The tests marked heavy (minutes each, so not in `make test`): the paper profile's shapes on
# the CPU (tests/tools/test_paper_shaped.py, about 7 minutes) and every method's step under
# torch.compile (tests/training/test_compile.py, about 5). CI runs them as a step of their own.
test-heavy: setup
	$(BIN)/python -m pytest -m heavy --durations=5 $(ARGS)

report: setup
	$(SSL3D) report $(OUT) $(ARGS)

perf: setup
	$(SSL3D) perf $(ARGS)

# The paper profile's code path at its real shapes (64^3, full width, every method and protocol)
# with tiny counts: about 7 minutes on 2 cores. Report in results/paper-shaped/paper-shaped.md.
paper-shaped: setup
	rm -rf results/paper-shaped
	$(BIN)/python -m benchmark.tools.paper_shaped --out results/paper-shaped $(ARGS)

# On a CUDA machine, at most about 10 minutes: sync debug mode on every method's step, perf at the
# paper size, compile vs eager, the FLOP estimate; one report in gpu-check/. Without a GPU: a note.
gpu-check: setup
	$(BIN)/python -m benchmark.tools.gpu_check --out gpu-check $(ARGS)

# import-linter reads the package as it is installed (methods/ and datasets/ inside benchmark/),
# so the layers contract in setup.cfg is checked on a throw-away install under build/lint.
lint: setup
	$(BIN)/ruff check benchmark methods datasets tests
	$(BIN)/ruff format --check benchmark methods datasets tests
	rm -rf build/lint
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --target build/lint .
	cd build/lint && PYTHONPATH=. $(abspath $(BIN))/lint-imports $(CURDIR)/setup.cfg

# Refresh the pins: upgrade within setup.cfg's bounds, run the tests, then write what is installed.
lock: setup
	$(BIN)/python -m pip install --quiet --upgrade -e ".[dev,ray]" torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pytest -q
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^ssl3d' | sort -f; } > constraints.new
	mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) results/benchmark
