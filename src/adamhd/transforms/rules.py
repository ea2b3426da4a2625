"""Former path of ``adamhd.transforms.grad_transforms`` (docs/architecture.md).

This name is that module, the same object: its attributes, private ones included, are shared.
"""

import sys

from adamhd.transforms import grad_transforms as _module

sys.modules[__name__] = _module
