"""A stand-in for the parts of threestudio (commit 28d9d80) that antijanus's adapters use.

threestudio is not on PyPI, so CI tests the adapters against this stub: the registry
(``register`` raising on a duplicate name, ``find``), the logging helpers and
``utils.base.BaseObject`` with ``parse_structured`` behave as in threestudio. When the real
threestudio is importable, the tests use it instead (tests/conftest.py).
"""

import logging

__modules__ = {}
__version__ = "0.2.3"  # mirrors threestudio 28d9d80
STUB = True

logger = logging.getLogger("pytorch_lightning")


def register(name):
    def decorator(cls):
        if name in __modules__:
            raise ValueError(f"Module {name} already exists! Names of extensions conflict!")
        __modules__[name] = cls
        return cls

    return decorator


def find(name):
    return __modules__[name]


def debug(*args, **kwargs):
    logger.debug(*args, **kwargs)


def info(*args, **kwargs):
    logger.info(*args, **kwargs)


def warn(*args, **kwargs):
    logger.warning(*args, **kwargs)
