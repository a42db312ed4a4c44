# The two commands: `make demo` (the main job) and `make test` (the suite).
PY := .venv/bin/python

.PHONY: demo test bench reliability setup protos

setup:
	@scripts/bootstrap.sh

demo: setup
	$(PY) scripts/demo.py $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q $(TEST_ARGS)

bench: setup
	$(PY) bench/run.py

protos: setup
	scripts/gen_protos.sh

# The long reliability profile (>= 50 kills, more faults and inputs); writes RELIABILITY.md.
reliability: setup
	$(PY) scripts/reliability.py
