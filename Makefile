# The README's two commands: `make demo` (set up, then the main job) and `make test`.
PYTHON ?= python3
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test test-fast bench

setup:
	$(PYTHON) -m pip install -q -e ".[test]"

# Offline Fashion-MNIST: Debian's IDX files, prepared once into the tfds array_record cache.
data:
	@[ -d $(FMNIST) ] || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "Could not install dataset-fashion-mnist; tfds will try to download instead."
	$(PYTHON) -m spark_tpu.data.prepare --dataset=fashion_mnist

# --overwrite: a second `make demo` replaces the first one's finished run.
demo: setup data
	$(PYTHON) -m launch_tpu.main --flagfile=experiments/presets/quickstart.flags \
	  --output_dir=runs/quickstart --overwrite

test: setup
	@[ -d $(FMNIST) ] || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "dataset-fashion-mnist unavailable: the real-data tests will be skipped."
	$(PYTHON) -m pytest -n 2 --dist loadfile -q

# The fast tier (693 of 1092 tests; timings in the README): everything
# but the tests marked slow (tests/conftest.py).
test-fast: setup
	$(PYTHON) -m pytest -n 2 --dist loadfile -q -m "not slow"

bench: setup data
	$(PYTHON) -m benchmarks.bench all --small
