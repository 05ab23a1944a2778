# visionpipe: `make run` runs the whole pipeline on the sample dataset, `make test` the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := data/sample
export VISIONPIPE_HOME ?= $(CURDIR)/.visionpipe
export TF_CPP_MIN_LOG_LEVEL ?= 2

IMAGE ?= visionpipe:0.1.0

.PHONY: setup postgres run test test-fast bench lint mlflow-ui mlflow-server serve beam-services compile image clean

setup: $(STAMP)

# Re-installs only when the project's dependencies or the lock change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,server]'
	touch $(STAMP)

# PostgreSQL's server programs (Debian's package) for `make mlflow-server` and its test.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)

$(SAMPLE)/labels.csv: | $(STAMP)
	$(BIN)/visionpipe sample-data --out $(SAMPLE)

run: setup $(SAMPLE)/labels.csv
	$(BIN)/visionpipe run --data $(SAMPLE)

# Tests run on TEST_WORKERS processes (pytest-xdist; auto: one per core, at most 4, as each
# holds TensorFlow; 0: all in one process). Much of a test's time leaves a core idle
# (starting Python, importing TensorFlow, waiting on a subprocess): two workers on two
# cores finish sooner.
TEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --maxprocesses 4 --dist worksteal

test: setup postgres
	$(PYTEST)

# The unit tier: no whole-pipeline runs and no tests that start visionpipe processes.
test-fast: setup
	$(PYTEST) -m 'not e2e and not processes'

bench: setup $(SAMPLE)/labels.csv
	$(BIN)/python benchmarks/bench.py --data $(SAMPLE) $(BENCH_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

compile: setup
	$(BIN)/visionpipe compile --out pipeline.yaml

# An MLflow tracking server on PostgreSQL, artifacts served by it, on 127.0.0.1:5001.
mlflow-server: setup postgres
	$(BIN)/python -m pipelines.adapters.mlflow_server --port 5001 --db-port 5433

# The registry's champion behind MLflow's scoring server (with a body limit), on 127.0.0.1:$(SERVE_PORT).
SERVE_PORT ?= 5002
MODEL_NAME ?= visionpipe-classifier
serve: setup
	$(BIN)/visionpipe serve --model models:/$(MODEL_NAME)@champion --port $(SERVE_PORT)

# Beam's portable path on loopback (job service + SDK worker pool), as Flink/Spark take it.
beam-services: setup
	$(BIN)/python -m pipelines.beam_services

mlflow-ui: setup
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 \
		--backend-store-uri sqlite:///$(VISIONPIPE_HOME)/mlflow.db \
		--default-artifact-root $(VISIONPIPE_HOME)/mlartifacts

# The component images, CPU and GPU (needs a Docker engine; push them and set pipeline.image).
image:
	@docker info >/dev/null 2>&1 || { echo "make image: no Docker engine answers here (docker info failed)" >&2; exit 2; }
	docker build -f infra/Dockerfile -t $(IMAGE) .
	docker build -f infra/Dockerfile --build-arg EXTRAS=server,gpu -t $(IMAGE)-gpu .

clean:
	rm -rf $(VISIONPIPE_HOME) $(SAMPLE) pipeline.yaml
