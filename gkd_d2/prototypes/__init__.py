"""Prototype Generation Module (PGM), the prototype bank, relations to it (Eq. 8), its refresh
and the check that every process holds the same prototypes."""
from .agreement import PrototypeAgreementHook, prototype_fingerprint
from .bank import PrototypeBank
from .pgm import generate_prototypes
from .refresh import PrototypeRefresher, PrototypeRefreshHook
