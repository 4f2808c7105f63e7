# Metadata lives in setup.cfg; this shim lets older tools install the project.
from setuptools import setup

setup()
