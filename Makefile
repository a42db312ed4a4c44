# The two commands: `make demo` (the main job) and `make test` (the suite).
PY := .venv/bin/python

.PHONY: demo test bench reliability setup protos

setup:
	@scripts/bootstrap.sh

demo: setup
	$(PY) scripts/demo.py $(DEMO_ARGS)

# Test files run in parallel, one worker per core (at most 4); each file stays on one worker, so a file's
# module-scoped servers (registry, S3, Azurite, sshd, ...) start once. TEST_ARGS="-n 0" runs serially.
test: setup
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile $(TEST_ARGS)

bench:
	@scripts/bootstrap.sh bench
	$(PY) bench/run.py

protos: setup
	scripts/gen_protos.sh

# The long reliability profile (>= 50 kills, more faults and inputs); writes RELIABILITY.md.
reliability: setup
	$(PY) scripts/reliability.py
