# Two commands (see README.md):
#   make lab    install into .venv and open JupyterLab on course/
#   make test   install what the tests need into .venv and run the whole test suite
# CONSTRAINTS pins the exact versions CI tested; `make lab CONSTRAINTS=` installs the newest.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= requirements/constraints.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
PYTEST_ARGS ?=

.PHONY: lab test lint course check-course constraints clean solutions

lab: $(VENV)/.installed-lab
	$(BIN)/jupyter lab --config=jupyter/jupyter_server_config.py

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-lab: pyproject.toml $(CONSTRAINTS) | $(VENV)/bin/python
	$(BIN)/python -m pip install $(PIP_C) -e ".[lab]"
	touch $@

$(VENV)/.installed-test: pyproject.toml $(CONSTRAINTS) | $(VENV)/bin/python
	$(BIN)/python -m pip install $(PIP_C) -e ".[lab,test]"
	touch $@ $(VENV)/.installed-lab

# Regenerate course/ from solutions/ (run after editing any solution notebook).
course: $(VENV)/.installed-test
	$(BIN)/python tools/generate_course.py

check-course: $(VENV)/.installed-test
	$(BIN)/python tools/generate_course.py --check

lint: $(VENV)/.installed-test
	$(BIN)/ruff check utils tests tools benchmarks solutions conftest.py

# Re-record the exact versions tested (run in a fresh venv after `make test` passes).
constraints:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > requirements/constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache test-output

# Execute solution notebooks in place (outputs stored) and regenerate course/.
# make solutions NB=solutions/01_gpu_basics.ipynb   (default: all)
solutions: $(VENV)/.installed-test
	$(BIN)/python tools/execute_solutions.py $(NB)
