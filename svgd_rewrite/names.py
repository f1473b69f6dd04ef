"""Names of what the rewrite inserts (a leaf module: the exporters and loaders read them
without importing the surgery)."""
from __future__ import annotations

SCOPE = "svgd_rewrite"


def inserted_name(site: int, role: str) -> str:
    """The name of an inserted node: ``role`` is ``accumulator``, ``r``, ``r_new``,
    ``assign_r``, ``factor``, ``g_hat_A`` (pre-scaled application A), ``scaled_T`` (post-scaled
    target T), ``initializer`` or ``zeros`` (graph variables)."""
    return f"{SCOPE}/site_{site}/{role}"


# s, ρ and ε: one float32 scalar input of the rewritten graph each, read by every site's T
HYPERPARAMETERS = ("scale", "rho", "epsilon")


def hyperparameter_name(name: str) -> str:
    """The graph input feeding ``name`` (``scale``, ``rho``, ``epsilon``) to every T."""
    return f"{SCOPE}/{name}"
