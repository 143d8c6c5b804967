# ssl3d: the commands a user types. `make benchmark` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SSL3D := $(BIN)/ssl3d
OUT ?= results/benchmark
ARGS ?=

.PHONY: setup benchmark test report perf lint clean

setup: $(VENV)/.installed

# torch and torchvision are pinned by constraints.txt (on the build machines they install from
# local disk); everything else follows the lower bounds in setup.cfg.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,ray]"
	touch $@

benchmark: setup
	$(SSL3D) run --out $(OUT) $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

report: setup
	$(SSL3D) report $(OUT) $(ARGS)

perf: setup
	$(SSL3D) perf $(ARGS)

# import-linter reads the package as it is installed (methods/ and datasets/ inside benchmark/),
# so the layers contract in setup.cfg is checked on a throw-away install under build/lint.
lint: setup
	$(BIN)/ruff check benchmark methods datasets tests
	$(BIN)/ruff format --check benchmark methods datasets tests
	rm -rf build/lint
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --target build/lint .
	cd build/lint && PYTHONPATH=. $(abspath $(BIN))/lint-imports $(CURDIR)/setup.cfg

clean:
	rm -rf $(VENV) results/benchmark
