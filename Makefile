# Set-up and everyday commands. Each target installs what it needs first (idempotent).
PY ?= python3

.PHONY: install install-crosscheck main lint test test-slow bench

install:
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'

# kronfluence is a test/benchmark cross-check only, never a dependency; --no-deps keeps the CPU torch.
install-crosscheck:
	$(PY) -m pip install -q --no-deps kronfluence==1.0.1 einops einconv opt-einsum accelerate psutil pyyaml

main: install
	$(PY) -m experiments.run $(ARGS)

# style and the import layers (pyproject.toml: [tool.ruff], [tool.importlinter]); `make test` runs them first
lint: install
	$(PY) -m ruff check .
	$(PY) -c "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"

# two workers: the suite is mostly single-threaded (load 1.1 on 2 cores), so it runs in 7 min instead of 13 (2026-12-04)
test: install install-crosscheck lint
	$(PY) -m pytest -q -n 2

test-slow: install install-crosscheck
	$(PY) -m pytest -q -m slow

bench: install install-crosscheck
	$(PY) bench/bench_core.py
	$(PY) bench/bench_scan.py
	$(PY) bench/bench_filter.py
