"""Adaptation layers: convs that map a student FPN level to the teacher's width (Eq. 7, hints)."""
from torch import nn


def adapter_kernel(value) -> int:
    """DISTILL.FEATURE.ADAPTER_KERNEL: an odd positive int, so the adapter keeps the map size."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(
            f"DISTILL.FEATURE.ADAPTER_KERNEL={value!r}: the adapter's kernel size must be an odd "
            "positive integer (3 as in the paper, or 1), so that it keeps the feature map's size."
        )
    return value


#: ``DISTILL.FEATURE.ADAPTER_INIT``: "default" keeps PyTorch's Conv2d init (what the authors'
#: release trains), "kaiming" is Kaiming normal (fan-out) with zero bias.
ADAPTER_INITS = ("default", "kaiming")


def adapter_init(value) -> str:
    """DISTILL.FEATURE.ADAPTER_INIT: one of :data:`ADAPTER_INITS`."""
    if value not in ADAPTER_INITS:
        raise ValueError(f"DISTILL.FEATURE.ADAPTER_INIT={value!r}: choose one of {list(ADAPTER_INITS)}.")
    return value


def init_adapter(conv: nn.Conv2d, init: str = "kaiming") -> None:
    """``"kaiming"``: Kaiming normal (fan-out), zero bias; ``"default"``: PyTorch's own init
    (kaiming uniform with a = sqrt(5), uniform bias), left as the constructor made it."""
    if adapter_init(init) == "kaiming":
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)


def build_adapters(spec, kernel_size: int, relu: bool, levels=None, init: str = "kaiming") -> nn.ModuleDict:
    """One conv per level name (default: every imitated level of ``spec``), student width ->
    teacher width, ``kernel_size`` x ``kernel_size`` with same padding, optionally + ReLU,
    initialised by ``init`` (:func:`init_adapter`)."""
    adapters = nn.ModuleDict()
    for name in spec.feature_levels if levels is None else levels:
        conv = nn.Conv2d(
            spec.student_shapes[name].channels,
            spec.teacher_shapes[name].channels,
            kernel_size,
            padding=kernel_size // 2,
        )
        init_adapter(conv, init)
        adapters[name] = nn.Sequential(conv, nn.ReLU()) if relu else conv
    return adapters
