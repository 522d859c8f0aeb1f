#!/usr/bin/env bash
# Build (or reuse) the firedrake-msm environment: Firedrake, PETSc, torch and this package.
#
# Usage: scripts/install.sh            (what `make install` runs)
# Env:   FIREDRAKE_MSM_VENV  where the virtual environment lives
#                            (default $HOME/.cache/firedrake-msm/venv; outside the clone, so that
#                            every checkout and CI's fresh clone share one PETSc build)
#        FIREDRAKE_MSM_CUDA  1: PETSc built with CUDA (the toolkit of the nvcc on PATH), for its GPU
#                            types (-mat_type aijcusparse -vec_type cuda, Firedrake's OffloadPC),
#                            and a torch with CUDA; by default into its own environment,
#                            $HOME/.cache/firedrake-msm/venv-cuda, so the CPU one is left alone
#        FIREDRAKE_MSM_CUDA_ARCH  with it, PETSc's --with-cuda-arch (e.g. 90), where configure
#                            runs on a machine without the GPU to ask
#
# Debian 12 only needs its own packages and PyPI: PETSc is built from the PyPI `petsc` sdist
# against Debian's MPI, HDF5, MUMPS, ... (PETSc's --download-* cannot reach its servers here).
# Fresh: about 27 min on 2 cores, mostly PETSc and petsc4py compiling. Afterwards, while the
# stamp matches constraints.txt and this script, a run only re-points the editable install of
# firedrake_msm at the checkout that runs it (a few seconds).
#
# The stamp is written last and removed first, so a failed or interrupted build is never
# trusted: the next run resumes, and every step below skips what is already done.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CUDA=${FIREDRAKE_MSM_CUDA:-0}
if [ "$CUDA" = 1 ]; then
  VENV=$(realpath -m "${FIREDRAKE_MSM_VENV:-$HOME/.cache/firedrake-msm/venv-cuda}")
else
  VENV=$(realpath -m "${FIREDRAKE_MSM_VENV:-$HOME/.cache/firedrake-msm/venv}")
fi
CONSTRAINTS="$ROOT/constraints.txt"
STAMP="$VENV/.firedrake-msm-stamp"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

pin() { sed -n "s/^$1==//p" "$CONSTRAINTS"; }
STEP="start"
step() { STEP="$*"; printf '\n=== [%s] %s\n' "$(date +%T)" "$STEP"; }
trap 'echo "install.sh: FAILED in step: $STEP (environment: $VENV)" >&2' ERR

