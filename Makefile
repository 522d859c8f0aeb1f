# The README's commands. Each target first makes sure the environment exists (a no-op in
# seconds once it does) and that it runs this checkout's code.
# FIREDRAKE_MSM_CUDA=1: the environment whose PETSc and torch have CUDA (scripts/install.sh).
FIREDRAKE_MSM_VENV ?= $(HOME)/.cache/firedrake-msm/venv$(if $(filter 1,$(FIREDRAKE_MSM_CUDA)),-cuda)
export FIREDRAKE_MSM_VENV
PYTHON := $(FIREDRAKE_MSM_VENV)/bin/python
# Firedrake wants one OpenMP thread; mpiexec as root needs Open MPI's consent, and
# oversubscription for more ranks than cores.
export OMP_NUM_THREADS := 1
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1
# PETSc sees pytest's command line (Firedrake passes sys.argv to it) and would list every
# pytest flag as an unused PETSc option at exit.
export PETSC_OPTIONS := -options_left no

.PHONY: install demo test lint docs bench

install:
	@bash scripts/install.sh

# The main demo: data, both models, both baselines and the comparison for KdV, into results/kdv/
# (reusing data/ and runs/ when they are there).
demo: install
	$(FIREDRAKE_MSM_VENV)/bin/firedrake-msm compare kdv

lint: install
	$(PYTHON) -m flake8 firedrake_msm tests demos benchmarks docs

# The Sphinx site (user guide, demos, API, results) into docs/_build/html; warnings are errors.
docs: install
	$(PYTHON) -m sphinx -W --keep-going -q -b html docs docs/_build/html

test: lint docs
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

bench: install
	$(PYTHON) benchmarks/bench_bridge.py $(BENCH_ARGS)
