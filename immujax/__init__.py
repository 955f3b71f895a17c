"""immujax: model immunization from a condition-number perspective, in JAX.

Reference implementation of Zheng, Bai, Bullins, Yeh, "Model Immunization from a Condition
Number Perspective", ICML 2025. Enable float64 before use::

    import jax
    jax.config.update("jax_enable_x64", True)
"""

from immujax import extreme_eigs
from immujax.baselines import inverse_log_condition_number
from immujax.baselines import inverse_log_log_condition_number
from immujax.baselines import log_log_condition_number
from immujax.metrics import RIR
from immujax.metrics import RIRBound
from immujax.metrics import accuracy
from immujax.metrics import relative_immunization_ratio
from immujax.metrics import rir_from_features
from immujax.metrics import rir_from_hessians
from immujax.metrics import rir_upper_bound
from immujax.metrics import whitening_extractor
from immujax.regularizers import preconditioned_direction
from immujax.regularizers import r_ill
from immujax.regularizers import r_ill_autodiff
from immujax.regularizers import r_ill_value_and_grad
from immujax.regularizers import r_well
from immujax.regularizers import r_well_autodiff
from immujax.regularizers import r_well_value_and_grad
from immujax.regularizers import theta_gradient
from immujax.spectral import allow_float32
from immujax.spectral import condition_number
from immujax.spectral import condition_number_authors
from immujax.spectral import covariance
from immujax.spectral import extremes
from immujax.spectral import hessian
from immujax.spectral import log_condition_number
from immujax.spectral import log_condition_number_authors
from immujax.spectral import numerical_rank
from immujax.spectral import sigma_max_min

__all__ = [
    "accuracy",
    "allow_float32",
    "condition_number",
    "condition_number_authors",
    "covariance",
    "extremes",
    "hessian",
    "inverse_log_condition_number",
    "inverse_log_log_condition_number",
    "log_condition_number",
    "log_condition_number_authors",
    "log_log_condition_number",
    "numerical_rank",
    "preconditioned_direction",
    "r_ill",
    "r_ill_autodiff",
    "r_ill_value_and_grad",
    "r_well",
    "r_well_autodiff",
    "r_well_value_and_grad",
    "relative_immunization_ratio",
    "RIR",
    "rir_from_features",
    "rir_from_hessians",
    "rir_upper_bound",
    "RIRBound",
    "sigma_max_min",
    "theta_gradient",
    "whitening_extractor",
]

__version__ = "0.2.0"
