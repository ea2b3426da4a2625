"""Former path of ``adamhd.optim.adamhd.functional`` (docs/architecture.md).

This name is that module, the same object: its attributes, private ones included, are shared.
"""

import sys

from adamhd.optim.adamhd import functional as _module

sys.modules[__name__] = _module
