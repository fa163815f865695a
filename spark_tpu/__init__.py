"""spark_tpu: decentralized federated learning with neural tangent kernels, at accelerator speed."""

__version__ = "0.1.0"
