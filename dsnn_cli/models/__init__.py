"""Models: families of dynamic layers, the architectures they fill, and their building blocks.

    >>> model = build_model(cfg.model, data.info())   # a DynamicsNet: ImageNet or VectorNet
    >>> FAMILIES["lipschitz"].certificate             # what the family proves

A family (`families.py`) declares its vector fields (`fields.py`), the integrators it admits
(`integrators.py`), its certificate and the invariant it keeps; layers (`layers.py`) apply an
integrator to a field in sub-steps; operators (`operators.py`, `orthogonal.py`) are the
norm-constrained and orthogonal linear maps, with proven bounds from `norms.py`.
"""

from dsnn_cli.models.families import FAMILIES
from dsnn_cli.models.networks import DynamicsNet, build_model, check_model_config

__all__ = ["FAMILIES", "DynamicsNet", "build_model", "check_model_config"]
