"""Training: the config and its checks (``config``), the optimizer (``optim``), a pure update step
(``step``), devices and processes (``devices``), the input (``inputs``), signals
(``interrupts``), the loop (``loop``: ``train_and_evaluate(config, workdir)``) and what a person
sees of it (``hooks``)."""

from ssd_jax.train.config import ConfigError, config_problems, default_config, validate_config
from ssd_jax.train.devices import data_mesh, global_batch, host_copy, replicate, sync_processes
from ssd_jax.train.interrupts import TrainingInterrupted
from ssd_jax.train.loop import (
    USER_ERRORS,
    DataError,
    NonFiniteLossError,
    model_metadata,
    open_data,
    restore_train_state,
    train_and_evaluate,
)
from ssd_jax.train.optim import (
    frozen_blocks,
    frozen_mask,
    frozen_prefixes,
    learning_rate_schedule,
    make_optimizer,
    weight_decay_mask,
)
from ssd_jax.train.step import (
    TrainState,
    abstract_state,
    create_train_state,
    inference_params,
    initial_state,
    jit_train_step,
    state_is_finite,
    train_step,
    uses_batch_norm,
)

__all__ = ["USER_ERRORS", "ConfigError", "DataError", "NonFiniteLossError", "TrainState", "TrainingInterrupted",
           "abstract_state", "config_problems", "create_train_state", "data_mesh", "default_config", "frozen_blocks",
           "frozen_mask", "frozen_prefixes", "global_batch", "host_copy", "inference_params", "initial_state",
           "jit_train_step", "learning_rate_schedule", "make_optimizer", "model_metadata", "open_data", "replicate",
           "restore_train_state", "state_is_finite", "sync_processes", "train_and_evaluate", "train_step",
           "uses_batch_norm", "validate_config", "weight_decay_mask"]
