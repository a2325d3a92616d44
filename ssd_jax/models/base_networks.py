"""The registry of base networks: what generic code (configs, the SSD module, training, weight
import, checkpoints) needs to know about each one, declared by the network's own module.

A base network is a Flax module that maps normalised images to its source feature maps, with
its settings in a frozen dataclass (the ``backbone`` of an ``SSDConfig``). Its module registers
a ``BaseNetwork`` once; nothing else names it::

    @dataclasses.dataclass(frozen=True)
    class ToySettings:
        kind: ClassVar[str] = "toy"
        width: int = 8

    base_networks.register(base_networks.BaseNetwork(
        settings=ToySettings, build=lambda settings, **options: ToyNet(settings.width, **options),
        source_sizes=lambda settings, image_size: [image_size // 4, image_size // 8]))

and a preset (``configs.register_preset``) makes it trainable by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class BaseNetwork:
    """One base network.

    settings: its frozen settings dataclass, with a ``kind: ClassVar[str]``: the name that
      config.json files and error messages use.
    build: ``(settings, *, batch_norm, dtype, gradients, name) -> flax module`` whose
      ``__call__(images, train=False)`` returns the list of source maps (NHWC), the first ones
      of the SSD; the extra layers continue from the last.
    source_sizes: ``(settings, image_size) -> [spatial size of each source map]``.
    imagenet_import: ``(state_dict) -> {"backbone": ...}``: its ImageNet weights (a published
      classifier's state dict) as the ``backbone`` subtree, for ``convert_weights.py
      --format=KIND`` and training with ``init_backbone``; None if it has none.
    block_prefixes: ``(settings, blocks) -> names``: the parameter names (prefixes, under
      ``backbone``) of its first ``blocks`` blocks: what ``frozen_blocks`` freezes. None: it
      has no blocks to freeze.
    max_frozen_blocks: how many leading blocks may be frozen.
    imagenet_frozen_blocks: how many are frozen by default (``frozen_blocks=-1``) when training
      starts from its ImageNet weights (the reference SSD freezes VGG16's first two).
    """

    settings: type
    build: Callable[..., Any]
    source_sizes: Callable[[Any, int], list[int]]
    imagenet_import: Callable[[Any], dict] | None = None
    block_prefixes: Callable[[Any, int], tuple[str, ...]] | None = None
    max_frozen_blocks: int = 0
    imagenet_frozen_blocks: int = 0

    @property
    def kind(self) -> str:
        return self.settings.kind


_REGISTRY: dict[str, BaseNetwork] = {}


def register(network: BaseNetwork) -> BaseNetwork:
    """Makes ``network`` known by its settings' ``kind``; registering a kind again replaces it
    (a module reloaded in a notebook)."""
    if not dataclasses.is_dataclass(network.settings) or not isinstance(getattr(network.settings, "kind", None), str):
        raise TypeError(f"{network.settings!r}: a base network's settings must be a frozen dataclass with a "
                        f"'kind: ClassVar[str]'")
    _REGISTRY[network.kind] = network
    return network


def unregister(kind: str) -> None:
    """Forgets the base network ``kind`` (a plug-in's teardown); configs of it no longer validate."""
    _REGISTRY.pop(kind, None)


def kinds() -> tuple[str, ...]:
    """The registered kinds, sorted."""
    return tuple(sorted(_REGISTRY))


def get(kind: str) -> BaseNetwork:
    """The base network of ``kind``; ``ValueError`` naming the known ones otherwise."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown base network {kind!r}; known: {list(kinds())}")
    return _REGISTRY[kind]


def of(settings) -> BaseNetwork:
    """The base network whose settings ``settings`` are."""
    kind = getattr(type(settings), "kind", None)
    if kind not in _REGISTRY or not isinstance(settings, _REGISTRY[kind].settings):
        raise ValueError(f"{settings!r} are not the settings of a registered base network (known: {list(kinds())})")
    return _REGISTRY[kind]


def to_dict(settings) -> dict:
    """A JSON-ready dict of base-network settings, with their ``kind``."""
    return {"kind": type(settings).kind, **dataclasses.asdict(settings)}


def from_dict(values: dict):
    """Inverse of ``to_dict``: the settings dataclass of ``values['kind']``, lists as tuples."""
    values = dict(values)
    settings = get(values.pop("kind")).settings
    if hasattr(settings, "from_dict"):  # settings with nested dataclasses convert their own
        return settings.from_dict(values)
    return settings(**{key: _tuples(value) for key, value in values.items()})


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
