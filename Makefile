# Two commands (see README.md):
#   make lab    install into .venv and open JupyterLab on course/
#   make test   install and run every test: pytest on the pinned stack (.venv), then the
#               newest-JAX leg (.venv-newest, Python >= 3.12) and the Colab leg (.venv-colab,
#               a replica of Colab's packages on Python 3.13) side by side (tools/test_all.sh;
#               a leg without its Python is skipped with a line saying so)
# And `make site`: the course website (site/) built into build/site/ (README, "Website").
# CONSTRAINTS pins the exact versions CI tested; `make lab CONSTRAINTS=` installs the newest.
# While writing a lesson: `make test PYTEST_ARGS="solutions/05_cnn.ipynb course/05_cnn.ipynb"`
# runs only that pytest selection (no other leg).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= requirements/constraints.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
PYTEST_ARGS ?=
SITE_DIR ?= build/site

.PHONY: lab test pytest test-newest test-colab lint course check-course constraints clean \
	solutions site

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
	@t0=$$(date +%s); $(BIN)/python -m pip install -q $(PIP_C) -e ".[lab,test,site]" \
	  && echo "install (pinned stack): $$(( $$(date +%s) - t0 )) s"
	@touch $@ $(VENV)/.installed-lab $(VENV)/.installed-site

$(VENV)/.installed-site: pyproject.toml $(CONSTRAINTS) | $(VENV)/bin/python
	@echo "Installing the course and the website's tools into $(VENV) (quiet) ..."
	@$(BIN)/python -m pip install -q $(PIP_C) -e ".[site]"
	@touch $@

# The course website: every solutions/ notebook with its stored outputs (never executed),
# warnings as errors, into $(SITE_DIR)/ (myst-nb keeps the figures it extracts beside it, in
# jupyter_execute/). tests/test_site.py builds it the same way and checks it in Chromium.
site: $(VENV)/.installed-site
	$(BIN)/python -m sphinx -W --keep-going -n -q -b html -d $(SITE_DIR)-doctrees site $(SITE_DIR)
	@echo "Built $(SITE_DIR)/index.html. To view it: $(BIN)/python -m http.server -d $(SITE_DIR) -b 127.0.0.1 8000"
	@echo "then open http://127.0.0.1:8000/"

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
	rm -rf $(VENV) .venv-newest .venv-colab .pytest_cache test-output $(SITE_DIR) \
	  $(SITE_DIR)-doctrees $(dir $(SITE_DIR))jupyter_execute

# Execute solution notebooks in place (outputs stored) and regenerate course/.
# make solutions NB=solutions/01_gpu_basics.ipynb   (default: all)
solutions: $(VENV)/.installed-test
	$(BIN)/python tools/execute_solutions.py $(NB)
