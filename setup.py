"""gkd_d2: distilling Detectron2 object detectors with global knowledge.

torch, torchvision and detectron2 are not listed as requirements on purpose: install them
first (tools/bootstrap.sh does it on CPU machines; see README for GPU machines).
"""
from setuptools import find_packages, setup

setup(
    name="gkd_d2",
    version="0.1.0",
    description="Knowledge distillation for Detectron2 detectors (Tang et al., ECCV 2022)",
    packages=find_packages(include=["gkd_d2", "gkd_d2.*"]),
    python_requires=">=3.8",
    install_requires=["numpy", "fvcore", "pycocotools", "scipy"],
)
