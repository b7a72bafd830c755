# The two commands of the README. Each sets up .venv/ first (tools/bootstrap.sh, idempotent).
PY := .venv/bin/python

.PHONY: demo test bootstrap bench clean-demo

bootstrap:
	@bash tools/bootstrap.sh

demo: bootstrap
	$(PY) tools/demo.py $(ARGS)

test: bootstrap
	$(PY) -m pytest -q tests $(ARGS)

bench: bootstrap
	$(PY) benchmarks/bench_pgm.py

clean-demo:
	rm -rf output/demo datasets/gkd_synth datasets/gkd_shapes datasets/gkd_shapes_96
