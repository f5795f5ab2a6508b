# Two commands: `make run` (stub + anonymizer, fit, evaluate, keep serving) and `make test`.
.PHONY: venv run test audit bench stub serve clean

VENV := .venv/bin

venv:
	@scripts/bootstrap

run: venv
	$(VENV)/python -m scripts.demo

test: venv
	$(VENV)/python -m pytest -ra tests

audit: venv
	$(VENV)/python -m anonymizer.audit

bench: venv
	$(VENV)/python -m bench.run

stub: venv
	$(VENV)/gunicorn challenge_stub.wsgi:application --bind 127.0.0.1:$${STUB_PORT:-8001} --workers 1 --threads 4

serve: venv
	$(VENV)/gunicorn app:application --bind 127.0.0.1:$${PORT:-8000} --workers 2 --threads 4 --worker-class gthread --timeout 900

clean:
	rm -rf model_store .pytest_cache
