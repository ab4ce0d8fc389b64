"""Where images come from without LIDC downloads: the phantom and the multi-lesion images."""
