"""Prototype Generation Module (PGM), the prototype bank and its refresh hook."""
from .bank import PrototypeBank
from .pgm import generate_prototypes
from .refresh import PrototypeGenerator, PrototypeRefreshHook
