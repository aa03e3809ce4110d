"""vlafoundry: build, train and evaluate vision-language-action (VLA) models."""

__version__ = "0.1.0"
