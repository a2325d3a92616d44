"""Random-weight models for the tests."""

import jax

import ssd_jax


def spread_params(config, *, factor: float = 20.0, seed: int = 0) -> dict:
    """``ssd_jax.init`` with the class heads' kernels times ``factor``: the scores spread instead of
    sitting near 1/C, so that NMS and the metrics have real work to do."""
    params = ssd_jax.init(jax.random.key(seed), config)
    for i in range(config.num_sources):
        params[f"conf_{i}"]["kernel"] = params[f"conf_{i}"]["kernel"] * factor
    return params
