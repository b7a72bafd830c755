"""Finding the config file an option names (``DISTILL.TEACHER.CONFIG_FILE``): one rule,
:func:`resolve_config_file`, used when a config is loaded and when the teacher is built.

A name is, in this order: a file found from the working directory; a file relative to the
folder of the yaml that sets the option (as yacs resolves ``_BASE_``); a Detectron2 model-zoo
name (a yacs ``.yaml`` or a LazyConfig ``.py``).
"""
import os

import yaml
from detectron2 import model_zoo
from detectron2.config import CfgNode

TEACHER_CONFIG_FILE = ("DISTILL", "TEACHER", "CONFIG_FILE")


def resolve_config_file(path, relative_to=None, model_zoo_names=True, option="DISTILL.TEACHER.CONFIG_FILE"):
    """A readable config file for ``path``: ``path`` itself when it is a file (from the working
    directory; returned unchanged), else the absolute ``relative_to/path`` when that is a file,
    else (``model_zoo_names``) the installed file of the model-zoo name ``path``.

    Raises:
        ValueError: ``path`` is empty; FileNotFoundError: none of these exists. Both name ``option``.
    """
    if not path:
        raise ValueError(
            f"{option} is empty: set it to the teacher's Detectron2 yaml "
            "(a local file or a model-zoo name like 'COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml')."
        )
    if os.path.isfile(path):
        return path
    if relative_to is not None and os.path.isfile(os.path.join(relative_to, path)):
        return os.path.abspath(os.path.join(relative_to, path))
    if model_zoo_names:
        try:
            return model_zoo.get_config_file(path)
        except RuntimeError:
            pass
    raise FileNotFoundError(
        f"{option}='{path}' is neither an existing file"
        + (f" (from the working directory or {relative_to})" if relative_to is not None else "")
        + (" nor a Detectron2 model-zoo config name (a yacs .yaml or a LazyConfig .py)." if model_zoo_names else ".")
    )


def yaml_setting(config_file, keys):
    """``(value, folder of the yaml that sets it)`` of the option ``keys`` (a tuple of names)
    in ``config_file`` and its ``_BASE_`` chain, with yacs's precedence (a file overrides its
    bases, a later base an earlier one); None when no file of the chain sets it."""
    with CfgNode._open_cfg(config_file) as f:
        text = f.read()
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError:  # python tags: what merge_from_file also accepts
        data = yaml.unsafe_load(text)
    data = data if isinstance(data, dict) else {}
    found = None
    bases = data.get("_BASE_", [])
    for base in bases if isinstance(bases, list) else [bases]:
        base = os.path.expanduser(base)
        if not base.startswith(("/", "https://", "http://")):  # as CfgNode.load_yaml_with_base
            base = os.path.join(os.path.dirname(config_file), base)
        found = yaml_setting(base, keys) or found
    node = data
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return found
        node = node[key]
    return node, os.path.dirname(os.path.abspath(config_file))


def anchor_teacher_config_file(cfg, config_file):
    """Make a relative ``DISTILL.TEACHER.CONFIG_FILE`` that is not a file from the working
    directory absolute, resolved (:func:`resolve_config_file`) against the folder of the yaml of
    ``config_file``'s ``_BASE_`` chain that sets it: the config then works from any directory.
    Model-zoo names, paths found from the working directory and values given on the command
    line are left alone."""
    value = cfg.DISTILL.TEACHER.CONFIG_FILE
    if not value or os.path.isfile(value):
        return
    setting = yaml_setting(config_file, TEACHER_CONFIG_FILE)
    if setting is None or setting[0] != value:  # not set by a yaml: the user's, as given
        return
    try:
        cfg.DISTILL.TEACHER.CONFIG_FILE = resolve_config_file(value, relative_to=setting[1], model_zoo_names=False)
    except FileNotFoundError:  # a model-zoo name, or missing: building the teacher says which
        pass
