# Set-up and everyday commands. Prerequisites: Python 3.11 and git; everything else comes from pip.

PYTHON ?= python3
VENV = .venv

.PHONY: demo test bench clean distclean

# The virtual environment with tickwire installed editable and the development tools; rebuilt when
# pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/tickwire demo

# pytest exits with 5 when it collected no tests: that is a failure here, not a pass.
test: $(VENV)/.installed
	@rc=0; $(VENV)/bin/python -m pytest -q || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: error: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

bench: $(VENV)/.installed
	$(VENV)/bin/python -m tickwire.sim.bench

# Build outputs and caches; the virtual environment stays (see distclean).
clean:
	rm -rf build .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
