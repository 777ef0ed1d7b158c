# The README's two commands are `make run` and `make test`; each installs whatever is missing first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := espeak-ng sox chromium ffmpeg iproute2 util-linux openssl redis-server
HOST ?= 127.0.0.1
PORT ?= 8080
# Calls in tests are real-time bound (speech is paced at 20 ms a frame), not CPU bound: run several at once.
TEST_WORKERS ?= 3

.PHONY: install deps-debian run test test-fast lint bench soak certs emulator call clean

JS_DIR := tests/js

install: deps-debian $(VENV)/.installed $(JS_DIR)/node_modules/.installed

# Debian packages: installed through apt-get when we are root; otherwise say exactly what is missing.
deps-debian:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null || \
	      { echo "apt-get install$$missing failed" >&2; exit 1; }; \
	  else \
	    echo "missing Debian packages:$$missing -- run: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi

# Every extra: the tests use the emulator, the batch report plots, the bench and the workers' Redis client (see voicebridge/extras.py).
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,emulator,reports,bench,cluster]'
	@touch $@

# The official JavaScript Realtime client the integration tests run against the emulator (locked versions).
$(JS_DIR)/node_modules/.installed: $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: install Node.js 20 or newer (node and npm)" >&2; exit 1; }
	cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

run: install
	$(BIN)/voicebridge serve --host $(HOST) --port $(PORT)

emulator: install
	$(BIN)/voicebridge emulator --host 127.0.0.1 --port 8765

call: install
	$(BIN)/voicebridge call --out out/call

test: install
	scripts/loopback-netns $(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) $(PYTEST_ARGS)

# Every test under tests/unit is marked `unit` by its folder (tests/conftest.py); collecting only that folder spares
# importing the integration and browser modules.
test-fast: install
	$(BIN)/python -m pytest -q -m unit tests/unit

lint: install
	$(BIN)/ruff check server tests
	$(BIN)/mypy

# The full run, its report written into docs/bench.md (between its markers) with bench.json/bench.png beside it;
# then the emulator's and real batches' (issue 17's batch targets), each into its own section.
bench: install
	$(BIN)/voicebridge bench --out out/bench --doc docs/bench.md
	$(BIN)/voicebridge bench --emulator --out out/bench --doc docs/bench.md
	$(BIN)/voicebridge bench --batch --out out/bench --doc docs/bench.md

soak: install
	$(BIN)/voicebridge soak

# Development TLS for browsers on hosts other than localhost (getUserMedia needs a secure context).
certs:
	@mkdir -p certs
	openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=voicebridge-dev" \
	  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
	  -keyout certs/dev-key.pem -out certs/dev-cert.pem
	@echo "wrote certs/dev-cert.pem and certs/dev-key.pem (never commit them)"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache out $(JS_DIR)/node_modules
