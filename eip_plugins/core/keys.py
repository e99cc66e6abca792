"""Names of the output fields every adapter and calculator uses (units in comments)."""

FORCES_UNCERTAINTY = "forces_uncertainty"  # (N,) sigma_i, eV/A
FORCES_EPISTEMIC_COV = "forces_epistemic_cov"  # (N, 3, 3), (eV/A)^2
FORCES_ALEATORIC_COV = "forces_aleatoric_cov"  # (N, 3, 3), (eV/A)^2
UNCERTAINTY = "uncertainty"  # (G,) mean_i sigma_i, eV/A
UNCERTAINTY_MAX = "uncertainty_max"  # (G,) max_i sigma_i, eV/A

# Raw evidential parameters, prefixed by head kind.
EIP_NU = "eip_nu"  # (N, 3)
EIP_ALPHA = "eip_alpha"  # (N, 3)
EIP_BETA = "eip_beta"  # (N, 3), (eV/A)^2
E2IP_KAPPA = "e2ip_kappa"  # (N,)
E2IP_NU_W = "e2ip_nu_w"  # (N,)
E2IP_PSI = "e2ip_psi"  # (N, 3, 3), (eV/A)^2
MVE_COV = "mve_cov"  # (N, 3, 3), (eV/A)^2

PER_ATOM_UNCERTAINTY_KEYS = (FORCES_UNCERTAINTY, FORCES_EPISTEMIC_COV, FORCES_ALEATORIC_COV)
PER_STRUCTURE_UNCERTAINTY_KEYS = (UNCERTAINTY, UNCERTAINTY_MAX)

RAW_PARAMETER_KEYS = (EIP_NU, EIP_ALPHA, EIP_BETA, E2IP_KAPPA, E2IP_NU_W, E2IP_PSI, MVE_COV)

# Distance r of an atom's invariant features to the training atoms of its element (SPEC §1c):
# a Mahalanobis distance normalised to an RMS of 1 over the training atoms, growing out of
# distribution; 0 while the model has no fitted feature statistics.
FORCES_FEATURE_DISTANCE = "forces_feature_distance"  # (N,), dimensionless
FEATURE_DISTANCE = "feature_distance"  # (G,) mean_i over the structure
FEATURE_DISTANCE_MAX = "feature_distance_max"  # (G,) max_i over the structure
PER_STRUCTURE_DISTANCE_KEYS = (FEATURE_DISTANCE, FEATURE_DISTANCE_MAX)
