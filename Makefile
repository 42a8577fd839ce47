# Rota's developer entry points. Every target creates .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SEEDS ?= 0:20000
CHAOS_SEEDS ?= 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20
CHAOS_NODES ?= 5
CHAOS_DURATION ?= 120
STAMP := $(VENV)/.installed-dev

.PHONY: run test bench sim chaos lint fmt clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/rota dev --nodes 3 --data-dir data --http-port 8080

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q
	$(BIN)/python -m simulations --seeds 0:300
	$(BIN)/python -m simulations --mode scheduler --seeds 0:100
	$(BIN)/python -m simulations.chaos --nodes 3 --duration 40 --seed 1

# Real agents under injected faults, one seed after another; fails if any seed did.
chaos: $(STAMP)
	failed=0; for seed in $(CHAOS_SEEDS); do \
	  $(BIN)/python -m simulations.chaos --nodes $(CHAOS_NODES) --duration $(CHAOS_DURATION) \
	    --seed $$seed || failed=1; \
	done; exit $$failed

sim: $(STAMP)
	$(BIN)/python -m simulations --seeds $(SEEDS)

# wrk drives the API benchmarks (bench/load.py) and etcd is the peer measured beside
# Rota (bench/etcd.py); install them when missing and root on Debian, as .ci/run does
# for make. Without wrk the bench falls back and says so; without etcd its section is
# skipped with a note. The package's own etcd service is stopped and disabled: the
# bench starts its own members on loopback.
bench: $(STAMP)
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = "0" ]; then \
	  missing=""; \
	  command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	  command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	  if [ -n "$$missing" ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	    case "$$missing" in *etcd-server*) \
	      (systemctl disable --now etcd || service etcd stop || true) >/dev/null 2>&1;; \
	    esac; \
	  fi; \
	fi
	$(BIN)/python -m bench

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
