# transferlab: `make demo` runs the offline quickstart sweep, `make test` the test suite.
# Both create .venv and install what they need; nothing is installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# 3 workers on 2 cores (tests/conftest.py: one worker per module unless it spreads); the
# 30 slowest tests and the suite's time against its budget are printed at the end.
PYTEST_ARGS ?= -n 3 --dist loadgroup --durations=30

.PHONY: install install-test chromium postgresql fonts demo test test-fast tracking-server ui clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamps make re-installs happen only when pyproject.toml changes.
$(VENV)/.stamp-install: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# The tests exercise every launcher and the tracking server: all extras.
$(VENV)/.stamp-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[all]'
	touch $@ $(VENV)/.stamp-install

install: $(VENV)/.stamp-install

# Headless Chromium renders report.html in one test; installed from Debian's
# packages where apt is usable (root), otherwise that test skips with a reason.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the report screenshot test will be skipped"; }

# PostgreSQL server binaries for the tracking-server test; otherwise it skips with a reason.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	  || echo "PostgreSQL not installed: the tracking-server tests will be skipped"; }

# A CJK font, so class names in Chinese, Japanese or Korean are drawn on the figures
# (without one they are labelled #<index> and listed in the report). matplotlib keeps
# a font list cache: it is dropped so the new font is found.
fonts: | $(BIN)/python
	@fc-list 2>/dev/null | grep -q "Noto Sans CJK" || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-cjk >/dev/null) \
	  && rm -f "$$($(BIN)/python -c 'import matplotlib; print(matplotlib.get_cachedir())' 2>/dev/null)"/fontlist-*.json \
	  || echo "fonts-noto-cjk not installed: CJK class names will be labelled by index"; }

install-test: $(VENV)/.stamp-test chromium postgresql fonts

# Pretrain a backbone on 4 shapes, then transfer it to 3 others against random init
# (~4 min on 2 CPU cores, offline); the report shows which differences are real.
demo: install
	$(BIN)/python run.py experiment=pretrain_source
	$(BIN)/python run.py -m experiment=pretrain_transfer

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The loop after each change (<= 5 min): no `slow` test, and an unmarked test over 30 s fails it.
test-fast: install-test
	$(BIN)/python -m pytest -m "not slow" --strict-budget $(PYTEST_ARGS)

# A shared MLflow server on PostgreSQL in ./tracking-server (README: "Beyond one machine").
tracking-server: install postgresql
	$(BIN)/pip install --quiet -e '.[server]'
	$(BIN)/python -m transferlab.server up --dir $(CURDIR)/tracking-server

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db

clean:
	rm -rf outputs multirun .pytest_cache
