"""The entropy probe's application of asynclog: ``DetailedLogger`` (the logging plan), its batch statistics, run
folders and sidecars, and the toy probe behind ``asynclog demo``.

It is built on the public surface (``asynclog.start``, ``Config``) and nothing of it is imported by the engine.
``DetailedLogger`` is loaded on first use, so that importing one of the modules here (``layout`` for a tool)
does not load torch.
"""

__all__ = ["DetailedLogger"]


def __getattr__(name: str):
    if name != "DetailedLogger":
        raise AttributeError(f"module 'asynclog.probe' has no attribute {name!r}")
    from asynclog.probe.logger import DetailedLogger

    globals()[name] = DetailedLogger
    return DetailedLogger


def __dir__() -> list[str]:
    return list(__all__)
