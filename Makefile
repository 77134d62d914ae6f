# Tasker: `make run` shows it working, `make test` proves it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTO  := protos/tasker/v1/tasker.proto

.PHONY: install run test bench lint proto clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	bash examples/demo.sh

# Compiled once here: with PYTHONDONTWRITEBYTECODE set (as on this machine), every taskerd and
# taskerctl a test starts would otherwise compile its modules again (about 0.12 s each).
test: $(STAMP)
	$(PY) -m compileall -q taskerd taskerctl protos tests bench examples >/dev/null
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/engine.py
	$(PY) bench/daemon.py
	$(PY) bench/latency.py
	$(PY) bench/scale.py
	$(PY) bench/cli.py
	$(PY) bench/control.py
	$(PY) bench/workflows.py
	$(PY) bench/scrape.py
	$(PY) bench/remote.py
	$(PY) bench/cluster.py
	$(PY) bench/dashboard.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check taskerd taskerctl tests bench examples
	$(VENV)/bin/mypy taskerd taskerctl

proto: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --grpc_python_out=protos \
		--mypy_out=protos --mypy_grpc_out=protos $(PROTO)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
