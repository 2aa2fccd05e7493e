"""slidefed: federated learning for computational pathology.

Hospitals keep their whole-slide images on site; each trains with patient-level
differential privacy and only model updates leave.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
