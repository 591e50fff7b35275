# Two entry points: `make demo` runs the main job, `make test` runs the test suite; `make docs`
# builds the documentation site into site/ (offline).
# Both create .venv on first use and install xaibench with the pinned constraints.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench gpu-check docs

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,timm,web,ray,lrp,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xaibench demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) -m benchmarks.faithfulness && $(PY) -m benchmarks.alignment

gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu --device cuda --out gpu-check.json
