"""docs/options.md against the code: every option ``add_distill_config`` adds is documented, with
its default, and the page documents no option that does not exist."""
import os
import re

import yaml
from detectron2.config import get_cfg

from gkd_d2.config import add_distill_config

OPTIONS_MD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "options.md")
ROW = re.compile(r"^\| `([A-Z][A-Z0-9_.]+)` \| `([^`]*)` \|", re.MULTILINE)


def leaves(node, prefix=""):
    """{dotted key: value} of every leaf of a CfgNode."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def added_options():
    """{key: default} of the options add_distill_config adds to Detectron2's config."""
    cfg = get_cfg()
    add_distill_config(cfg)
    stock = leaves(get_cfg())
    return {k: v for k, v in leaves(cfg).items() if k not in stock}


def documented_options():
    """{key: default as written} of the rows of docs/options.md."""
    return dict(ROW.findall(open(OPTIONS_MD).read()))


def test_added_options_walk_the_whole_node():
    options = added_options()
    # a check of the walk itself: nested nodes, the three roots the project adds, stock keys left out
    assert {"DISTILL.PGM.NUM_PROTOTYPES", "MODEL.FCOS.NUM_CLASSES", "DATASETS.COCO_JSON"} <= set(options)
    assert "MODEL.WEIGHTS" not in options and "DISTILL.PGM" not in options
    assert all(k.startswith(("DISTILL.", "MODEL.FCOS.", "DATASETS.")) for k in options)


def test_every_option_is_documented_with_its_default():
    options, documented = added_options(), documented_options()
    missing = sorted(set(options) - set(documented))
    assert not missing, f"options of add_distill_config missing from docs/options.md: {missing}"
    wrong = {k: (documented[k], options[k]) for k in options
             if yaml.safe_load(documented[k]) != (list(options[k]) if isinstance(options[k], tuple) else options[k])}
    assert not wrong, f"docs/options.md defaults that differ from the code (documented, actual): {wrong}"


def test_no_documented_option_is_unknown():
    unknown = sorted(set(documented_options()) - set(added_options()))
    assert not unknown, f"docs/options.md documents options add_distill_config does not add: {unknown}"
