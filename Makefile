# Two entry points for a fresh clone (README): `make demo` and `make test`.
# Each builds .venv on first use; everything the project needs is installed from here.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The torch pair this project is tested with; override for another CUDA/CPU build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test browser lint clean

# pip byte-compiles every package as it installs it. Keep it so: where PYTHONDONTWRITEBYTECODE
# is set (as on this project's CI machines) Python never caches what it compiles, and each of
# the many processes of a Ray sweep would compile torch and ray from source again (measured:
# 6.2 s of CPU per process to import them, against 2.9 s).
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

# Headless Chromium for the report's real-browser test (Debian package). The test runs it with
# --headless --disable-gpu, so its recommends (Mesa's GL drivers, printing, notifications) are
# not needed: only the browser and one font set for the page's text.
browser:
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; }

# The virtualenv and the browser are installed side by side (pip and apt wait on disk and
# network, not on each other). Then unit tests first, in 2 processes (CPU-bound: pytest-xdist
# halves them on 2 cores), then the end-to-end tests in one, which start Ray clusters and share
# one across the session. Each invocation fails on pytest's exit 5 (no tests collected) like on
# any other non-zero status.
test:
	$(MAKE) --no-print-directory -j2 $(VENV)/.installed browser
	$(BIN)/pytest -m "not slow" -n 2
	$(BIN)/pytest -m slow --durations=20

lint: $(VENV)/.installed
	$(BIN)/ruff check kd_ray tests benchmarks
	$(BIN)/ruff format --check kd_ray tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
