# callctl: `make demo` and `make test` do all the set-up on a fresh Debian machine:
# the system packages (through sudo when not root), then a virtual environment
# at .venv/ with the project installed editable, then they run.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := gcc python3-dev python3-venv portaudio19-dev libasound2-plugins \
	pulseaudio pulseaudio-utils pipewire pipewire-pulse wireplumber jackd2 espeak-ng sox libsox-fmt-base util-linux procps \
	libegl1 libgl1 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 libdbus-1-3 fonts-dejavu-core \
	xvfb libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 libxcb-render-util0 \
	libxcb-image0 libxcb-xinerama0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all setup system venv test lint demo bench soak screenshot clean

all: test

setup: system venv

# Install only what is missing, so a second run costs nothing.
system:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg setup.py pyproject.toml engine/devices/pulse_period.c engine/echo_batch.c | system
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,gui,bench]'
	touch $@

lint: venv
	$(BIN)/ruff check engine controller gui cli tests bench testing callctl
	$(BIN)/mypy callctl bench testing

test: setup lint
	$(BIN)/pytest -q -p no:cacheprovider

# The long runs: 1,000 consecutive calls, and the fuzzes at 10,000 cases each.
soak: setup
	CALLCTL_FUZZ_EXAMPLES=10000 $(BIN)/pytest -q -s -p no:cacheprovider -m soak tests/soak
	CALLCTL_FUZZ_EXAMPLES=10000 $(BIN)/pytest -q -p no:cacheprovider tests/reliability/test_fuzz.py tests/reliability/test_fuzz_sockets.py

# The README's picture of the window mid-call (under its own Xvfb).
screenshot: setup
	$(BIN)/python -m callctl.gui.screenshot docs/gui.png

demo: setup
	$(BIN)/callctl demo

# Pipecat, the third system, lives in its own venv (bench/.venv-pipecat): its pins clash with ours.
bench: setup
	PYTHON=$(PYTHON) bash bench/pipecat_venv.sh
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
