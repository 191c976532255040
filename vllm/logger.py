"""The 'vllm' logger, and a helper that logs a given message only once per process."""
from __future__ import annotations

import logging
import sys

from vllm import envs

_ROOT = "vllm"
_configured = False
_once_keys: set[str] = set()


def _configure() -> None:
    global _configured
    if _configured:
        return
    logger = logging.getLogger(_ROOT)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s", "%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(str(envs.get("VLLM_LOGGING_LEVEL")).upper())
    logger.propagate = True
    _configured = True


def init_logger(name: str) -> logging.Logger:
    _configure()
    return logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")


def log_once(logger: logging.Logger, level: int, key: str, msg: str, *args) -> bool:
    """Log ``msg`` the first time ``key`` is seen in this process; return whether it logged."""
    if key in _once_keys:
        return False
    _once_keys.add(key)
    logger.log(level, msg, *args, stacklevel=2)
    return True