WANT_STAMP=$({ cat "$CONSTRAINTS" "${BASH_SOURCE[0]}"; echo "cuda=$CUDA"; } | sha256sum | cut -d' ' -f1)
if [ -x "$PY" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT_STAMP" ]; then
  # The environment is complete; only make sure it runs *this* checkout's code.
  "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
  exit 0
fi
rm -f "$STAMP"

# ------------------------------------------------------------------ Debian packages
APT_PACKAGES=(build-essential gfortran cmake pkg-config bison flex zlib1g-dev
  openmpi-bin libopenmpi-dev libopenblas-dev libhdf5-mpi-dev libmumps-ptscotch-dev
  libscalapack-openmpi-dev libptscotch-dev libmetis-dev libsuperlu-dist-dev libsuitesparse-dev
  libfftw3-dev libfftw3-mpi-dev libhwloc-dev libnetcdf-dev libpnetcdf-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# ------------------------------------------------------------------ virtual environment
step "virtual environment $VENV"
[ -x "$PY" ] || python3 -m venv "$VENV"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
export CC=mpicc CXX=mpicxx OMP_NUM_THREADS=1
PETSC_VERSION=$(pin petsc)
installed() { "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1').split('+')[0] != '$2')" 2>/dev/null; }

# ------------------------------------------------------------------ PETSc (~9 min)
# The sdist joins these options with spaces and runs them through a shell, so multi-library
# options use PETSc's [a,b,c] list syntax. Debian 12's hypre is too old for PETSc 3.26, so no
# hypre (Firedrake then uses GAMG). CUDA only when asked for: the image carries an nvcc that
# configure would otherwise find.
CUDA_OPTIONS="--with-cuda=0"
if [ "$CUDA" = 1 ]; then
  NVCC=$(command -v nvcc) || { echo "install.sh: FIREDRAKE_MSM_CUDA=1 needs nvcc on PATH" >&2; exit 1; }
  CUDA_OPTIONS="--with-cuda=1 --with-cudac=$NVCC --with-cuda-dir=$(dirname "$(dirname "$(realpath "$NVCC")")")"
  [ -z "${FIREDRAKE_MSM_CUDA_ARCH:-}" ] || CUDA_OPTIONS="$CUDA_OPTIONS --with-cuda-arch=$FIREDRAKE_MSM_CUDA_ARCH"
fi
export PETSC_CONFIGURE_OPTIONS="--with-fortran-bindings=0 --with-strict-petscerrorcode \
--COPTFLAGS=-O2 --CXXOPTFLAGS=-O2 --FOPTFLAGS=-O2 $CUDA_OPTIONS \
--with-blaslapack-lib=-lopenblas \
--with-hdf5-include=/usr/include/hdf5/openmpi \
--with-hdf5-lib=[/usr/lib/x86_64-linux-gnu/hdf5/openmpi/libhdf5.so,/usr/lib/x86_64-linux-gnu/hdf5/openmpi/libhdf5_hl.so] \
--with-mumps --with-scalapack-lib=-lscalapack-openmpi \
--with-ptscotch --with-ptscotch-include=/usr/include/scotch \
--with-ptscotch-lib=[-lptesmumps,-lptscotch,-lptscotcherr,-lesmumps,-lscotch,-lscotcherr] \
--with-metis --with-superlu_dist-include=/usr/include/superlu-dist --with-superlu_dist-lib=-lsuperlu_dist \
--with-suitesparse --with-fftw --with-hwloc --with-zlib --with-bison --with-netcdf --with-pnetcdf"
if ! installed petsc "$PETSC_VERSION"; then
  step "PETSc $PETSC_VERSION (configure + make, ~9 min)"
  # --no-cache-dir: never reuse a PETSc wheel cached from a build with other options
  "${PIP[@]}" install --no-cache-dir "petsc==$PETSC_VERSION"
fi
export PETSC_DIR="$SITE/petsc" PETSC_ARCH=""
test -f "$PETSC_DIR/lib/petsc/conf/petscvariables"
if [ "$CUDA" = 1 ] && ! grep -q "PETSC_HAVE_CUDA 1" "$PETSC_DIR/include/petscconf.h"; then
  echo "install.sh: the PETSc in $VENV has no CUDA: give FIREDRAKE_MSM_CUDA=1 an environment of its own" >&2
  exit 1
fi

# ------------------------------------------------------------------ petsc4py (~8 min)
# Into a local wheelhouse, so that Firedrake's isolated build environment takes this wheel
# instead of compiling petsc4py a second time.
WHEELHOUSE="$VENV/wheelhouse"
if ! ls "$WHEELHOUSE"/petsc4py-"$(pin petsc4py)"-*.whl >/dev/null 2>&1; then
  step "petsc4py $(pin petsc4py) (~8 min)"
  "${PIP[@]}" wheel --no-cache-dir --no-deps -w "$WHEELHOUSE" "petsc4py==$(pin petsc4py)"
fi
"${PIP[@]}" install -q --find-links "$WHEELHOUSE" "petsc4py==$(pin petsc4py)"

# ------------------------------------------------------------------ mpi4py + parallel h5py (~5 min)
# h5py against Debian's parallel HDF5 without build isolation: isolated, its backend compiles
# mpi4py 4.0.0 from source (> 16 min, > 19 GB of memory).
if ! installed h5py "$(pin h5py)"; then
  step "mpi4py + h5py $(pin h5py) (MPI)"
  "${PIP[@]}" install -q mpi4py 'Cython>=3.0' 'setuptools>=77.0.3' numpy pkgconfig packaging wheel
  HDF5_MPI=ON HDF5_DIR=/usr/lib/x86_64-linux-gnu/hdf5/openmpi H5PY_SETUP_REQUIRES=0 \
    "${PIP[@]}" install --no-cache-dir --no-binary h5py --no-build-isolation "h5py==$(pin h5py)"
fi

# ------------------------------------------------------------------ Firedrake (~4 min)
if ! installed firedrake "$(pin firedrake)"; then
  step "Firedrake $(pin firedrake)"
  "${PIP[@]}" install --find-links "$WHEELHOUSE" -c "$CONSTRAINTS" "firedrake[check]==$(pin firedrake)"
fi

# ------------------------------------------------------------------ torch, the rest, this package
# torch first and pinned, so that nothing below can pull a CUDA build in its place.
step "torch $(pin torch) (CPU), gmsh and firedrake_msm[test,docs]"
"${PIP[@]}" install -q -c "$CONSTRAINTS" "torch==$(pin torch)" "gmsh==$(pin gmsh)"
if [ "$CUDA" = 1 ] && ! "$PY" -c 'import sys, torch; sys.exit(torch.version.cuda is None)'; then
  echo "install.sh: torch $(pin torch) in $VENV is a CPU build: install its CUDA build there (from PyTorch's" \
    "wheel index for your CUDA version) and run this again" >&2
  exit 1
fi
"${PIP[@]}" install -q --find-links "$WHEELHOUSE" -c "$CONSTRAINTS" -e "$ROOT[test,docs]"

step "smoke test"
(cd /tmp && "$PY" -c "
from firedrake import *
import torch, firedrake_msm
V = FunctionSpace(UnitSquareMesh(4, 4), 'CG', 1)
print('firedrake', assemble(Constant(1.0) * dx(V.mesh())), 'torch', torch.__version__, 'firedrake_msm', firedrake_msm.__version__)
")
echo "$WANT_STAMP" > "$STAMP"
step "done: environment $VENV ($(du -sh "$VENV" | cut -f1))"
