"""Import-time stand-in for torch in the runtime image (see README, "Image size").

concrete-python imports torch at start-up only to register its convolution and max-pool
extensions, which this service never calls; the real torch wheel from PyPI would add 4 GB of
CUDA libraries to the image. Every attribute is a class that refuses to be used, so type checks
such as `issubclass(x, torch.Tensor)` (scipy does those) answer False and any real use fails loudly.
"""

__version__ = "0.0.0+unavailable"
_unavailable: dict[str, type] = {}


def __getattr__(name: str) -> type:
    if name.startswith("__"):
        raise AttributeError(name)
    if name not in _unavailable:

        def refuse(cls, *args, **kwargs):
            raise RuntimeError(f"torch.{name} is not installed in this image")

        _unavailable[name] = type(name, (), {"__new__": refuse})
    return _unavailable[name]
