"""Package discovery for the folder mapping the brief asks for.

The repository keeps `models/`, `compile/` and `hw/` at the top level; they
install as `edgekit.models`, `edgekit.compile` and `edgekit.hw` so that no
top-level `models` or `compile` package is ever installed.
"""
from setuptools import find_packages, setup

ROOTS = {"edgekit": "edgekit", "edgekit.models": "models",
         "edgekit.compile": "compile", "edgekit.hw": "hw"}


def discover():
    packages = []
    for name, folder in ROOTS.items():
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(folder)]
    return packages


setup(
    packages=discover(),
    package_dir=ROOTS,
    package_data={
        "edgekit.models": ["checkpoints/*", "checkpoints/**/*", "sale/kernel.cc"],
        "edgekit.compile": ["tvm/tuning_db/**/*", "tvm/tuning_db/*"],
        "edgekit.hw": ["rtl/*", "rtl/**/*", "tb/*"],
    },
    include_package_data=True,
)
