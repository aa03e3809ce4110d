"""vlafoundry: build, train and evaluate vision-language-action (VLA) models."""

import os as _os

# OpenMP threads that spin-wait make torch 5-10x slower whenever another process competes for the cores
# (environment workers during evaluation, data generation, a second job). Passive waiting costs nothing on an
# idle machine. Only effective if set before torch loads its OpenMP runtime, hence here; a user's value wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
