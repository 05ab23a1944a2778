# visionpipe: `make run` runs the whole pipeline on the sample dataset, `make test` the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := data/sample
export VISIONPIPE_HOME ?= $(CURDIR)/.visionpipe
export TF_CPP_MIN_LOG_LEVEL ?= 2

IMAGE ?= visionpipe:0.1.0

.PHONY: setup postgres run test test-fast bench lint mlflow-ui mlflow-server serve beam-services compile image test-image base-image container-engine containers clean

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

test: setup postgres containers
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
# What the container tests need where no Docker engine answers: Podman, Debian's runc, and
# debootstrap for a base image without a registry (as postgres, from Debian's packages).
containers:
	@docker info >/dev/null 2>&1 || { command -v podman && command -v runc && command -v debootstrap; } >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null)

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
	@echo "MLflow UI: http://127.0.0.1:5000/#/?workflowType=machine_learning (the model-training view; or its toggle, top left)"
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 \
		--backend-store-uri sqlite:///$(VISIONPIPE_HOME)/mlflow.db \
		--default-artifact-root $(VISIONPIPE_HOME)/mlartifacts

# The component images, CPU and GPU (push them and set pipeline.image), with Docker where
# its engine answers, else Podman. BASE_IMAGE: any image with Python 3.11 (`make base-image`
# makes one without a registry); CA_BUNDLE: a CA bundle pip needs (mounted during the
# build only, never in the image); IMAGE_EXTRAS: the variants built; BUILD_NETWORK: the
# build's network (host: the machine's proxy and DNS). Each build's output goes to a log;
# a build that cannot reach the package index or a registry is one line, exit 2.
BASE_IMAGE ?= python:3.11-slim
CA_BUNDLE ?=
IMAGE_EXTRAS ?= server server,gpu
LOCAL_BASE := localhost/visionpipe-base:bookworm
# Looked up once, on first use only (not on every make): `docker info` can be slow.
ENGINE = $(eval ENGINE := $(shell if docker info >/dev/null 2>&1; then echo docker; \
	elif command -v podman >/dev/null 2>&1; then echo podman; fi))$(ENGINE)
PODMAN_CONF := $(VISIONPIPE_HOME)/podman/containers.conf
ENGINE_ENV = $(if $(filter podman,$(ENGINE)),CONTAINERS_CONF=$(PODMAN_CONF) )
RUN_ENGINE = $(ENGINE_ENV)$(ENGINE)
BUILD_NETWORK ?= host
NO_CA := $(VISIONPIPE_HOME)/podman/no-ca

# Podman on this kind of machine, in a file of the project's (not the machine's): Debian's
# runc (crun refuses hybrid cgroups), file and process limits no higher than the host's
# (raising them is refused; processes also no higher than pid_max). The same file
# `visionpipe run --isolation container` writes; plain python3 (standard library) will do.
$(PODMAN_CONF):
	@mkdir -p $(@D)
	@python3 -m pipelines.adapters.containers podman-conf $@

container-engine:
	@[ -n "$(ENGINE)" ] || { echo "make image: no container engine here (no Docker engine answers, no podman); install Docker, or podman and runc (Debian: apt-get install podman runc)" >&2; exit 2; }
	@[ "$(ENGINE)" != podman ] || [ -s $(PODMAN_CONF) ] || $(MAKE) -s --no-print-directory $(PODMAN_CONF)
	@[ -z "$(CA_BUNDLE)" ] || [ -s "$(CA_BUNDLE)" ] || { echo "make image: CA_BUNDLE=$(CA_BUNDLE) is not a readable, non-empty file" >&2; exit 2; }

