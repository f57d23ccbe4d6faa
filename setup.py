"""Packaging glue that pyproject.toml cannot express: map the top-level conf/ folder to `zoo.conf`."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["zoo", "zoo.*", "kernels", "kernels.*"]) + ["zoo.conf"],
    package_dir={"zoo.conf": "conf"},
)
