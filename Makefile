# Two commands: `make run` (stub + anonymizer, fit, evaluate, keep serving) and `make test`.
.PHONY: venv dev-venv run lint format test audit bench datasets widths extraction stub serve image image-save container-test soak clean

VENV := .venv/bin

# .venv holds two pinned sets, each installed when its requirements change (scripts/bootstrap):
# venv, the run set (requirements.txt, what the main job imports: no concrete-ml, no torch), and
# dev-venv, the run set plus requirements-dev.txt (concrete-ml with torch, test and bench tools)
venv:
	@scripts/bootstrap run

dev-venv:
	@scripts/bootstrap dev

run: venv
	$(VENV)/python -m scripts.demo

# ruff (lint + format check) and the docs' included bench tables, then the whole suite
lint: dev-venv
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/python -m scripts.docs_tables --check

format: dev-venv
	$(VENV)/ruff check --fix .
	$(VENV)/ruff format .
	$(VENV)/python -m scripts.docs_tables

test: lint
	scripts/install-browser
	$(VENV)/python -m pytest -ra --durations=15 tests

audit: dev-venv
	$(VENV)/python -m devtools.audit

bench: dev-venv
	$(VENV)/python -m bench.run
	$(VENV)/python -m bench.executors
	$(VENV)/python -m bench.proofs

datasets: dev-venv
	$(VENV)/python -m bench.datasets

widths: dev-venv
	$(VENV)/python -m bench.widths

extraction: dev-venv
	$(VENV)/python -m bench.extraction

stub: venv
	$(VENV)/gunicorn challenge_stub.wsgi:application --bind 127.0.0.1:$${STUB_PORT:-8001} --workers 1 --threads 4

serve: venv
	$(VENV)/gunicorn app:application --bind 127.0.0.1:$${PORT:-8000} --workers 2 --threads 8 --worker-class gthread --timeout 900

# the AnoMed submission image (podman here; `docker build -t fhe-anonymizer .` works the same)
PODMAN := podman --runtime runc --cgroup-manager cgroupfs
ULIMITS := --ulimit nofile=4096:4096 --ulimit nproc=4096:4096
image:
	@$(PODMAN) image exists python:3.12-slim || ../shared/container/make-python-base
	$(PODMAN) build --network=host $(ULIMITS) --pull=never -t fhe-anonymizer .

image-save: image
	$(PODMAN) save fhe-anonymizer | gzip > fhe-anonymizer.tar.gz
	@ls -lh fhe-anonymizer.tar.gz

container-test: dev-venv
	$(VENV)/python -m scripts.container_test

# a long soak of the image under attack, applicants and refits (SOAK_MINUTES, default 30)
soak: dev-venv
	$(VENV)/python -m bench.soak

clean:
	rm -rf model_store .pytest_cache
