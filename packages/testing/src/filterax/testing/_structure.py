"""The class-structure rules every filterax `eqx.Module` follows, checked by each package.

Equinox's ``strict=True`` used to enforce the abstract/final design pattern (equinox 0.13
accepts the keyword and ignores it), so the workspace checks the same rules itself:

1. a class with abstract methods or `eqx.AbstractVar` fields is named ``Abstract*`` (or
   ``_Abstract*`` when private);
2. concrete methods are final: no subclass overrides a method that a filterax base class
   defines concretely (implementing an abstract method is how a class is specialised);
3. concrete classes are final: no filterax class subclasses a class not named ``Abstract*``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import equinox as eqx

__all__ = ["class_structure_violations", "module_structure_violations"]

# Dunder methods equinox defines or calls per class (each class has its own) are exempt.
_EXEMPT = {"__init__", "__check_init__", "__post_init__"}


def _classes(package: str) -> list[type]:
    root = importlib.import_module(package)
    modules = [root]
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        modules.append(importlib.import_module(info.name))
    found = {}
    for module in modules:
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, eqx.Module) and obj.__module__.startswith(package):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return list(found.values())


def _abstract_name(cls: type) -> bool:
    return cls.__name__.lstrip("_").startswith("Abstract")


def _is_abstract(cls: type) -> bool:
    return bool(getattr(cls, "__abstractmethods__", frozenset())) or bool(
        getattr(cls, "__abstractvars__", None)
    )


def module_structure_violations(package: str) -> list[str]:
    """The rule violations among the `eqx.Module` classes defined in `package` (e.g.
    ``"filterax.filters"``); an empty list when it follows the rules."""
    return class_structure_violations(_classes(package))


def class_structure_violations(classes: list[type]) -> list[str]:
    """The rule violations among `classes` (`eqx.Module` subclasses); bases count when they
    are defined in a ``filterax`` module or are among `classes`."""
    out = []
    own = set(classes)
    for cls in classes:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if _is_abstract(cls) and not _abstract_name(cls):
            out.append(f"{name} has abstract members but is not named Abstract*")
        for base in cls.__mro__[1:]:
            if not issubclass(base, eqx.Module) or base is eqx.Module:
                continue
            if not (base.__module__.startswith("filterax") or base in own):
                continue
            if not _abstract_name(base):
                out.append(f"{name} subclasses the concrete class {base.__qualname__}")
        for attr, value in vars(cls).items():
            if attr in _EXEMPT or isinstance(value, type):
                continue
            if not (callable(value) or isinstance(value, property)):
                continue
            if attr.startswith("__") and attr != "__call__":
                continue
            for base in cls.__mro__[1:]:
                if base is eqx.Module or not issubclass(base, eqx.Module):
                    continue
                if attr in vars(base):
                    if not getattr(vars(base)[attr], "__isabstractmethod__", False):
                        out.append(
                            f"{name}.{attr} overrides the concrete {base.__qualname__}.{attr}"
                        )
                    break
    return out
