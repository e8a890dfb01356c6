# Two commands (see README.md):
#   make lab    install into .venv and open JupyterLab on course/
#   make test   install and run every test: pytest on the pinned stack (.venv), then the
#               newest-JAX leg (.venv-newest, Python >= 3.12) and the Colab leg (.venv-colab,
#               a replica of Colab's packages on Python 3.13) side by side (tools/test_all.sh;
#               a leg without its Python is skipped with a line saying so)
# CONSTRAINTS pins the exact versions CI tested; `make lab CONSTRAINTS=` installs the newest.
# While writing a lesson: `make test PYTEST_ARGS="solutions/05_cnn.ipynb course/05_cnn.ipynb"`
# runs only that pytest selection (no other leg).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= requirements/constraints.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
PYTEST_ARGS ?=

.PHONY: lab test pytest test-newest test-colab lint course check-course constraints clean solutions

lab: $(VENV)/.installed-lab
	@echo "Starting JupyterLab on course/. Open the http://127.0.0.1 URL printed below (it"
	@echo "carries the login token), then 00_setup.ipynb. Stop it with Ctrl+C."
	@$(BIN)/jupyter lab --config=jupyter/jupyter_server_config.py --ServerApp.log_level=WARN

# With PYTEST_ARGS (a selection of tests or notebooks) only that pytest selection runs.
test: $(VENV)/.installed-test
ifeq ($(strip $(PYTEST_ARGS)),)
	@bash tools/test_all.sh $(BIN)/python
else
	$(BIN)/python -m pytest $(PYTEST_ARGS)
endif

pytest: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-newest:
	bash tools/test_newest.sh

test-colab:
	bash tools/test_colab.sh

$(VENV)/bin/python:
	@echo "Creating $(VENV) with $(PYTHON) ..."
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-lab: pyproject.toml $(CONSTRAINTS) | $(VENV)/bin/python
	@echo "Installing the course, JAX and JupyterLab into $(VENV) (quiet; a minute or two) ..."
	@t0=$$(date +%s); $(BIN)/python -m pip install -q $(PIP_C) -e ".[lab]" \
	  && echo "Installed in $$(( $$(date +%s) - t0 )) s."
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(CONSTRAINTS) | $(VENV)/bin/python
	@echo "Installing the course and its test tools into $(VENV) (quiet; a minute or two) ..."
	@t0=$$(date +%s); $(BIN)/python -m pip install -q $(PIP_C) -e ".[lab,test]" \
	  && echo "install (pinned stack): $$(( $$(date +%s) - t0 )) s"
	@touch $@ $(VENV)/.installed-lab

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
	rm -rf $(VENV) .venv-newest .venv-colab .pytest_cache test-output

# Execute solution notebooks in place (outputs stored) and regenerate course/.
# make solutions NB=solutions/01_gpu_basics.ipynb   (default: all)
solutions: $(VENV)/.installed-test
	$(BIN)/python tools/execute_solutions.py $(NB)
