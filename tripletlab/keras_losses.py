"""``tripletlab.keras_losses``, as README documents it: the classes of :mod:`tripletlab.losses.keras`."""

from tripletlab.losses.keras import *  # noqa: F403
from tripletlab.losses.keras import __all__  # noqa: F401
