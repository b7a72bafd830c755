"""The "shapes" generator's difficulty options in the config (``DATASETS.SHAPES.*``, added by
:func:`gkd_d2.config.add_shapes_difficulty_config`): their mapping to the arguments of
:func:`gkd_d2.data.generated.shapes.generate_shapes_coco` and their checks.

The defaults are the generator's own, so the demo's data does not change; a harder variant
(more, smaller objects, more and subtler look-alikes) sets some of them, e.g.
``configs/Capacity/Base-Capacity-*.yaml``."""

__all__ = ["SHAPES_DIFFICULTY_OPTIONS", "shapes_generator_kwargs"]

#: config key under DATASETS.SHAPES -> argument of generate_shapes_coco
SHAPES_DIFFICULTY_OPTIONS = {
    "MIN_OBJECTS": "min_objects",
    "MAX_OBJECTS": "max_objects",
    "AMBIGUOUS_PROB": "ambiguous_prob",
    "MIN_SIZE": "min_size",
    "SMALL_MAX": "small_max",
    "MIN_CLEAR": "min_clear",
    "MAX_SIZE_FRAC": "max_size_frac",
    "LOOKALIKE_PROB": "lookalike_prob",
    "LOOKALIKE_DETAIL": "lookalike_detail",
}


def shapes_generator_kwargs(node):
    """``{argument: value}`` of the difficulty options that the dataset ``node`` (a
    ``DATASETS.<NAME>`` CfgNode) holds: every one for ``DATASETS.SHAPES``, none for a node
    without them (``DATASETS.SYNTHETIC``). A value out of range is a ``ValueError`` naming the
    option."""
    kw = {arg: node[key] for key, arg in SHAPES_DIFFICULTY_OPTIONS.items() if key in node}
    if not kw:
        return kw
    opt = "DATASETS.SHAPES."

    def check(ok, keys, need):
        if not ok:
            shown = ", ".join(f"{opt}{k} = {node[k]!r}" for k in keys)
            raise ValueError(f"{shown}: need {need}.")

    check(1 <= kw["min_objects"] <= kw["max_objects"], ("MIN_OBJECTS", "MAX_OBJECTS"),
          "1 <= MIN_OBJECTS <= MAX_OBJECTS")
    check(0 <= kw["ambiguous_prob"] <= 1, ("AMBIGUOUS_PROB",), "a probability in [0, 1]")
    check(0 < kw["min_size"] <= kw["small_max"] < kw["min_clear"], ("MIN_SIZE", "SMALL_MAX", "MIN_CLEAR"),
          "0 < MIN_SIZE <= SMALL_MAX < MIN_CLEAR (diameters in px)")
    check(0 < kw["max_size_frac"] <= 1, ("MAX_SIZE_FRAC",), "a fraction of the image side in (0, 1]")
    check(0 <= kw["lookalike_prob"] <= 1, ("LOOKALIKE_PROB",), "a probability in [0, 1]")
    check(0 < kw["lookalike_detail"] <= 1, ("LOOKALIKE_DETAIL",), "a scale in (0, 1]")
    return kw