image: container-engine
	@$(RUN_ENGINE) image inspect $(BASE_IMAGE) >/dev/null 2>&1 || $(RUN_ENGINE) pull $(BASE_IMAGE) >/dev/null 2>&1 || \
	 { echo "make image: base image $(BASE_IMAGE) is not here and cannot be pulled; make base-image, then BASE_IMAGE=$(LOCAL_BASE) make image" >&2; exit 2; }
	@mkdir -p $(VISIONPIPE_HOME)/podman && : > $(NO_CA)
	@for extras in $(IMAGE_EXTRAS); do \
	  tag=$(IMAGE)$$(case $$extras in *gpu*) echo -gpu;; esac); \
	  log=$(VISIONPIPE_HOME)/logs/image-$$(echo $$tag | tr '/:' '__').log; \
	  echo "building $$tag (EXTRAS=$$extras, FROM $(BASE_IMAGE)) with $(ENGINE); log: $$log"; \
	  $(ENGINE_ENV)python3 -m pipelines.adapters.containers build $(ENGINE) $$tag $$extras \
	    $(BASE_IMAGE) $(or $(CA_BUNDLE),$(NO_CA)) $(BUILD_NETWORK) $$log || exit $$?; \
	done

# The CPU image the container tests run (tests/test_container_run.py), tagged by the content
# of everything it is built from: built when that changes, reused otherwise (a code change
# rebuilds only the code's layers, the engine's cache keeps the dependencies'). Its base is
# BASE_IMAGE where it is here or can be pulled, else $(LOCAL_BASE) (made when missing).
# pip trusts this host's CA bundle during the build (a build secret, not in the image).
# Prints the tag last; older test tags are removed.
TEST_IMAGE_REPO := visionpipe-test
HOST_CA_BUNDLE := $(firstword $(wildcard /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt))
TEST_IMAGE_HASH = $(shell cat infra/Dockerfile constraints.txt pyproject.toml README.md .dockerignore \
	$$(find visionpipe components trainer pipelines -type f -not -path '*/__pycache__/*' | LC_ALL=C sort) \
	| sha256sum | cut -c1-12)
test-image: container-engine
	@tag=$(TEST_IMAGE_REPO):$(TEST_IMAGE_HASH); \
	 if ! $(RUN_ENGINE) image inspect $$tag >/dev/null 2>&1; then \
	   base=$(BASE_IMAGE); \
	   if ! { $(RUN_ENGINE) image inspect $$base >/dev/null 2>&1 || $(RUN_ENGINE) pull -q $$base >/dev/null 2>&1; }; then \
	     base=$(LOCAL_BASE); \
	     $(RUN_ENGINE) image inspect $$base >/dev/null 2>&1 || $(MAKE) -s --no-print-directory base-image >&2 || exit 1; \
	   fi; \
	   $(MAKE) -s --no-print-directory image IMAGE=$$tag IMAGE_EXTRAS=server BASE_IMAGE=$$base \
	     CA_BUNDLE=$(or $(CA_BUNDLE),$(HOST_CA_BUNDLE)) >&2 || exit 1; \
	 fi; \
	 for old in $$($(RUN_ENGINE) images --format '{{.Repository}}:{{.Tag}}' | grep '$(TEST_IMAGE_REPO):' | grep -v ":$(TEST_IMAGE_HASH)$$"); do \
	   $(RUN_ENGINE) rmi $$old >/dev/null 2>&1 || true; done; \
	 echo $$tag

# A Debian bookworm base with Python 3.11, from Debian's packages (no image registry):
# debootstrap, then an import into the engine as $(LOCAL_BASE). Needs root.
base-image: container-engine
	@command -v debootstrap >/dev/null || { echo "make base-image: debootstrap is not installed (Debian: apt-get install debootstrap)" >&2; exit 2; }
	rm -rf $(VISIONPIPE_HOME)/rootfs
	debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
		$(VISIONPIPE_HOME)/rootfs http://deb.debian.org/debian >/dev/null
	tar -C $(VISIONPIPE_HOME)/rootfs -c . | $(RUN_ENGINE) import - $(LOCAL_BASE)
	rm -rf $(VISIONPIPE_HOME)/rootfs

clean:
	rm -rf $(VISIONPIPE_HOME) $(SAMPLE) pipeline.yaml
