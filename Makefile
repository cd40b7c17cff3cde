# Two commands for a newcomer: `make run` and `make test`. Both install everything first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
STAMP := $(VENV)/.installed
ARGS ?=
TEST_ARGS ?=
BENCH_ARGS ?=

# uv from PATH, else the Python package `make setup` installs with pip (run as `python3 -m uv`).
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)

.PHONY: help setup prerequisites lint browser etcd kfpcheck kubecluster run test test-flink bench clean

help:
	@echo "make run [ARGS='--profile quick ...']  install, then run the whole pipeline (petseg run)"
	@echo "make test [TEST_ARGS='-k ...']         install, then run the tests"
	@echo "make test-flink                        install, then run only the Flink cluster tests (also in make test)"
	@echo "make bench [BENCH_ARGS='--profile ...']  install, then time each stage against its limit (bench/results.json)"
	@echo "make lint                              ruff (lint, format) and import-linter's layers (also in make test)"
	@echo "make setup                             install only (.venv from uv.lock)"

setup: $(STAMP)

$(STAMP): pyproject.toml uv.lock Makefile
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv || python3 -m pip install --quiet --user uv \
	  || python3 -m pip install --quiet --user --break-system-packages uv
	@# TFX 1.16 needs Python 3.10; prefer one on this machine, else let uv fetch one (needs internet).
	@# Bytecode is compiled at install: uv does not, and where PYTHONDONTWRITEBYTECODE is set Python never
	@# caches it, so every process (each run, test, Beam worker) would compile TF/TFX's sources, ≈ 13 s.
	@py=""; for c in python3.10 $(HOME)/.pyenv/versions/3.10*/bin/python3.10 /usr/local/bin/python3.10 /usr/bin/python3.10; do \
	  if "$$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then py=$$(command -v "$$c"); break; fi; \
	done; \
	echo "Installing into $(VENV) with $${py:-a uv-managed Python 3.10}"; \
	$(UV) sync --frozen --compile-bytecode --python "$${py:-3.10}"
	@touch $@

run: setup
	$(VENV)/bin/petseg run $(ARGS)

# What `make test` needs and cannot install itself, checked before anything is installed: one line per
# missing piece. Root only when Chromium or etcd is still to be installed (apt-get); Go for the Go
# modules' `go 1.24` line; Java 17 and Maven for the Flink tests (Flink 1.19, Beam's job server).
prerequisites:
	@missing=0; have() { command -v "$$1" >/dev/null 2>&1; }; \
	if ! { have chromium && have etcd; } && [ "$$(id -u)" != 0 ]; then \
	  echo "make test needs root to apt-get install chromium and etcd-server (or install them first)"; missing=1; fi; \
	minor=$$(go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p'); \
	if [ "$${minor:-0}" -lt 24 ]; then \
	  echo "make test needs Go >= 1.24 (https://go.dev/dl), found: $$(go version 2>/dev/null || echo no go)"; missing=1; fi; \
	if ! java -version 2>&1 | grep -q 'version "17\.'; then \
	  echo "make test needs Java 17 (apt-get install openjdk-17-jdk-headless), found: $$(java -version 2>&1 | head -n 1 || true)"; missing=1; fi; \
	if ! have mvn; then echo "make test needs Maven (apt-get install maven)"; missing=1; fi; \
	exit $$missing

# Debian's headless Chromium opens the HTML dashboard in tests/test_dashboard.py (apt needs root).
browser:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# Open-source KFP's own backend compiler (kubeflow/kfpcheck, Go) for tests/test_kfp_backend.py; Go's cache keeps rebuilds quick.
kfpcheck: setup
	cd kubeflow/kfpcheck && go build -buildvcs=false -o $(CURDIR)/$(VENV)/bin/kfp-backend-check .

# The loopback Kubernetes of the `kube` tests (tests/support/kube_cluster.py): Debian's etcd, and
# kube-apiserver, kube-controller-manager and the Training Operator's manager from the pinned Go module
# tests/kubecluster. Binaries live per pin set, so the same go.mod/go.sum reuses them and a change builds anew.
KUBE_MOD := tests/kubecluster
KUBE_BIN := .tools/kubecluster-$(shell cat $(KUBE_MOD)/go.mod $(KUBE_MOD)/go.sum | sha256sum | cut -c1-12)

etcd:
	@command -v etcd >/dev/null || (apt-get update && apt-get install -y etcd-server)

kubecluster: etcd $(KUBE_BIN)/.built

# The version stamp is what clients read from /version (unstamped: v0.0.0-master+$$Format, which they refuse).
$(KUBE_BIN)/.built:
	cd $(KUBE_MOD) && v=$$(go list -mod=readonly -m -f '{{.Version}}' k8s.io/kubernetes) && minor=$$(echo $$v | cut -d. -f2) \
	  && ld="-s -w" && for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do \
	    ld="$$ld -X $$p.gitVersion=$$v -X $$p.gitMajor=1 -X $$p.gitMinor=$$minor -X $$p.gitTreeState=clean"; done \
	  && go build -mod=readonly -trimpath -buildvcs=false -ldflags="$$ld" -o $(CURDIR)/$(KUBE_BIN)/ tool
	@touch $@

# ruff's lint and format (pyproject.toml [tool.ruff]) and import-linter's layers ([tool.importlinter]).
lint: setup
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/lint-imports --no-cache >/dev/null || $(VENV)/bin/lint-imports --no-cache

test: prerequisites setup lint browser kfpcheck kubecluster
	$(VENV)/bin/python -m pytest $(TEST_ARGS)

# Only the Flink cluster tests (part of `make test` too): they start and stop their own local cluster,
# installing Flink from PyPI and Beam's job server from Maven Central into .tools/ on first use.
test-flink: setup
	$(VENV)/bin/python -m pytest -m cluster tests/test_flink.py $(TEST_ARGS)

bench: setup
	$(VENV)/bin/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
