"""The backbone registry: named feature extractors.

>>> list_backbones()
['classic', 'efficientnet-lite0', 'efficientnet-lite1', 'efficientnet-lite2']
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from photolabel.backbones.base import Backbone, Preprocessing
from photolabel.errors import UnknownNameError

BackboneFactory = Callable[..., Backbone]

_REGISTRY: dict[str, tuple[BackboneFactory, str]] = {}


def register_backbone(name: str, summary: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: register ``factory(threads=..., cache_dir=...)`` under ``name``."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = (factory, summary)
        return factory

    return decorate


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def describe_backbones() -> dict[str, str]:
    return {name: _REGISTRY[name][1] for name in list_backbones()}


def check_backbone_name(name: str) -> str:
    if name not in _REGISTRY:
        raise UnknownNameError(
            f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}", field="backbone"
        )
    return name


_LOADED: dict[tuple[str, int | None, str], Backbone] = {}


def get_backbone(name: str, *, threads: int | None = None, cache_dir: str | Path | None = None) -> Backbone:
    """The backbone called ``name``, built once per process and (name, threads, cache_dir).

    Raises:
        UnknownNameError: ``name`` is not registered; the message lists those that are.
    """
    check_backbone_name(name)
    from photolabel.cache import resolve_cache_dir

    root = resolve_cache_dir(cache_dir)
    key = (name, threads, str(root))
    if key not in _LOADED:
        factory = _REGISTRY[name][0]
        _LOADED[key] = factory(threads=threads, cache_dir=root)
    return _LOADED[key]


def _register_builtins() -> None:
    from photolabel.backbones import efficientnet

    for variant in efficientnet.VARIANTS:
        register_backbone(
            variant.name,
            f"EfficientNet-{variant.name.split('-')[1].capitalize()} ImageNet features "
            f"({variant.image_size}px, {variant.feature_dim}-d), ONNX Runtime",
        )(variant.factory)

    def classic_factory(threads: int | None = None, cache_dir: Path | None = None) -> Backbone:
        from photolabel.backbones.classic import ClassicBackbone

        return ClassicBackbone()

    register_backbone(
        "classic",
        "handcrafted features as in the scikit-learn Golem classifier: Hu moments, Haralick texture, HSV histogram",
    )(classic_factory)


_register_builtins()

__all__ = [
    "Backbone",
    "Preprocessing",
    "describe_backbones",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]
