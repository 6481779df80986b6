# The README's commands. Needs only python3 and make: everything else is installed into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# First-party plugins, installed with vsmtp; plugins/example is installed by its test, as a user would.
PLUGINS := $(filter-out plugins/example,$(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml)))

.PHONY: run test bench lint fuzz install clean

run: $(STAMP)
	$(BIN)/vsmtp serve

# Debian packages some tests talk to (installed when missing, as root; see tools/system-packages).
SYSTEM_PACKAGES := swaks libnet-ssleay-perl libio-socket-ssl-perl opendkim opendkim-tools miltertest prometheus dovecot-lmtpd dovecot-imapd postfix nsd unbound bind9-utils

test: $(STAMP)
	@tools/system-packages $(SYSTEM_PACKAGES)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The wire protocol fuzzed over a real socket, longer than `make test` does (tests/fuzz).
FUZZ_EXAMPLES ?= 50000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/fuzz -q

# vsmtp against a private Postfix instance, side by side (needs root; installs postfix).
bench: $(STAMP)
	@tools/system-packages postfix
	$(BIN)/python tools/bench.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet mypy ruff
	$(BIN)/ruff check vsmtp journal plugins tests tools
	$(BIN)/ruff format --check vsmtp journal plugins tests tools
	$(BIN)/mypy

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when any distribution's metadata changes; code changes need nothing (editable installs).
$(STAMP): $(BIN)/python pyproject.toml journal/pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	$(BIN)/python -m pip install --quiet -e ./journal $(addprefix -e ./,$(PLUGINS)) -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) var .pytest_cache
