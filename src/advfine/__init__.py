"""advfine: adversarial fine-tuning of compressed neural networks (see README.md)."""
__version__ = "0.1.0"
