"""Models by name and checkpoint loading.

`create_model("resnet56")` builds a registered model; `create_model("pkg.mod:factory")` or
`create_model("path/to/file.py:factory")` builds your own. `load_checkpoint(model, path)` loads trained
weights strictly and returns the checkpoint's metadata (mean, std, num_classes, arch).
"""

# Imported for their @register_model side effect.
from amc.models import digits, mobilenet_imagenet, mobilenetv2, resnet_cifar, resnet_imagenet, vgg  # noqa: F401
from amc.models.checkpoint import load_checkpoint, read_checkpoint
from amc.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "load_checkpoint", "read_checkpoint", "register_model"]
