"""Data: LIDC annotations, reading CT series, geometry, nodule patches, the patch-set format."""
