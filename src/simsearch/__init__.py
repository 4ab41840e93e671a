"""simsearch: image retrieval, from training to a scored submission."""
import os

# albumentations checks PyPI for updates on every import, and Gradio sends analytics;
# both must be off before either is imported anywhere in the package.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

__version__ = "0.1.0"
