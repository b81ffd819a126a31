# Two entry points for a fresh clone (README): `make demo` and `make test`.
# Each builds .venv on first use; everything the project needs is installed from here.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The torch pair this project is tested with; override for another CUDA/CPU build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test browser lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The demo sweep on digits: teachers, 16 student trials, Parquet and report.html in results/demo.
# --resume makes it safe to run again: finished trials are kept, the report is rewritten.
demo: $(VENV)/.installed
	$(BIN)/kd-ray sweep experiments/demo.yaml --resume

# Headless Chromium for the report's real-browser test (Debian package).
browser:
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: $(VENV)/.installed browser
	$(BIN)/pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check kd_ray tests benchmarks
	$(BIN)/ruff format --check kd_ray tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
