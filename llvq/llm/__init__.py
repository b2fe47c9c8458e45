"""Grouped-lattice post-training quantization of language-model weights (GLVQ)."""
