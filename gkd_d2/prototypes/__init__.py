"""Prototype Generation Module (PGM), the prototype bank, relations to it (Eq. 8) and its refresh."""
from .bank import PrototypeBank
from .pgm import generate_prototypes
from .refresh import PrototypeRefresher, PrototypeRefreshHook

#: the former name of :class:`PrototypeRefresher` (gkd_d2 0.1), kept for user code
PrototypeGenerator = PrototypeRefresher
